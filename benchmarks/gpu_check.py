"""The one command to run first whenever a GPU is lent: everything a short GPU loan must measure.

    python -m benchmarks.gpu_check                  # all parts; needs a CUDA device
    python -m benchmarks.gpu_check --dry-run        # the plan and its time budget; runs nothing
    python -m benchmarks.gpu_check --parts static   # a CPU-safe part alone, on any machine
    python -m benchmarks.gpu_check --smoke          # tiny sizes on any device: checks the harness

Parts, in order, with their time budgets on an H100 from a warm start (machine up, Python
environment installed; the Triton and inductor caches may be cold). Whole run: under 8
minutes (480 s); each part gets a hard timeout of its budget plus a margin where it runs in a
subprocess, and a part that fails is recorded and the run goes on:

1. ``static`` (budget 150 s, CPU only, run in a background subprocess while the GPU parts
   run): ``python -m benchmarks.static --check`` into ``runs/gpu-check/static/``; its row
   count and missed budgets go into the results file.
2. ``tests`` (budget 90 s; 57 s on an H200 before the drop-in's two compile tests):
   ``pytest -m cuda`` (the CUDA-marked tests: bf16 kernels, CUDA graphs, int64 indexing,
   inductor), pass/fail counts into the results file.
3. ``recon`` (budget 150 s): Bernoulli and MSE reconstruction losses, fp32 and bf16, forward
   and forward + backward at B = 4096 x D = 49152, fastvae against eager and
   ``torch.compile`` (:func:`benchmarks.report.run`: do_bench medians, % of the copy
   bandwidth measured in the same run, speedups, launches, syncs).
4. ``loss_head`` (budget 30 s, with ``recon``'s run): sample + KL + Bernoulli recon at MNIST
   size (B = 128, L = 20, D = 784), forward and forward + backward.
5. ``latent`` (budget 40 s, with ``recon``'s run): ``sample_and_kl`` at B = 65536 x L = 128,
   fp32 and bf16, forward and forward + backward, against eager and ``torch.compile``.
6. ``mnist`` (budget 90 s): 10 epochs of the 784-400-20 MNIST VAE, the plain PyTorch loop
   against the engine ``fastvae train`` runs (:mod:`benchmarks.mnist`).
7. ``dropin`` (budget 75 s, a subprocess, after the others): :mod:`benchmarks.dropin`'s
   "check" plan: the loss heads and training steps of pytorch/examples' VAE and AntixK's
   VanillaVAE, original against fastvae's swaps, eager at the three sizes, compiled
   (``reduce-overhead``, with the fresh-noise check) and bf16 at each code's own size, and
   every variant checked against its original; its cells left when its budget is spent are
   skipped and said so. Its results go under ``dropin`` in the results file.

Writes ``benchmarks/results/<device>.json`` (the format of :mod:`benchmarks.report`, which
``python -m benchmarks.readme`` turns into the README's tables, plus ``gpu_check`` with the
parts' outcomes and times) and prints the headline. Without a CUDA device it refuses the GPU
parts with a clear message (exit status 2), unless ``--smoke``: then the same flow runs at
:mod:`benchmarks.report`'s smoke sizes on whatever device there is (1 MNIST epoch on 512
images), marked ``"smoke": true`` and written under ``runs/`` (a harness check, not results),
one size per op (:func:`smoke_sizes`) and the drop-in's smoke plan.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("static", "tests", "recon", "loss_head", "latent", "mnist", "dropin")
GPU_PARTS = ("tests", "recon", "loss_head", "latent", "mnist", "dropin")
BUDGET_S = {"static": 150, "tests": 90, "recon": 150, "loss_head": 30, "latent": 40,
            "dropin": 75, "mnist": 90}
TOTAL_BUDGET_S = 480
STATIC_OUT = ROOT / "runs" / "gpu-check" / "static"
DROPIN_OUT = ROOT / "runs" / "gpu-check" / "dropin.json"
REPORT_OPS = (("recon_bernoulli", "recon"), ("recon_mse", "recon"), ("loss_head", "loss_head"),
              ("latent", "latent"))  # benchmarks.report's ops, with the part measuring each
SIZES = {  # benchmarks.report's size keys, cut to what the check measures
    "latent": [(65536, 128)],
    "recon": [(4096, 49152)],
    "loss_head": [(128, 784)],
    "headline_recon": (4096, 49152),
}


def smoke_sizes() -> dict:
    """One size per op of :mod:`benchmarks.report`'s smoke sizes (a harness check)."""
    from benchmarks.report import SMOKE

    return {"latent": SMOKE["latent"][:1], "recon": SMOKE["recon"][:1],
            "loss_head": SMOKE["loss_head"], "headline_recon": SMOKE["recon"][0]}


def plan(parts: tuple[str, ...]) -> str:
    lines = [f"  {p:<10} budget {BUDGET_S[p]:>4} s{' (background, CPU)' if p == 'static' else ''}"
             for p in parts]
    serial = sum(BUDGET_S[p] for p in parts if p != "static")
    return "\n".join(["gpu_check plan:", *lines,
                      f"  total budget {TOTAL_BUDGET_S} s (GPU parts in series: {serial} s; "
                      "static overlaps them)"])


def _env_without_interpreter() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def start_static(out: Path) -> subprocess.Popen:
    """The static report in a background process (CPU only: it compiles, runs nothing)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "w", encoding="utf-8") as log:  # the child keeps its own handle
        return subprocess.Popen(
            [sys.executable, "-m", "benchmarks.static", "--out", str(out), "--check"],
            cwd=ROOT, env=_env_without_interpreter(), stdout=log, stderr=subprocess.STDOUT,
        )


def finish_static(proc: subprocess.Popen, out: Path, timeout: float) -> dict:
    try:
        proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"ok": False, "error": f"timed out after {timeout:.0f} s",
                "log": str(out / "log.txt")}
    report = out / "report.json"
    if not report.exists():
        return {"ok": False, "error": f"exit status {proc.returncode}", "log": str(out / "log.txt")}
    rows = json.loads(report.read_text(encoding="utf-8"))
    from benchmarks.static import missed_budgets

    missed = [m for r in rows for m in missed_budgets(r)]
    return {"ok": True, "variants": len(rows), "budgets_missed": missed, "out": str(out)}


def run_cuda_tests(timeout: float) -> dict:
    try:
        res = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"],
            cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    tail = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    counts = {k: int(n) for n, k in
              re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", tail)}
    return {"ok": res.returncode == 0, "exit_status": res.returncode, "summary": tail, **counts,
            "output_tail": res.stdout[-3000:] if res.returncode else ""}


def run_dropin(smoke: bool, budget: float, out: Path) -> dict:
    """:mod:`benchmarks.dropin` in a subprocess (its "check" plan, or its smoke plan), its own
    budget a little under ``budget`` (for the process's start and its checks), a hard
    timeout of ``budget`` + 60 s; returns the outcome and, under "result", its results."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # a file left by an earlier run must not pass for this one's
    cmd = [sys.executable, "-m", "benchmarks.dropin", "--out", str(out),
           *(["--smoke"] if smoke else ["--plan", "check", "--budget", str(budget - 15)])]
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=_env_without_interpreter(), capture_output=True,
                             text=True, timeout=budget + 60)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {budget + 60:.0f} s"}
    outcome = {"ok": res.returncode == 0, "exit_status": res.returncode,
               "output_tail": (res.stdout[-2000:] + res.stderr[-2000:]) if res.returncode else ""}
    if out.exists():
        outcome["result"] = json.loads(out.read_text(encoding="utf-8"))
    return outcome


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes on any device (a harness check)")
    p.add_argument("--out", default=None,
                   help="results JSON (default benchmarks/results/<device>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    parts = tuple(x for x in PARTS if x in args.parts)
    print(plan(parts))
    if args.dry_run:
        return 0
    gpu = [x for x in parts if x in GPU_PARTS]
    if gpu and not torch.cuda.is_available() and not args.smoke:
        print(f"no CUDA device: the parts {', '.join(gpu)} need one (torch.cuda.is_available() is "
              "False). On a CPU run only the static part: python -m benchmarks.gpu_check "
              "--parts static", file=sys.stderr)
        return 2
    start = time.perf_counter()
    outcome: dict[str, dict] = {}
    static_proc = start_static(STATIC_OUT) if "static" in parts else None
    if "tests" in parts:
        t0 = time.perf_counter()
        outcome["tests"] = run_cuda_tests(BUDGET_S["tests"] + 60)
        outcome["tests"]["seconds"] = time.perf_counter() - t0
        print(f"cuda tests: {outcome['tests'].get('summary') or outcome['tests'].get('error')}")
    result = None
    ops = [o for o, part in REPORT_OPS if part in parts]
    if ops or "mnist" in parts or "dropin" in parts:  # dropin alone: the report's header
        from benchmarks import report

        t0 = time.perf_counter()
        result = report.run(smoke=args.smoke, ops=ops, dtypes=("fp32", "bf16"),
                            sizes=smoke_sizes() if args.smoke else SIZES,
                            mnist_epochs=(1 if args.smoke else 10) if "mnist" in parts else 0)
        outcome["benchmarks"] = {"ok": True, "seconds": time.perf_counter() - t0}
    if "dropin" in parts:
        t0 = time.perf_counter()
        dropin = run_dropin(args.smoke, BUDGET_S["dropin"], DROPIN_OUT)
        result["dropin"] = dropin.pop("result", None)
        outcome["dropin"] = {**dropin, "seconds": time.perf_counter() - t0}
        print(f"dropin: {'ok' if dropin['ok'] else dropin.get('error') or 'failed'} "
              f"({outcome['dropin']['seconds']:.0f} s)")
    if static_proc is not None:
        t0 = time.perf_counter()
        outcome["static"] = finish_static(static_proc, STATIC_OUT,
                                          BUDGET_S["static"] + 60 - (t0 - start))
        print(f"static report: {outcome['static'].get('variants', 0)} variants, "
              f"{len(outcome['static'].get('budgets_missed', []))} budgets missed "
              f"({outcome['static'].get('error', 'ok')})")
    seconds = time.perf_counter() - start
    if result is not None:
        from benchmarks import report

        result["gpu_check"] = {"parts": list(parts), "seconds": seconds, "outcome": outcome}
        out = Path(args.out) if args.out else report.default_out(result)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
        print(json.dumps(result["headline"], indent=2))
    print(f"gpu_check done in {seconds:.0f} s (budget {TOTAL_BUDGET_S} s)")
    return 0 if all(o.get("ok") for o in outcome.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
