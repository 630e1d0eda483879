"""The static roofline report: every hot-path kernel variant compiled for sm_90, without a GPU.

    python -m benchmarks.static --out DIR            # all variants (a few minutes on a CPU)
    python -m benchmarks.static --out DIR --quick    # the MNIST-size variants only
    python -m benchmarks.static --out DIR --check    # exit 1, listing each missed budget

Run it in a process without ``TRITON_INTERPRET=1``. The public API (``fastvae.reconstruction_loss``
and ``fastvae.sample_and_kl`` with ``backend="triton"``) is called forward and backward at the
benchmark sizes on untouched ``torch.empty`` CPU tensors with every Triton launch recorded
instead of run (:mod:`benchmarks.launches`); each recorded launch is compiled for sm_90 with
the runtime specialization Triton gives those arguments, so the report follows whatever
kernels and launch heuristics the launchers have, including any extra kernel they launch.

Scenarios (fp32 and bf16): recon ``bernoulli``/``mse``/``gaussian`` at B x D = 4096 x 49152 and
128 x 784 -- forward without gradient (phase ``fwd``), reduction "sum" forward with gradient
(``fwd_grad``) and its backward (``bwd_sum``: the scale kernel), reduction "none" forward
with the loss per row (``fwd_rows``) and backward (``bwd``); latent
``sample_and_kl`` at B in {128, 65536} x L in {20, 128}, reductions "sum" and "mean" (rows of
"mean" that compile differently get the suffix ``_mean``), forward (``fwd``) and backward with
dz and the KL's gradient (``bwd``). A variant (kernel + specialization) is reported once per
op, dtype and size, under the first name that produced it; a second distinct kernel in the
same phase gets its kernel's name appended.

Per row (``DIR/report.json``; the SASS as ``DIR/<name>.sass``):

- ``registers``, ``spill_bytes`` (spill stores + loads), ``stack_bytes``: ``ptxas -v``.
- ``load_bits`` / ``store_bits``: the widest global load / store in the SASS;
  ``vector_load_share`` / ``vector_store_share``: the bytes a thread's tile-sized loads
  (stores) move that 128-bit ``LDG``/``STG`` instructions cover (their static count x 16 bytes
  over elements_per_thread x element size x the tile-sized accesses; capped at 1, null without
  tile-sized accesses); ``fp64``: the number of double-precision SASS instructions.
- ``elements_per_tile``: the largest tensor a ``tt.load``/``tt.store`` moves (Triton GPU IR);
  ``elements_per_thread`` = that / (num_warps * 32).
- ``sass_instructions``: static SASS count (NOP padding and the closing self-branch excluded).
- ``sass_last_program``: the part of ``sass_instructions`` that only the program drawing the
  last ticket of a one-launch reduction runs (the fixed-order sum of the per-program partials,
  the counter reset): everything after the first ``EXIT`` that follows the ticket's atomic add,
  where every other program leaves (:func:`benchmarks.sass.parse_sass`; 0 without a ticket, or
  when a branch before that ``EXIT`` jumps past it). It runs once per launch, not once per
  element, so the per-element count leaves it out; it is reported, and its cost is in the
  estimate below (its registers count too: ``registers`` is the whole kernel's).
- ``tile_passes``: how many passes over a tile that code holds: more than 1 where the
  compiler unrolled a loop over several tiles, counted from
  its 128-bit loads against those one pass over a tile makes.
- ``sass_per_element`` = (sass_instructions - sass_last_program) / (elements_per_thread x
  tile_passes): the instructions one thread of a program that does not draw the last ticket
  issues per element it handles, for a pass of the code over one tile. Each instruction is
  counted once: exact for loop-free code, and for loops that run once per tile (as the
  benchmark sizes make them: K = 1 sample, L <= the L block); a loop that runs several times
  per tile would be undercounted, a prologue shared by several tiles overcounted.
- ``bytes_vs_model``: bytes of the launch's distinct tensor arguments (each once, read or
  written: an upper bound of what it moves) over the byte model of its phase (E = element
  size, N = B x D or B x L): recon ``fwd`` and ``fwd_rows`` 2 N E (gaussian 3), ``fwd_grad``
  and ``bwd`` 3 N E (gaussian 5: read m, v, x, write dm, dv), ``bwd_sum`` 2 N E of each
  gradient (the in-place scale when grad_output != 1; at grad_output == 1 the kernel returns
  after one scalar load and moves nothing: the forward already wrote the gradient); latent
  ``fwd`` 3 N E (read mu, logvar, write z), ``bwd`` 5 N E (read mu, logvar, dz, write dmu,
  dlogvar). Scalars left out.
- ``est_pct_copy_bw_h100`` / ``_h200``: ESTIMATES, not measurements. The phase's model bytes
  over (copy bandwidth x estimated time of this launch), as a percentage: how close to a copy
  the phase would run if this launch were all of it. The time is max(memory time, issue time)
  plus a fixed launch cost, plus the last program's serial sum when there is one
  (``sass_last_program`` instructions at one per cycle, plus one load latency per
  elements_per_tile partials it adds; with ticket groups, one for the last group's partials
  and one per SBLOCK group sums: :func:`last_program_trips`), under these assumptions
  (constants ``GPUS``, ``ISSUE_IPC``,
  ``LAUNCH_US``): copy bandwidth 3.0 TB/s (H100 SXM, 90% of 3.35 peak) and 4.3 TB/s (H200,
  90% of 4.8); 132 SMs at 1.755 GHz, 4 schedulers per SM issuing ``ISSUE_IPC`` = 0.7 warp
  instructions per cycle each; memory time = launch bytes / (bandwidth x f), with f the
  fraction of the bandwidth-latency product (650 ns) the resident programs keep in flight
  (launch bytes: at least the model bytes, since a launch reads and writes an in-place
  buffer as one argument)
  (programs resident per SM from registers: 64K per SM in 256-register warp granules, at most
  64 warps and 32 programs per SM; each program's tile of bytes in flight, times its
  tile_passes); a ticketed reduction adds ``TICKET_CYCLES`` = 1 clock per ticket taken on
  one counter (one counter: a clock per program; the recon forward's ticket groups of GROUP
  programs: GROUP clocks, then one per group on the top counter); issue time =
  sass_instructions x num_warps x tiles / (active SMs x 4 x clock x ISSUE_IPC), tiles = N /
  elements_per_tile; launch cost 2.5 us.

Budgets (``BUDGETS``, shared with ``tests/test_static.py``): see :func:`missed_budgets`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

import fastvae
from benchmarks import at_revision, launches, sass

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LIKELIHOODS = ("bernoulli", "mse", "gaussian")
RECON_SIZES = ((4096, 49152), (128, 784))
LATENT_SIZES = ((128, 20), (128, 128), (65536, 20), (65536, 128))
QUICK_RECON_SIZES = ((128, 784),)
QUICK_LATENT_SIZES = ((128, 20),)

# The kernels' budgets (docs/design.md, "Kernels"), sm_90 with the runtime specialization.
BUDGETS = {
    "sass_per_element": {"recon_bernoulli": 36, "recon_mse": 14, "recon_gaussian": 28,
                         "latent": 70},
    "registers": {"recon": 64, "latent": 96},
    "spill_bytes": 0,
    "stack_bytes": 0,
    "fp64": 0,
    "access_bits": 128,  # every tile-sized global load and store in 128-bit instructions
}


@dataclass(frozen=True)
class GPU:
    sms: int
    clock_ghz: float
    copy_gbps: float  # achieved device-to-device copy bandwidth, GB/s (1e9 B)
    latency_ns: float  # loaded DRAM latency (bandwidth-latency product = bytes to keep in flight)


GPUS = {
    "h100": GPU(sms=132, clock_ghz=1.755, copy_gbps=3000.0, latency_ns=650.0),
    "h200": GPU(sms=132, clock_ghz=1.755, copy_gbps=4300.0, latency_ns=650.0),
}
ISSUE_IPC = 0.7  # warp instructions per cycle per scheduler, sustained (4 schedulers per SM)
LAUNCH_US = 2.5  # fixed cost of one launch on the device (start, ramp, tail)
# Atomics on one address are served one at a time: a clock per program's ticket, from the
# H200 run (the one-tile-per-program forward at 4096 x 49152 took 27-30 us, about one
# clock per program, longer than torch.compile's reduction; see kernels/_recon_reduce.py).
TICKET_CYCLES = 1.0
REGS_PER_SM, MAX_WARPS_PER_SM, MAX_PROGRAMS_PER_SM = 65536, 64, 32


# ------------------------------------------------------------------ scenarios


@dataclass
class Scenario:
    """One public-API call, forward and backward (``run``, which labels its launches with their
    phase): ``family`` (recon_bernoulli, latent_sample_and_kl, ...), ``dtype`` and ``sizes`` as
    they appear in the row names, ``n`` elements (B x D or B x L), ``model`` the byte model of
    each phase, ``suffix`` appended to the names of the rows it adds."""

    family: str
    dtype: str
    sizes: str
    n: int
    model: dict[str, int]
    run: Callable[[launches.Recorder], None]
    suffix: str = ""


def _recon_scenarios(lik: str, dt: str, B: int, D: int) -> Iterator[Scenario]:
    dtype = DTYPES[dt]
    elem = torch.empty((), dtype=dtype).element_size()
    n = B * D
    ins = 3 if lik == "gaussian" else 2
    both = 5 if lik == "gaussian" else 3
    grads = 2 if lik == "gaussian" else 1
    model = {"fwd": ins * n * elem, "fwd_rows": ins * n * elem, "fwd_grad": both * n * elem,
             "bwd": both * n * elem, "bwd_sum": 2 * grads * n * elem}

    def inputs(grad: bool):
        r = torch.empty(B, D, dtype=dtype).requires_grad_(grad)
        x = torch.empty(B, D, dtype=dtype)
        v = torch.empty(B, D, dtype=dtype).requires_grad_(grad) if lik == "gaussian" else None
        return r, x, v, [t for t in (r, v) if t is not None]

    def loss(r, x, v, reduction):
        return fastvae.reconstruction_loss(r, x, lik, recon_logvar=v, reduction=reduction,
                                           backend="triton")

    def forward_only(rec):
        r, x, v, _ = inputs(False)
        with rec.phase("fwd"), torch.no_grad():
            loss(r, x, v, "sum")

    def summed(rec):
        r, x, v, wrt = inputs(True)
        with rec.phase("fwd_grad"):
            out = loss(r, x, v, "sum")
        with rec.phase("bwd_sum"):
            torch.autograd.grad(out, wrt)

    def per_sample(rec):
        r, x, v, wrt = inputs(True)
        with rec.phase("fwd_rows"):
            out = loss(r, x, v, "none")
        with rec.phase("bwd"):
            torch.autograd.grad(out, wrt, torch.ones(B))

    for run in (forward_only, summed, per_sample):
        yield Scenario(f"recon_{lik}", dt, f"B{B}_D{D}", n, model, run)


def _latent_scenarios(dt: str, B: int, L: int) -> Iterator[Scenario]:
    dtype = DTYPES[dt]
    elem = torch.empty((), dtype=dtype).element_size()
    n = B * L
    model = {"fwd": 3 * n * elem, "bwd": 5 * n * elem}

    def make(reduction):
        def run(rec):
            mu = torch.empty(B, L, dtype=dtype, requires_grad=True)
            lv = torch.empty(B, L, dtype=dtype, requires_grad=True)
            with rec.phase("fwd"):
                z, kl = fastvae.sample_and_kl(mu, lv, reduction=reduction, backend="triton")
            with rec.phase("bwd"):
                torch.autograd.grad([z, kl], [mu, lv], [torch.empty_like(z), torch.ones_like(kl)])
        return run

    for reduction, suffix in (("sum", ""), ("mean", "_mean")):
        yield Scenario("latent_sample_and_kl", dt, f"B{B}_L{L}", n, model, make(reduction), suffix)


def scenarios(quick: bool = False, dtypes=tuple(DTYPES)) -> list[Scenario]:
    out = []
    for dt in dtypes:
        for B, D in QUICK_RECON_SIZES if quick else RECON_SIZES:
            for lik in LIKELIHOODS:
                out += _recon_scenarios(lik, dt, B, D)
        for B, L in QUICK_LATENT_SIZES if quick else LATENT_SIZES:
            out += _latent_scenarios(dt, B, L)
    return out


# ------------------------------------------------------------------ analysis


def _short(kernel_name: str) -> str:
    return kernel_name.strip("_").removesuffix("_kernel")


def _family_budget(table: dict, family: str):
    for key in sorted(table, key=len, reverse=True):
        if family.startswith(key):
            return table[key]
    return None


def last_program_trips(row: dict, programs: int) -> int:
    """Dependent global-load round trips of the serial sum after the last ticket. A scalar
    reduction with ticket groups (the recon forward's OUT_TOTAL, GROUP and SBLOCK constexprs):
    the last group's own sum of at most GROUP partials, then the group sums SBLOCK at a time.
    Otherwise (one counter, or one value per row) every program's partial, elements_per_tile
    at a time."""
    c = row.get("constexprs", {})
    if c.get("OUT") == 2 and "GROUP" in c and "SBLOCK" in c:  # kernels/_recon_reduce.OUT_TOTAL
        return 1 + math.ceil(math.ceil(programs / c["GROUP"]) / c["SBLOCK"])
    return math.ceil(programs / row["elements_per_tile"])


def estimate_pct(row: dict, gpu: GPU, launch_bytes: int, model_bytes: int, n: int) -> float:
    """Estimated % of copy bandwidth of the row's phase if this launch were all of it (see
    the module docstring for the model and its assumptions)."""
    warps = row["num_warps"]
    granule = math.ceil(max(row["registers"], 1) * 32 / 256) * 256
    warps_by_regs = REGS_PER_SM // granule
    per_sm = max(1, min(MAX_PROGRAMS_PER_SM, warps_by_regs // warps, MAX_WARPS_PER_SM // warps))
    programs = math.prod(row["grid"])
    tiles = max(1, math.ceil(n / row["elements_per_tile"]))
    bytes_per_tile = launch_bytes / tiles
    in_flight = min(programs, gpu.sms * per_sm) * bytes_per_tile * row["tile_passes"]
    bw = gpu.copy_gbps * 1e9
    f = min(1.0, in_flight / (bw * gpu.latency_ns * 1e-9))
    t_mem = max(launch_bytes, model_bytes) / (bw * f)
    active = min(gpu.sms, programs)
    per_tile = (row["sass_instructions"] - row["sass_last_program"]) / row["tile_passes"]
    t_issue = per_tile * warps * tiles / (active * 4 * gpu.clock_ghz * 1e9 * ISSUE_IPC)
    t_last = t_tickets = 0.0
    if row["sass_last_program"]:
        t_last = (row["sass_last_program"] / (gpu.clock_ghz * 1e9)
                  + last_program_trips(row, programs) * gpu.latency_ns * 1e-9)
        # grouped tickets (the recon forward's GROUP): the groups' counters take their tickets
        # side by side, then the top counter one per group
        group = row.get("constexprs", {}).get("GROUP", programs)
        t_tickets = ((min(group, programs) + math.ceil(programs / group)) * TICKET_CYCLES
                     / (gpu.clock_ghz * 1e9))
    t = max(t_mem, t_issue) + t_tickets + t_last + LAUNCH_US * 1e-6
    return 100.0 * model_bytes / (bw * t)


def analyze(compiled: launches.Compiled, name: str, scenario: Scenario) -> dict:
    """One report row (see the module docstring) for a compiled launch."""
    text = sass.disassemble(compiled.asm("cubin"))
    code = sass.parse_sass(text)
    res = sass.ptxas_resources(compiled.asm("ptx"),
                               fp_fusion=compiled.kernel.metadata.enable_fp_fusion)
    ttgir = compiled.asm("ttgir")
    loads, stores = sass.access_shapes(ttgir, "load"), sass.access_shapes(ttgir, "store")
    tile = max([n for n, _ in loads + stores] + [1])
    threads = compiled.num_warps * 32
    per_thread = max(1.0, tile / threads)
    tile_loads = [bits for n, bits in loads if n == tile]
    tile_stores = [bits for n, bits in stores if n == tile]
    launch_bytes = sum(t.numel() * t.element_size() for t in launches.tensor_args(compiled.launch))
    phase = compiled.launch.phase
    model = scenario.model[phase]
    row = {
        "name": name,
        "kernel": compiled.launch.name,
        "family": scenario.family,
        "phase": phase,
        "dtype": scenario.dtype,
        "num_warps": compiled.num_warps,
        "elements_per_tile": tile,
        "elements_per_thread": per_thread,
        "registers": res.registers,
        "spill_bytes": res.spill_bytes,
        "stack_bytes": res.stack_bytes,
        "load_bits": code.load_bits,
        "store_bits": code.store_bits,
        "tile_loads": len(tile_loads),
        "tile_stores": len(tile_stores),
        "vector_load_share": _vector_share(code.loads_128, tile_loads, per_thread),
        "vector_store_share": _vector_share(code.stores_128, tile_stores, per_thread),
        "sass_instructions": code.instructions,
        "sass_last_program": code.last_program_only,
        "tile_passes": _tile_passes(code.hot_loads_128, tile_loads, per_thread),
        "sass_per_element": (code.instructions - code.last_program_only) / per_thread
        / _tile_passes(code.hot_loads_128, tile_loads, per_thread),
        "fp64": len(code.fp64),
        "bytes_vs_model": launch_bytes / model,
        "launch_bytes": launch_bytes,
        "model_bytes": model,
        "grid": list(compiled.grid),
        "constexprs": {k: v if isinstance(v, (int, float, bool, str)) else str(v)
                       for k, v in compiled.constexprs.items()},
        "signature": {k: v for k, v in compiled.signature.items() if v != "constexpr"},
        "divisible_by_16": sorted(k for k, v in compiled.attrs.items()
                                  if ["tt.divisibility", 16] in v),
    }
    for gpu_name, gpu in GPUS.items():
        row[f"est_pct_copy_bw_{gpu_name}"] = estimate_pct(row, gpu, launch_bytes, model, scenario.n)
    row["_sass"] = text
    return row


def _tile_passes(hot_128: int, tile_bits: list[int], per_thread: float) -> int:
    """How many passes over a tile the code every program runs holds: 1, or more where the
    compiler unrolled a loop over several tiles. Counted from
    its 128-bit loads against the 16-byte pieces one pass over a tile loads (at least 1: a
    pass without 128-bit loads counts once)."""
    per_pass = sum(per_thread * bits / 8 for bits in tile_bits) / 16
    return max(1, round(hot_128 / per_pass)) if per_pass else 1


def _vector_share(n_128: int, tile_bits: list[int], per_thread: float) -> float | None:
    """Share of a thread's tile-sized loads (stores) that 128-bit instructions can carry: the
    128-bit instructions' 16 bytes each over the bytes the tile accesses move per thread,
    capped at 1 (None without tile-sized accesses)."""
    need = sum(per_thread * bits / 8 for bits in tile_bits)
    return min(1.0, n_128 * 16 / need) if need else None


def missed_budgets(row: dict) -> list[str]:
    """The budgets ``row`` misses, one line each: SASS per element (recon per likelihood,
    latent), registers (recon, latent), spills, stack, fp64 instructions, and 128-bit global
    loads (stores) in a variant with tile-sized loads (stores)."""
    out = []
    name = row["name"]
    sass_cap = _family_budget(BUDGETS["sass_per_element"], row["family"])
    if sass_cap is not None and row["sass_per_element"] > sass_cap:
        out.append(f"{name}: {row['sass_per_element']:.1f} SASS/element > {sass_cap}")
    reg_cap = _family_budget(BUDGETS["registers"], row["family"])
    if reg_cap is not None and row["registers"] > reg_cap:
        out.append(f"{name}: {row['registers']} registers > {reg_cap}")
    for key in ("spill_bytes", "stack_bytes", "fp64"):
        if row[key] > BUDGETS[key]:
            out.append(f"{name}: {key} {row[key]} > {BUDGETS[key]}")
    bits = BUDGETS["access_bits"]
    for kind in ("load", "store"):
        share = row[f"vector_{kind}_share"]
        if row[f"tile_{kind}s"] and (row[f"{kind}_bits"] < bits or share < 1.0):
            out.append(f"{name}: tile {kind}s not all {bits}-bit "
                       f"(widest {row[f'{kind}_bits']} bits, "
                       f"{100 * share:.0f}% of their bytes in {bits}-bit instructions)")
    return out


def _variant_key(c: launches.Compiled) -> tuple:
    return (c.launch.kernel, tuple(sorted(c.signature.items())), repr(sorted(c.constexprs.items())),
            repr(sorted(c.attrs.items())), c.num_warps)


def report(quick: bool = False, dtypes=tuple(DTYPES), only: str | None = None,
           log=print) -> list[dict]:
    """Record, compile and analyze every variant; rows sorted in scenario order. ``only``
    keeps the scenarios whose family contains it (e.g. "bernoulli", "latent")."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("run the static report without TRITON_INTERPRET=1: the interpreter "
                           "compiles nothing")
    rows, seen = [], set()
    for sc in scenarios(quick, dtypes):
        if only and only not in sc.family:
            continue
        with launches.recording() as rec:
            sc.run(rec)
        kernels_in_phase: dict[str, list] = {}
        for launch in rec.launches:
            compiled = launches.compile_sm90(launch)
            key = (sc.family, sc.dtype, sc.sizes, _variant_key(compiled))
            if key in seen:
                continue
            seen.add(key)
            firsts = kernels_in_phase.setdefault(launch.phase, [])
            extra = "" if not firsts or launch.kernel in firsts else f"_{_short(launch.name)}"
            firsts.append(launch.kernel)
            name = f"{sc.family}_{launch.phase}{extra}_{sc.dtype}_{sc.sizes}{sc.suffix}"
            while any(r["name"] == name for r in rows):
                name += "_v"
            row = analyze(compiled, name, sc)
            rows.append(row)
            log(format_row(row))
    return rows


def format_row(r: dict) -> str:
    return (f"{r['name']:<58} w{r['num_warps']:<2} ept {r['elements_per_thread']:>5g} "
            f"regs {r['registers']:>3} spill {r['spill_bytes']:>3} stack {r['stack_bytes']:>3} "
            f"ld {r['load_bits']:>3} st {r['store_bits']:>3} "
            f"SASS/el {r['sass_per_element']:6.1f} fp64 {r['fp64']:>2} "
            f"bytes/model {r['bytes_vs_model']:.2f} "
            f"est %copy H100 {r['est_pct_copy_bw_h100']:5.1f} "
            f"H200 {r['est_pct_copy_bw_h200']:5.1f}")


def write(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        (out / f"{r['name']}.sass").write_text(r["_sass"], encoding="utf-8")
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    (out / "report.json").write_text(json.dumps(public, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.static",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for report.json and the .sass files")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a budget is missed, listing each")
    p.add_argument("--quick", action="store_true", help="only the MNIST-size variants (B=128)")
    p.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=list(DTYPES))
    p.add_argument("--only", default=None,
                   help="only scenarios whose family contains this (e.g. latent)")
    p.add_argument("--code", metavar="REV", help="the kernels as they were at git revision REV "
                   "(e.g. 56c978a, the code the H200 measured), with this checkout's model")
    args = p.parse_args(argv)
    if args.code:
        rest = ["--out", str(Path(args.out).resolve()), *(["--check"] * args.check),
                *(["--quick"] * args.quick), "--dtypes", *args.dtypes,
                *(["--only", args.only] if args.only else [])]
        return at_revision.run_module(args.code, "benchmarks.static", rest)
    rows = report(quick=args.quick, dtypes=tuple(args.dtypes), only=args.only)
    write(rows, Path(args.out))
    print(f"wrote {Path(args.out) / 'report.json'} ({len(rows)} variants)")
    missed = [m for r in rows for m in missed_budgets(r)]
    if args.check and missed:
        print(f"{len(missed)} budgets missed:", *missed, sep="\n  ")
        return 1
    if args.check:
        print("all budgets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
