"""Estimated H200 host time of fastvae's public entry points against the eager code they
replace, from the whole launch path timed on this CPU and charges fitted on H200 figures.

    python -m benchmarks.host                      # the tables (ESTIMATES), about 25 s
    python -m benchmarks.host --out benchmarks/results/host-estimate/host.json
    python -m benchmarks.host --code 56c978a --check \
        --out benchmarks/results/host-estimate/code-56c978a.json   # the model's check

At the sizes VAEs run (B = 128 x 784) the GPU waits for the host, so host time per call is
what a user sees. Timed here, on CPU tensors, with ``time.perf_counter``: every step in each
round (the order rotated), a batch of calls of about 300 us after two untimed ones; per step
the lower quartile over rounds (and the median, reported):

- fastvae's calls as on CUDA (``$FASTVAE_BACKEND=triton``), each launch through Triton's
  real launch path up to the driver call (``JITFunction.run``: binding, specialization,
  cache key; the sm_90 ``CompiledKernel``; ``launch_metadata``; the ``CudaLauncher`` and C
  launcher) with a fake CUDA driver (:mod:`benchmarks.fake_cuda`): a cheaper launch path
  shows here as a shorter time, nothing per launch is assumed;
- the eager code, whose CPU ops run for real: tensors are small (:data:`TIMED_SHAPE`) so that
  the CPU kernels cost next to nothing (host code does not depend on B x D, kernels do).

What a CPU tensor cannot show is charged per event, counted with the profiler, a
``TorchFunctionMode`` and the fake driver's launch counter (:mod:`benchmarks.host_count`), at
prices fitted together with the two hosts' speed ratio on H200 primitives and eager figures
only (:mod:`benchmarks.host_model`). fastvae's H200 figures are held out, and they are
figures of fastvae as it was at commit 56c978a: ``--code 56c978a`` runs the same estimate on
that code (:func:`benchmarks.at_revision.run_module`)
and prints them against the model; ``--check`` then fails if one misses by more than 15%.
Validation (``benchmarks/results/host-estimate/code-56c978a.json``, and runs like it on this
shared 2-core machine): the forward figures (recon with and without grad, sample_and_kl, and
sample_and_kl against the eager sample + KL) within about 5-10%; recon forward + backward
13-22% low, because its backward runs Python (``autograd.Function.backward`` and a Triton
launch) on CUDA's autograd device thread, at a cost no calibration figure holds; the loss
heads timed with ``do_bench`` (fused / eager 1.25x) about 30% low: the two H200 runs of those
calls disagree with each other (1.25x, 0.67x) and with the same calls timed one by one, so
no per-call model reproduces both. ``--check`` therefore exits 1 today. Without ``--code``,
the working tree's fastvae is estimated and nothing is checked.

:func:`estimate` times any steps (callables of CPU tensors) this way, calibrated in the same
run, for other benchmarks (the drop-in heads of third-party VAEs).

Assumptions: the H200 host runs the same Python and torch code at one speed ratio to this
CPU (its torch 2.11 and Triton 3.6 against 2.14 and 3.8 here: version differences land in
the fitted numbers); each CUDA allocation, CUDA op, backward pass and Triton launch costs the
same there whatever it does (a launch's pointer arguments, each a driver query, included).

This module and its helpers patch Triton (the active driver), fastvae's ``check_launchable``
(:func:`benchmarks.launches.launchable_on_cpu`) and its Philox key function (to read the key
from a generator's offset on the host, as on CUDA, not draw it with ``torch.randint`` as on
CPU tensors) for the benchmark only; run it in a process of its own, without
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
import triton

from benchmarks import at_revision, fake_cuda, host_cases, host_count, host_model, launches
from benchmarks.host_count import Events
from benchmarks.host_model import Model

MNIST_SHAPE = (128, 784, 20)  # B, D, L the estimates are for
TIMED_SHAPE = (8, 16, 20)  # B, D, L timed here: CPU kernels of next to no work
Step = Callable[[], object]


@contextlib.contextmanager
def _cuda_philox_key() -> Iterator[None]:
    """fastvae's host key function (``_host_key``, in ``fastvae.ops.latent``, or in
    ``fastvae._ops`` in the code the H200 measured) answering as on CUDA outside graph
    capture: a generator's offset read and advanced on the host, where on CPU tensors
    fastvae would draw the key with ``torch.randint`` (an op and an allocation). Left out:
    its two checks that the call is not being compiled or captured (about a microsecond)."""
    import importlib

    offset = [0]

    def host_key(generator, t, n_samples):
        first = offset[0]
        offset[0] = first + 4 * n_samples
        return 1234, first // 4

    for name in ("fastvae.ops.latent", "fastvae._ops"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        real, module._host_key = module._host_key, host_key
        try:
            yield
        finally:
            module._host_key = real
        return
    yield


@contextlib.contextmanager
def measuring() -> Iterator[fake_cuda.FakeDriver]:
    """The fake CUDA driver active, fastvae's launchers taking CPU tensors, its calls taking
    the Triton path (``$FASTVAE_BACKEND=triton``), torch's CPU ops on one thread (a CUDA op
    keeps no CPU thread busy; a thread pool on a shared machine waits for cores) and
    denormals flushed to zero (outputs of launches that never ran hold whatever the
    allocator left, and a CUDA op's host time does not depend on values); all restored."""
    previous, threads = os.environ.get("FASTVAE_BACKEND"), torch.get_num_threads()
    os.environ["FASTVAE_BACKEND"] = "triton"
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        with fake_cuda.active() as driver, launches.launchable_on_cpu(), _cuda_philox_key():
            yield driver
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
        if previous is None:
            del os.environ["FASTVAE_BACKEND"]
        else:
            os.environ["FASTVAE_BACKEND"] = previous


@dataclass(frozen=True)
class Timing:
    """Microseconds per call over the timed batches: the lower quartile (the estimate's input:
    on a shared machine the batches that other jobs slowed down lie above it) and the
    median."""

    q25_us: float
    median_us: float


def _calls_per_batch(step: Step, batch_us: float) -> int:
    """How many calls of ``step`` last about ``batch_us`` (at least 1), from a timed call."""
    t0 = time.perf_counter()
    step()
    return max(1, round(batch_us / max((time.perf_counter() - t0) * 1e6, 0.1)))


def time_interleaved(steps: Mapping[str, Step], rounds: int, batch_us: float = 300.0,
                     warm: int = 2) -> dict[str, Timing]:
    """Every round times a batch of calls of each step in turn, starting one step later than
    the round before. A batch lasts about ``batch_us`` whatever the step (so that another
    job's time slice hits every step's batches alike) and follows ``warm`` untimed calls
    (its code and data back in the caches, as in a loop that calls it again and again)."""
    names = list(steps)
    for name in names:  # first calls: sm_90 compiles, caches, lazy initialization
        for _ in range(3):
            steps[name]()
    calls = {n: _calls_per_batch(steps[n], batch_us) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            step, n = steps[name], calls[name]
            for _ in range(warm):
                step()
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            times[name].append((time.perf_counter() - t0) * 1e6 / n)
    return {n: Timing(float(np.percentile(v, 25)), float(np.median(v))) for n, v in times.items()}


@dataclass(frozen=True)
class Estimate:
    """One step: its timing here, its events, and the estimated H200 host microseconds."""

    timing: Timing
    events: Events
    h200_us: float

    def as_dict(self) -> dict:
        return {"cpu_us_q25": self.timing.q25_us, "cpu_us_median": self.timing.median_us,
                "h200_us_estimate": self.h200_us, **self.events.as_dict()}


def measure(steps: Mapping[str, Step], rounds: int,
            batch_us: float) -> tuple[Model, dict[str, Estimate]]:
    """Time and count ``steps`` interleaved with the calibration steps (their names are
    reserved), fit the model on the calibration figures, and estimate every step."""
    every = {**host_cases.h200_steps(host_cases.Inputs.make(*TIMED_SHAPE)), **steps}
    with measuring() as driver:
        timing = time_interleaved(every, rounds, batch_us)
        events = {name: host_count.count(step, driver) for name, step in every.items()}
    cpu = {n: t.q25_us for n, t in timing.items()}
    model = host_model.fit(cpu, events, host_model.h200_figures())
    return model, {n: Estimate(timing[n], events[n], model.predict(cpu[n], events[n]))
                   for n in every}


def estimate(steps: Mapping[str, Step], *, rounds: int = 300,
             batch_us: float = 300.0) -> dict[str, float]:
    """Estimated H200 host microseconds per call of each step, a callable of CPU tensors
    (fastvae's calls in it take the Triton path; keep the tensors small, the eager CPU ops
    run for real), calibrated in the same run. Run without ``TRITON_INTERPRET=1``, in a
    process of its own. Raises :class:`benchmarks.fake_cuda.FakeDriverUnavailable` without
    a C compiler."""
    _, estimates = measure(steps, rounds, batch_us)
    return {name: estimates[name].h200_us for name in steps}


# ------------------------------------------------------------------ tables


def cpu_name() -> str:
    """This machine's CPU model and core count, e.g. "AMD EPYC, 2 cores"."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def check_rows(checks, estimates: Mapping[str, Estimate],
               figures: Mapping[str, float]) -> list[dict]:
    """One row per :class:`benchmarks.host_model.Check`: predicted, measured, relative error,
    within the tolerance or not."""
    offset = host_model.do_bench_offset_us()
    rows = []
    for check in checks:
        shift = offset if check.do_bench else 0.0
        pred = [estimates[n].h200_us - shift for n in check.steps]
        meas = [figures[n] for n in check.figure_names]
        p, m = (pred[0], meas[0]) if len(pred) == 1 else (pred[0] / pred[1], meas[0] / meas[1])
        rows.append({"figure": check.label, "predicted": p, "measured": m, "error": p / m - 1,
                     "passed": abs(p / m - 1) <= host_model.TOLERANCE})
    return rows


def fit_rows(estimates: Mapping[str, Estimate], figures: Mapping[str, float]) -> list[dict]:
    """The calibration figures: time here, events, the model's value and the H200 figure."""
    return [{"figure": n, "cpu_us": estimates[n].timing.q25_us, "predicted": estimates[n].h200_us,
             "measured": figures[n], "error": estimates[n].h200_us / figures[n] - 1,
             **estimates[n].events.as_dict()} for n in host_model.FIT]


def entry_point_rows(estimates: Mapping[str, Estimate]) -> list[dict]:
    """One row per (entry point, mode): the three estimates (fastvae, eager and the floor of an
    op written as a Python autograd.Function, :class:`benchmarks.host_cases.Floor`), fastvae
    / eager and floor / eager."""
    rows = []
    for name in host_cases.ENTRY_POINTS:
        for mode in ("fwd", "fwd+bwd"):
            fast, eager, floor = (estimates[f"{name}/{mode}/{impl}"]
                                  for impl in ("fastvae", "eager", "floor"))
            rows.append({"entry_point": name, "mode": mode, "fastvae_us": fast.h200_us,
                         "eager_us": eager.h200_us, "ratio": fast.h200_us / eager.h200_us,
                         "floor_us": floor.h200_us, "floor_ratio": floor.h200_us / eager.h200_us,
                         "fastvae_events": fast.events.as_dict(),
                         "eager_events": eager.events.as_dict()})
    return rows


def run(rounds: int, batch_us: float, code: str) -> dict:
    """The whole report: the model, its fit, one row per entry point, and the held-out checks
    when the code is the code the H200 measured (``code``: the revision, or "working tree")."""
    steps = host_cases.entry_point_steps(host_cases.Inputs.make(*TIMED_SHAPE))
    model, estimates = measure({"/".join(k): v for k, v in steps.items()}, rounds, batch_us)
    figures = host_model.h200_figures()
    measured = code == host_model.MEASURED_CODE
    return {
        "what": "ESTIMATES of H200 host microseconds per call (no GPU ran): "
                "python -m benchmarks.host",
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "code": code,
        "shape_estimated": dict(zip("BDL", MNIST_SHAPE)),
        "shape_timed": dict(zip("BDL", TIMED_SHAPE)),
        "rounds": rounds,
        "batch_us": batch_us,
        "model": model.as_dict(),
        "do_bench_offset_us": host_model.do_bench_offset_us(),
        "tolerance": host_model.TOLERANCE,
        "fit": fit_rows(estimates, figures),
        "validation": check_rows(host_model.VALIDATE, estimates, figures) if measured else [],
        "shown": check_rows(host_model.SHOWN, estimates, figures) if measured else [],
        "entry_points": entry_point_rows(estimates),
        "steps": {n: e.as_dict() for n, e in estimates.items()},
    }


# ------------------------------------------------------------------ the command


def _table(title: str, header: str, lines: list[str]) -> str:
    return "\n".join([title, header, *lines, ""])


def report(result: dict) -> str:
    """The printed tables of a :func:`run` result."""
    m = result["model"]
    charges = ", ".join(f"{k} {v:.2f} us" for k, v in m["charges_us"].items())
    fit = [f"{r['figure']:<28}{r['cpu_us']:9.1f}{r['predicted']:10.1f}{r['measured']:10.1f}"
           f"{r['error']:+9.1%}   a{r['allocations']} o{r['torch_ops']} b{r['backwards']} "
           f"l{r['launches']}" for r in result["fit"]]

    def checks(rows, verdict=True):
        return [f"{r['figure']:<46}{r['predicted']:10.2f}{r['measured']:10.2f}{r['error']:+9.1%}"
                + (f"  {'ok' if r['passed'] else 'MISS'}" if verdict else "") for r in rows]

    entries = [f"{r['entry_point']:<21}{r['mode']:<9}{r['fastvae_us']:10.1f}{r['eager_us']:10.1f}"
               f"{r['ratio']:8.2f}{r['floor_us']:10.1f}{r['floor_ratio']:8.2f}"
               for r in result["entry_points"]]
    validation = [f"\nvalidation: run with --code {host_model.MEASURED_CODE}, the code the H200 "
                  "figures are of\n"]
    if result["validation"]:
        validation = [
            _table(f"validation, held out (within {result['tolerance']:.0%} to pass)",
                   f"{'figure':<46}{'predicted':>10}{'measured':>10}{'error':>9}",
                   checks(result["validation"])),
            _table("shown, not passed or failed (do_bench figures of the loss heads)",
                   f"{'figure':<46}{'predicted':>10}{'measured':>10}{'error':>9}",
                   checks(result["shown"], verdict=False))]
    return "\n".join([
        f"code: {result['code']}",
        f"model: H200 host = {m['scale']:.2f} x this CPU + charges per event ({charges})",
        _table("\nfit (H200 primitives and eager figures)",
               f"{'figure':<28}{'cpu us':>9}{'model':>10}{'H200':>10}{'error':>9}   events",
               fit),
        *validation,
        _table(f"ESTIMATE: H200 host us per call, B={MNIST_SHAPE[0]}, D={MNIST_SHAPE[1]}, "
               f"L={MNIST_SHAPE[2]}, fp32, reduction 'sum'",
               f"{'entry point':<21}{'mode':<9}{'fastvae':>10}{'eager':>10}{'ratio':>8}"
               f"{'floor':>10}{'ratio':>8}", entries),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.host",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=300, help="rounds over every step (default 300)")
    p.add_argument("--batch-us", type=float, default=300.0,
                   help="length of a timed batch of calls, microseconds (default 300)")
    p.add_argument("--out", type=Path,
                   help="write the result as JSON here (the committed one: benchmarks/results/"
                   "host-estimate/host.json)")
    p.add_argument("--check", action="store_true",
                   help="with --code: exit 1 if a held-out H200 figure misses by more than "
                   f"{100 * host_model.TOLERANCE:.0f}%%")
    p.add_argument("--code", metavar="REV",
                   help="estimate fastvae as it was at git revision REV instead of the working "
                   f"tree; {host_model.MEASURED_CODE}, the code the H200 figures are of, adds "
                   "the held-out checks of the model")
    p.add_argument("--code-label", help=argparse.SUPPRESS)  # set by --code's child process
    args = p.parse_args(argv)
    if args.code:
        rest = ["--rounds", str(args.rounds), "--batch-us", str(args.batch_us)]
        rest += ["--check"] * args.check + (["--out", str(args.out.resolve())] if args.out else [])
        return at_revision.run_module(args.code, "benchmarks.host",
                                      [*rest, "--code-label", args.code])
    try:
        result = run(args.rounds, args.batch_us, args.code_label or "working tree")
    except fake_cuda.FakeDriverUnavailable as e:
        print(f"python -m benchmarks.host needs the fake CUDA driver: {e}", file=sys.stderr)
        return 2
    print(report(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    missed = [r["figure"] for r in result["validation"] if not r["passed"]]
    if args.check and missed:
        print(f"missed by more than {host_model.TOLERANCE:.0%}: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
