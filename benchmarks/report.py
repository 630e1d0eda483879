"""Run the benchmarks and write ``benchmarks/results/<device>.json``.

    python -m benchmarks.report                 # everything (needs a CUDA GPU for real numbers)
    python -m benchmarks.report --smoke         # tiny sizes, any device, a minute on a CPU
    fastvae bench [same flags]

Per op, size, dtype and mode (forward, forward + backward) and per implementation (fastvae,
PyTorch eager, torch.compile of the eager loss; see :mod:`benchmarks.losses`), a row with:
median time (ms), achieved GB/s under the byte model of :func:`benchmarks.losses.bytes_moved`,
that as a percentage of the device-to-device copy bandwidth measured in the same run, fastvae's
speedups against eager and compile, the peak extra device memory of one step, the bytes saved
for backward (all, and beyond the inputs' own storage), the GPU activities per step from the
profiler, the ops dispatched per step (kernel launches counted at the dispatcher), host syncs
per step. Then the end-to-end MNIST comparison of :mod:`benchmarks.mnist`, and a ``headline``
object. GPU-only quantities are null on a CPU. A smoke run is marked ``"smoke": true`` and
written under ``runs/`` by default: it checks the harness, its numbers are not results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import sys
from pathlib import Path

import torch
import triton

from benchmarks import losses, measure
from benchmarks import mnist as mnist_bench
from benchmarks.losses import Case

RESULTS_DIR = Path(__file__).resolve().parent / "results"
HEADLINE_KEYS = (
    "recon_bernoulli_pct_copy_bw",
    "recon_bernoulli_speedup_vs_eager",
    "recon_mse_speedup_vs_eager",
    "recon_speedup_vs_compile",
    "loss_head_launches",
    "loss_head_host_syncs",
    "mnist_10_epochs_seconds",
    "mnist_speedup_vs_baseline",
    "mnist_test_loss_fastvae",
    "mnist_test_loss_baseline",
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FULL = {
    "latent": [(b, latent_dim) for b in (128, 4096, 65536) for latent_dim in (20, 128)],
    "recon": [(b, d) for b in (128, 4096) for d in (784, 49152)],
    "loss_head": [(128, 784)],
    "headline_recon": (4096, 49152),
}
SMOKE = {
    "latent": [(8, 4), (16, 20)],
    "recon": [(4, 16), (8, 784)],
    "loss_head": [(8, 784)],
    "headline_recon": (8, 784),
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def cases(sizes: dict, ops: tuple[str, ...], dtypes: tuple[str, ...]) -> list[Case]:
    out = []
    for op in ops:
        shapes = (sizes["latent"] if op == "latent"
                  else sizes["loss_head"] if op == "loss_head" else sizes["recon"])
        for (b, d) in shapes:
            for dt in ("fp32",) if op == "loss_head" else dtypes:
                for mode in losses.MODES:
                    out.append(Case(op, b, d, DTYPES[dt], mode))
    return out


def _measure_impl(case: Case, impl: str, device: torch.device, rotate_bytes: int,
                  compile_backend: str, quick: bool, generator: torch.Generator) -> dict:
    if impl == "compile":
        torch._dynamo.reset()  # a fresh cache per case: no recompile limit, no stale guards
    fn = losses.forward_fn(case.op, impl, compile_backend)
    sets = [losses.make_set(case, device, generator)
            for _ in range(losses.n_sets(case, rotate_bytes))]
    step = losses.step_fn(case, fn, sets)
    step()  # compile / autotune / first-call work, outside every measurement
    ms = measure.bench(step, device, quick=quick)
    gb = losses.bytes_moved(case) / 1e9
    one = losses.step_fn(case, fn, sets[:1])
    row = {"impl": impl, "time_ms": ms, "gbps": gb / (ms * 1e-3)}
    row["peak_extra_bytes"] = measure.peak_extra_bytes(one, device)
    row["saved_bytes"] = row["saved_bytes_beyond_inputs"] = None
    if case.mode == "fwd+bwd":
        # Forward only, the graph kept: what autograd holds between forward and backward.
        inputs = losses.inputs_of(case, sets[0])
        try:
            saved = measure.saved_for_backward(lambda: fn(*inputs), inputs)
            row["saved_bytes"] = saved.bytes
            row["saved_bytes_beyond_inputs"] = saved.bytes_beyond_inputs
        except RuntimeError as exc:  # a compiler that refuses saved-tensor hooks: say so, go on
            row["saved_bytes_error"] = str(exc)[:200]
    row["launches"] = measure.profiled_launches(one, device)
    row["host_syncs"] = measure.cuda_host_syncs(one, device)
    if impl == "compile":
        row["dispatched_launches"] = row["dispatched_syncs"] = None  # generated code, not aten ops
    else:
        counted = measure.count_dispatched(one)
        row["dispatched_launches"], row["dispatched_syncs"] = counted.launches, counted.syncs
    return row


def measure_case(case: Case, device: torch.device, copy_gbps: float, rotate_bytes: int,
                 compile_backend: str, quick: bool, seed: int = 0) -> list[dict]:
    """One row per implementation; an implementation that fails gets a row with its error."""
    base = {"op": case.op, "B": case.batch, "dim": case.dim, "dtype": case.dtype_name,
            "mode": case.mode, "bytes_model": losses.bytes_moved(case)}
    rows = []
    for impl in losses.IMPLS:
        generator = torch.Generator().manual_seed(seed)
        try:
            row = _measure_impl(case, impl, device, rotate_bytes, compile_backend, quick, generator)
            row["error"] = None
        except Exception as exc:  # report and go on: one failing cell must not lose the run
            row = {"impl": impl, "error": f"{type(exc).__name__}: {exc}"[:500]}
        row["pct_copy_bw"] = 100 * row["gbps"] / copy_gbps if row.get("gbps") else None
        rows.append({**base, **row})
    by = {r["impl"]: r for r in rows}
    for r in rows:
        for other in ("eager", "compile"):
            ok = r["impl"] == "fastvae" and r.get("time_ms") and by[other].get("time_ms")
            r[f"speedup_vs_{other}"] = by[other]["time_ms"] / r["time_ms"] if ok else None
    return rows


def _find(rows, **key):
    for r in rows:
        if all(r.get(k) == v for k, v in key.items()):
            return r
    return {}


def headline(rows: list[dict], mnist: dict | None, sizes: dict) -> dict:
    """The issue's headline numbers from the rows (None where not measured)."""
    b, d = sizes["headline_recon"]
    cell = {"B": b, "dim": d, "dtype": "fp32", "mode": "fwd+bwd", "impl": "fastvae"}
    bern = _find(rows, op="recon_bernoulli", **cell)
    mse = _find(rows, op="recon_mse", **cell)
    vs_compile = [r.get("speedup_vs_compile") for r in (bern, mse)]
    head = _find(rows, op="loss_head", mode="fwd+bwd", impl="fastvae")
    return {
        "recon_bernoulli_pct_copy_bw": bern.get("pct_copy_bw"),
        "recon_bernoulli_speedup_vs_eager": bern.get("speedup_vs_eager"),
        "recon_mse_speedup_vs_eager": mse.get("speedup_vs_eager"),
        # the smaller of the two likelihoods' speedups: the claim must hold for both
        "recon_speedup_vs_compile": min(vs_compile) if None not in vs_compile else None,
        "loss_head_launches": head.get("launches"),
        "loss_head_host_syncs": head.get("host_syncs"),
        # only a 10-epoch run fills the key named after it (a smoke run trains 1 epoch)
        "mnist_10_epochs_seconds": (mnist["fastvae"]["seconds"]
                                    if mnist and mnist["epochs"] == 10 else None),
        "mnist_speedup_vs_baseline": mnist["speedup"] if mnist else None,
        "mnist_test_loss_fastvae": mnist["fastvae"]["test_loss"] if mnist else None,
        "mnist_test_loss_baseline": mnist["baseline"]["test_loss"] if mnist else None,
    }


def run(*, smoke: bool = False, device: str | None = None, ops=losses.OPS, dtypes=("fp32", "bf16"),
        mnist_epochs: int | None = None, compile_backend: str | None = None,
        sizes: dict | None = None, log=print) -> dict:
    """Run the benchmarks; returns the results dict (see the module docstring). ``sizes``
    (keys as ``FULL``) replaces the default sizes (``SMOKE`` for a smoke run, else ``FULL``)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = sizes or (SMOKE if smoke else FULL)
    if compile_backend is None:
        # Inductor on a CPU compiles C++ for every case; the smoke run checks the harness with
        # AOT autograd's eager backend instead (it says so in the results).
        compile_backend = "aot_eager" if smoke and dev.type == "cpu" else "inductor"
    if dev.type == "cuda":
        l2 = torch.cuda.get_device_properties(dev).L2_cache_size
        rotate_bytes, copy_bytes = 2 * l2, (64 << 20 if smoke else 1 << 30)
    else:
        rotate_bytes, copy_bytes = 0, (16 << 20 if smoke else 256 << 20)
    copy_gbps = measure.copy_bandwidth_gbps(dev, copy_bytes, quick=smoke)
    log(f"device {device_name(dev)}: copy bandwidth {copy_gbps:.1f} GB/s ({copy_bytes >> 20} MiB)")
    rows = []
    for case in cases(sizes, tuple(ops), tuple(dtypes)):
        for r in measure_case(case, dev, copy_gbps, rotate_bytes, compile_backend, quick=smoke):
            rows.append(r)
            log(format_row(r))
    epochs = mnist_epochs if mnist_epochs is not None else (1 if smoke else 10)
    mnist = None
    if epochs > 0:
        limits = {"limit_train": 512, "limit_test": 256} if smoke else {}
        mnist = mnist_bench.run(epochs, dev, **limits)
        log(f"MNIST {epochs} epochs: baseline {mnist['baseline']['seconds']:.2f} s "
            f"(test {mnist['baseline']['test_loss']:.2f}), "
            f"fastvae {mnist['fastvae']['seconds']:.2f} s "
            f"(test {mnist['fastvae']['test_loss']:.2f}), speedup {mnist['speedup']:.1f}x")
    return {
        "device": device_name(dev),
        "device_type": dev.type,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "smoke": smoke,
        "compile_backend": compile_backend,
        "copy_bandwidth_gbps": copy_gbps,
        "copy_bytes": copy_bytes,
        "timer": ("triton.testing.do_bench median" if dev.type == "cuda"
                  else "time.perf_counter median"),
        "rows": rows,
        "mnist": mnist,
        "headline": headline(rows, mnist, sizes),
    }


def format_row(r: dict) -> str:
    def f(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) else "-"

    head = (f"{r['op']:<16} B={r['B']:<6} dim={r['dim']:<6} {r['dtype']} {r['mode']:<7} "
            f"{r['impl']:<8}")
    if r.get("error"):
        return f"{head} ERROR {r['error']}"
    return (f"{head} {f(r['time_ms'], '9.4f')} ms {f(r['gbps'], '8.1f')} GB/s "
            f"{f(r['pct_copy_bw'], '5.1f')}% copy  x{f(r.get('speedup_vs_eager'), '.2f')} eager "
            f"x{f(r.get('speedup_vs_compile'), '.2f')} compile  launches {f(r['launches'], 'd')} "
            f"(dispatched {f(r['dispatched_launches'], 'd')})")


def default_out(result: dict) -> Path:
    name = f"{slug(result['device'])}.json"
    return Path("runs/bench-smoke") / name if result["smoke"] else RESULTS_DIR / name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, 1 MNIST epoch on 512 images: checks the harness")
    p.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    p.add_argument("--ops", nargs="+", choices=losses.OPS, default=list(losses.OPS))
    p.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=list(DTYPES))
    p.add_argument("--mnist-epochs", type=int, default=None,
                   help="0 skips MNIST (default 10, smoke 1)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default inductor)")
    p.add_argument("--out", default=None,
                   help="JSON path (default benchmarks/results/<device>.json, "
                   "smoke runs under runs/bench-smoke/)")
    args = p.parse_args(argv)
    result = run(smoke=args.smoke, device=args.device, ops=args.ops, dtypes=args.dtypes,
                 mnist_epochs=args.mnist_epochs, compile_backend=args.compile_backend)
    out = Path(args.out) if args.out else default_out(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    print(json.dumps(result["headline"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
