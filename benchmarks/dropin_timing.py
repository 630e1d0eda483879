"""Timing of :mod:`benchmarks.dropin`'s cells: on CUDA with ``do_bench`` medians, on a CPU the
stubbed host time; the run behind ``python -m benchmarks.dropin`` and ``gpu_check``'s
``dropin`` part.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

from benchmarks import measure
from benchmarks.dropin import (
    CODES,
    CPU_NOTE,
    DROPIN_RESULTS,
    MAIN_VARIANTS,
    ROOT,
    SIZES,
    SMOKE_SIZES,
    Size,
    head_step,
    train_step,
    twin_size,
)
from benchmarks.report import device_name, slug

# ------------------------------------------------------------------ what to time


@dataclass(frozen=True)
class Cell:
    """One timed callable: ``what`` "head" or "step", ``mode`` "eager", "compile" (heads:
    default ``torch.compile``; steps: ``mode="reduce-overhead"``, or the smoke run's compile
    options) or "bf16" (steps under bf16 autocast)."""

    code: str
    size: Size
    what: str
    variant: str
    mode: str = "eager"


# The size each code was written for: where the "check" plan compiles.
OWN_SIZE = {"pytorch_examples": SIZES[0], "antixk": SIZES[1]}


def plan(kind: str = "full") -> list[Cell]:
    """The cells of a run, cheapest kinds first (a time budget cuts the compiled cells):

    - "full": every variant's head and eager step at every size; then at every size the
      main variants' steps under bf16 autocast, the original's head compiled, the main
      variants' steps compiled;
    - "check" (gpu_check's budget): the same eager cells; the bf16 and compiled cells at each
      code's own size only (pytorch/examples B=128 x 1x28x28, AntixK B=64 x 3x64x64), the
      compiled steps of the original and elbo_loss;
    - "smoke": "check"'s kinds of cell at the smoke size, compiled cells for
      pytorch/examples only (each compile costs seconds on a CPU).
    """
    sizes = SMOKE_SIZES if kind == "smoke" else SIZES
    eager, extra = [], []
    for size in sizes:
        for code, mod in CODES.items():
            eager += [Cell(code, size, what, v) for what in ("head", "step") for v in mod.VARIANTS]
            if kind == "check" and size != OWN_SIZE[code]:
                continue
            extra += [Cell(code, size, "step", v, "bf16") for v in MAIN_VARIANTS]
            if kind == "smoke" and code != "pytorch_examples":
                continue
            compiled = MAIN_VARIANTS if kind == "full" else ("original", "elbo_loss")
            extra += [Cell(code, size, "head", "original", "compile")]
            extra += [Cell(code, size, "step", v, "compile") for v in compiled]
    return eager + extra


def _callable(cell: Cell, device, compile_options: dict | None):
    if cell.what == "head":
        opts = (compile_options or {}) if cell.mode == "compile" else None
        return head_step(cell.code, cell.variant, cell.size, device, compile_options=opts)
    return train_step(cell.code, cell.variant, cell.size, device, mode=cell.mode,
                      compile_options=compile_options)


def measure_cell(cell: Cell, device: torch.device, *, quick=False,
                 compile_options: dict | None = None) -> dict:
    """Time one cell (:func:`benchmarks.measure.bench`: do_bench medians on CUDA) and count
    its GPU activities (CUDA); a compiled step first gets the fresh-noise check on its own
    compiled forward + loss (:func:`benchmarks.dropin_checks.replays_differ`)."""
    from benchmarks import dropin_checks

    size = cell.size
    row = {**_label(cell), "B": size.batch, "image": [size.channels, size.side, size.side],
           "L": size.latent}
    if cell.mode == "compile":
        torch._dynamo.reset()  # a fresh cache per compiled cell: no recompile limit
        row["compile_options"] = compile_options or (
            {"mode": "reduce-overhead"} if cell.what == "step" else {})
    fn = _callable(cell, device, compile_options)
    if cell.mode == "compile" and cell.what == "step":
        graphs = row["compile_options"].get("mode") == "reduce-overhead" and device.type == "cuda"
        row["fresh_noise"] = dropin_checks.replays_differ(fn.loss_of, fn.model, fn.batch,
                                                          cudagraphs=graphs)
    fn()  # compile, autotune, cuDNN's choice: outside the measurement
    row["time_ms"] = measure.bench(fn, device, quick=quick)
    row["launches"] = measure.profiled_launches(fn, device)
    return row


def add_speedups(rows: list[dict]) -> None:
    """``speedup_vs_original`` (the original in the same mode) and
    ``speedup_vs_compiled_original`` (the original's compiled head or step), in place."""
    times = {(r["code"], r["size"], r["what"], r["variant"], r["mode"]): r.get("time_ms")
             for r in rows}
    for r in rows:
        key = (r["code"], r["size"], r["what"], "original")
        for name, mode in (("speedup_vs_original", r["mode"]),
                           ("speedup_vs_compiled_original", "compile")):
            base = times.get((*key, mode))
            r[name] = base / r["time_ms"] if base and r.get("time_ms") else None


def time_cells(cells: list[Cell], device: torch.device, *, quick=False, deadline=None,
               compile_options=None, log=print) -> list[dict]:
    """:func:`measure_cell` for each cell; a cell that fails gets a row with its error, and
    cells after ``deadline`` (a ``time.perf_counter`` value) are skipped, said so."""
    rows = []
    for cell in cells:
        if deadline is not None and time.perf_counter() > deadline:
            rows.append({**_label(cell), "error": "skipped: the run's time budget was spent"})
            continue
        try:
            row = measure_cell(cell, device, quick=quick, compile_options=compile_options)
            row["error"] = None
        except Exception as exc:  # one failing cell (bf16 BCE on CUDA) must not lose the run
            row = {**_label(cell), "error": f"{type(exc).__name__}: {exc}"[:500]}
        rows.append(row)
        log(format_row(row))
    add_speedups(rows)
    return rows


def _label(cell: Cell) -> dict:
    return {"code": cell.code, "size": cell.size.name, "what": cell.what,
            "variant": cell.variant, "mode": cell.mode}


def format_row(r: dict) -> str:
    head = f"{r['code']:<16} {r['size']:<24} {r['what']:<4} {r['mode']:<7} {r['variant']:<15}"
    if r.get("error"):
        return f"{head} {r['error']}"
    if "host_us" in r:
        return (f"{head} {r['host_us']:9.1f} us ESTIMATED H200 host  launches {r['launches']}"
                f" + torch ops {r['torch_ops']}")
    noise = r.get("fresh_noise")
    fresh = "" if noise is None else f"  fresh noise {noise['fresh']}"
    launches = "-" if r["launches"] is None else r["launches"]
    return f"{head} {r['time_ms']:9.4f} ms  launches {launches}{fresh}"


# ------------------------------------------------------------------ the CPU's host estimate


def host_times(sizes=SIZES, rounds: int = 200, log=print) -> list[dict]:
    """ESTIMATED H200 host time of every head and eager step (:func:`benchmarks.host.measure`:
    fastvae's calls on the Triton path through Triton's whole launch path and a fake CUDA
    driver, the eager code's CPU ops run, what a CPU tensor cannot show charged per event at
    prices fitted on H200 figures in the same run), at each size's twin (sizes with one twin
    are estimated once): microseconds, the ratio to the original, and the events counted
    (Triton launches, torch ops launching a kernel). Needs a process without
    ``TRITON_INTERPRET=1`` and a C compiler (the fake driver)."""
    from benchmarks import host

    rows = []
    for code, mod in CODES.items():
        twins: dict[Size, list[str]] = {}
        for size in sizes:
            twins.setdefault(twin_size(size, code), []).append(size.name)
        for at, names in twins.items():
            steps = {f"{what}/{v}": make(code, v, at, "cpu", backend="triton", twin=True)
                     for what, make in (("head", head_step), ("step", train_step))
                     for v in mod.VARIANTS}
            _, estimates = host.measure(steps, rounds, batch_us=300.0)
            for name in steps:
                what, variant = name.split("/")
                est, original = estimates[name], estimates[f"{what}/original"]
                rows.append({"code": code, "size": at.name, "twin_of": names, "what": what,
                             "variant": variant, "mode": "eager", "host_us": est.h200_us,
                             "host_ratio_vs_original": est.h200_us / original.h200_us,
                             "launches": est.events.launches, "torch_ops": est.events.torch_ops,
                             "timing": CPU_NOTE, "error": None})
                log(format_row(rows[-1]))
    return rows


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's machine name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def interpreter_checks(timeout: float = 600) -> list[dict]:
    """:func:`benchmarks.dropin_checks.run_checks` on the Triton kernels, in a child process
    with ``TRITON_INTERPRET=1`` (this one may have imported Triton without it)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-m", "benchmarks.dropin", "--checks", "triton"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    try:
        return json.loads(res.stdout)  # the rows, failed checks included (exit status 1)
    except json.JSONDecodeError:
        return [{"backend": "triton", "ok": False, "error": res.stderr[-2000:]}]


def run(*, smoke=False, kind="full", device=None, budget_s=None, reps=200, log=print) -> dict:
    """One run (see :mod:`benchmarks.dropin`): on CUDA (or with ``smoke``, on any device) the
    cells of :func:`plan` timed, the cells left when ``budget_s`` seconds have passed
    skipped; on a CPU the estimated H200 host times. Then the checks of every variant against its
    original (CUDA: the kernels; CPU: the PyTorch path, and the Triton interpreter unless a
    smoke run). Returns the results dict."""
    from benchmarks import dropin_checks

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    start = time.perf_counter()
    gpu = dev.type == "cuda"
    result = {
        "what": "benchmarks.dropin: loss heads and training steps of pytorch/examples vae/main.py "
                "and AntixK VanillaVAE, original against fastvae's documented swaps",
        "device": device_name(dev) if gpu else cpu_name(), "device_type": dev.type,
        "torch": torch.__version__, "triton": triton.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "smoke": smoke, "plan": "smoke" if smoke else kind if gpu else "host", "budget_s": budget_s,
        "gpu_timing": gpu and not smoke,
        "timer": "triton.testing.do_bench median" if gpu or smoke
                 else "benchmarks.host estimate (H200 host time)",
    }
    if not gpu and not smoke:
        result["timing_note"] = CPU_NOTE
        result["rows"] = host_times(SIZES, reps, log=log)
    else:
        copts = {"backend": "aot_eager"} if smoke and not gpu else None
        deadline = start + budget_s if budget_s else None
        result["rows"] = time_cells(plan("smoke" if smoke else kind), dev, quick=smoke,
                                    deadline=deadline, compile_options=copts, log=log)
    checks = dropin_checks.run_checks(dev, "triton" if gpu else "torch",
                                      sizes=SMOKE_SIZES if smoke else None)
    if not gpu and not smoke:
        checks += interpreter_checks()
    result["checks"] = checks
    result["checks_ok"] = all(c.get("ok") for c in checks)
    result["seconds"] = time.perf_counter() - start
    return result


def default_out(result: dict) -> Path:
    name = slug(result["device"]) + ("" if result["device_type"] == "cuda" else "-cpu")
    return (Path("runs/dropin-smoke") if result["smoke"] else DROPIN_RESULTS) / f"{name}.json"


def table(result: dict) -> str:
    """The results as a markdown table: per code, size, kind (head / step) and mode, each
    variant's time (CUDA: ms; CPU: stubbed host us) and its speedup against the original."""
    unit = "host_us" if result["rows"] and "host_us" in result["rows"][0] else "time_ms"
    variants = list(dict.fromkeys(r["variant"] for r in result["rows"]))
    lines = [f"| code | size | what | mode | {' | '.join(variants)} |",
             "| --- | --- | --- | --- |" + " ---: |" * len(variants)]
    groups: dict[tuple, dict] = {}
    for r in result["rows"]:
        groups.setdefault((r["code"], r["size"], r["what"], r["mode"]), {})[r["variant"]] = r
    for key, by in groups.items():
        cells = [_table_cell(by.get(v), unit) for v in variants]
        lines.append(f"| {' | '.join(key)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _table_cell(r: dict | None, unit: str) -> str:
    if r is None:
        return ""
    if r.get("error"):
        return "skipped" if r["error"].startswith("skipped") else "error"
    if "host_ratio_vs_original" in r:
        ratio = 1 / r["host_ratio_vs_original"]
    else:
        ratio = r.get("speedup_vs_original")
    return f"{r[unit]:.3g}" + (f" ({ratio:.2f}x)" if ratio and r["variant"] != "original" else "")
