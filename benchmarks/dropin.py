"""Other people's VAEs with fastvae dropped in: loss heads and whole training steps, timed.

    python -m benchmarks.dropin              # CUDA: do_bench; CPU: checks, host estimate
    python -m benchmarks.dropin --smoke      # tiny sizes, any device: checks the harness
    python -m benchmarks.dropin --checks torch   # the correctness checks alone, as JSON

The code is pytorch/examples ``vae/main.py`` and AntixK PyTorch-VAE ``VanillaVAE``, written
out with source and license in :mod:`benchmarks.thirdparty`, each as published ("original")
and with fastvae's documented swaps ("elbo_loss", "elbo_loss_probs", "fused"; see those
modules). Sizes: B=128 x 1x28x28 (L=20), B=64 x 3x64x64 (L=128), B=256 x 3x128x128 (L=128).

What is measured, per code, size and variant:

- ``head``: the loss head forward + backward: z and the loss from given latents and decoder
  outputs, ``torch.autograd.grad`` of (loss, z) with a given dz (the rest of the model cut
  out); the original also under ``torch.compile`` (default mode);
- ``step``: the whole training step (zero_grad, model forward, loss, backward, Adam step;
  data already on the device), eager; under ``torch.compile(mode="reduce-overhead")`` of the
  forward + loss (backward through AOT autograd, the optimizer eager); and under bf16
  autocast (where pytorch/examples' ``F.binary_cross_entropy`` is refused on CUDA).

On CUDA: ``triton.testing.do_bench`` medians (:func:`benchmarks.measure.bench`), GPU
activities per call from the profiler, speedups against the original, and for each compiled
step the fresh-noise check of :func:`benchmarks.dropin_checks.replays_differ` (CUDA-graph
replays of one batch give different losses). Every variant is also checked against its original
(:mod:`benchmarks.dropin_checks`: loss and gradients from the same inputs and noise).

On a CPU there is no GPU timing: the checks run on the PyTorch path ("torch") and, in a
child process with ``TRITON_INTERPRET=1``, on the Triton kernels; the H200 host time of each
head and eager step is ESTIMATED (:func:`benchmarks.host.measure`: Triton's whole launch path
timed here through a fake CUDA driver, what a CPU tensor cannot show charged at prices fitted
on H200 figures), on each size's *twin* (the same layers and ops with tiny tensors,
:func:`twin_size`, so CPU compute does not swamp the host path). At these sizes the GPU
waits for the host, so the host time is what a step costs there; it is an estimate, labelled
so in the results, and the model's check against H200 figures is in the README.

Results: ``benchmarks/results/dropin/<device>.json`` (a CPU run: ``<cpu>-cpu.json``, marked
``"gpu_timing": false``); smoke runs under ``runs/dropin-smoke/``. Each variant is also a
callable for other timers: :func:`variants`.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from benchmarks.report import RESULTS_DIR
from benchmarks.thirdparty import antixk_vanilla_vae, pytorch_examples_vae

CODES = {"pytorch_examples": pytorch_examples_vae, "antixk": antixk_vanilla_vae}
# compiled and bf16 steps: the original and the swaps a user of each code would take
MAIN_VARIANTS = ("original", "elbo_loss", "fused")
ROOT = Path(__file__).resolve().parent.parent
DROPIN_RESULTS = RESULTS_DIR / "dropin"
CPU_NOTE = ("ESTIMATE of H200 host time (benchmarks.host: each size's twin timed on this CPU, "
            "Triton's launch path through a fake CUDA driver, what CPU tensors cannot show "
            "charged at prices fitted on H200 figures); not a GPU timing")


@dataclass(frozen=True)
class Size:
    """A batch of ``batch`` images of ``channels x side x side`` and ``latent`` latent dims."""

    batch: int
    channels: int
    side: int
    latent: int

    @property
    def name(self) -> str:
        return f"B={self.batch} {self.channels}x{self.side}x{self.side} L={self.latent}"


def twin_size(size: Size, code: str) -> Size:
    """``size``'s twin for ``code``'s model: B=2, L=4 and the smallest image that keeps the
    model's layers (the code's ``twin_image``); :func:`build` with ``twin=True`` also shrinks
    the widths. The twin runs the ops the model runs at ``size``, on tiny tensors."""
    channels, side = CODES[code].twin_image(size.channels, size.side)
    return Size(2, channels, side, 4)


SIZES = (Size(128, 1, 28, 20), Size(64, 3, 64, 128), Size(256, 3, 128, 128))
SMOKE_SIZES = (Size(4, 1, 4, 3),)


def build(code: str, variant: str, size: Size, device, *, twin=False, backend=None):
    """The ``variant`` of ``code``'s model for ``size``'s images and latents, on ``device``
    (``twin``: every width shrunk, the layers kept); ``backend`` is fastvae's."""
    return CODES[code].build(variant, size.channels, size.side, size.latent, twin=twin,
                             backend=backend).to(device)


# ------------------------------------------------------------------ inputs


def _randn(gen, *shape, scale=1.0, device="cpu"):
    return (scale * torch.randn(*shape, generator=gen)).to(device)


def batches(size: Size, device, gen: torch.Generator, n: int = 2) -> list[torch.Tensor]:
    """``n`` batches of images, U(0, 1) pixels, ``(B, C, side, side)`` float32 on ``device``."""
    shape = (size.batch, size.channels, size.side, size.side)
    return [torch.rand(*shape, generator=gen).to(device) for _ in range(n)]


def head_inputs(code: str, size: Size, device, gen: torch.Generator) -> dict:
    """The loss head's inputs, random and never zeros: mu ~ N(0, 1), logvar ~ N(0, 0.5^2),
    dz ~ N(0, 1), the decoder's output (pytorch/examples: logits ~ N(0, 2^2), ``(B, D)``;
    AntixK: tanh of N(0, 1), ``(B, C, H, W)``), x ~ U(0, 1) of its shape; mu, logvar and the
    output require grad."""
    b, l_ = size.batch, size.latent
    image = (size.channels, size.side, size.side)
    shape = (b, size.channels * size.side ** 2) if code == "pytorch_examples" else (b, *image)
    out = _randn(gen, *shape, scale=2.0, device=device)
    return {"mu": _randn(gen, b, l_, device=device).requires_grad_(),
            "logvar": _randn(gen, b, l_, scale=0.5, device=device).requires_grad_(),
            "out": (out if code == "pytorch_examples" else torch.tanh(out / 2)).requires_grad_(),
            "x": torch.rand(*shape, generator=gen).to(device),
            "dz": _randn(gen, b, l_, device=device),
            "one": torch.ones((), device=device)}


# ------------------------------------------------------------------ the callables


def head_step(code: str, variant: str, size: Size, device, *, backend=None, twin=False,
              compile_options: dict | None = None, n_sets=2, seed=0) -> Callable[[], object]:
    """One loss head forward + backward per call, cycling through ``n_sets`` input sets (at
    ``size``'s twin if ``twin``); returns the gradients of (mu, logvar, out).
    ``compile_options``: the head's forward under ``torch.compile(**compile_options)``."""
    gen = torch.Generator().manual_seed(seed)
    at = twin_size(size, code) if twin else size
    sets = itertools.cycle([head_inputs(code, at, device, gen) for _ in range(n_sets)])
    head = CODES[code].VARIANTS[variant].head
    if compile_options is not None:
        head = torch.compile(head, **compile_options)
    sampler = build(code, variant, Size(1, 1, 4, 1), device, twin=True, backend=backend)

    def step():
        s = next(sets)
        z, loss = head(sampler, s["mu"], s["logvar"], s["out"], s["x"])
        return torch.autograd.grad((loss, z), (s["mu"], s["logvar"], s["out"]), (s["one"], s["dz"]))

    return step


def train_step(code: str, variant: str, size: Size, device, *, backend=None, mode="eager",
               compile_options: dict | None = None, twin=False, n_batches=2,
               seed=0) -> Callable[[], torch.Tensor]:
    """One training step per call (zero_grad, forward + loss, backward, Adam step), cycling
    through ``n_batches`` batches on ``device``; returns the loss. ``mode``: "eager", "bf16"
    (forward + loss under ``torch.autocast(dtype=torch.bfloat16)``) or "compile" (forward +
    loss under ``torch.compile(**compile_options)``, default ``mode="reduce-overhead"``; a
    CUDA graph step begins with every call). Adam as the code's training script makes it
    (its LR), ``foreach=True`` (CUDA's default, so a CPU run dispatches the ops a GPU run
    launches). ``twin``: at ``size``'s twin. The step function carries ``model``,
    ``loss_of`` (the forward + loss of a batch, compiled or not) and ``batch`` (the first)."""
    torch.manual_seed(seed)
    at = twin_size(size, code) if twin else size
    model = build(code, variant, at, device, twin=twin, backend=backend)
    data = batches(at, device, torch.Generator().manual_seed(seed), n_batches)
    cycle = itertools.cycle(data)
    opt = torch.optim.Adam(model.parameters(), lr=CODES[code].LR, foreach=True)
    loss_of = functools.partial(CODES[code].VARIANTS[variant].batch_loss, model)
    mark = None
    if mode == "compile":
        options = {"mode": "reduce-overhead"} if compile_options is None else compile_options
        loss_of = torch.compile(loss_of, **options)
        if options.get("mode") == "reduce-overhead":
            mark = torch.compiler.cudagraph_mark_step_begin
    elif mode == "bf16":
        loss_of = _autocast(loss_of, torch.device(device).type)
    elif mode != "eager":
        raise ValueError(f"mode must be 'eager', 'bf16' or 'compile', got {mode!r}")

    def step():
        x = next(cycle)
        if mark is not None:
            mark()
        opt.zero_grad()
        loss = loss_of(x)
        loss.backward()
        opt.step()
        return loss

    step.model, step.loss_of, step.batch = model, loss_of, data[0]
    return step


def _autocast(fn, device_type):
    def under_autocast(x):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return fn(x)

    return under_autocast


def variants(size: Size, device="cpu", *, backend=None, twin=False) -> dict[str, Callable]:
    """Every head and eager training step at ``size`` as a callable of no arguments, keyed
    ``"<code>/<head|step>/<variant>"`` (for host timers; ``twin=True`` builds the size's twin:
    the same ops on tiny tensors)."""
    out = {}
    for code, mod in CODES.items():
        for variant in mod.VARIANTS:
            for what, make in (("head", head_step), ("step", train_step)):
                out[f"{code}/{what}/{variant}"] = make(code, variant, size, device,
                                                       backend=backend, twin=twin)
    return out


# ------------------------------------------------------------------ the command


def _failures(result: dict) -> list[str]:
    """Failed checks, and compiled fastvae steps whose replays repeated the noise."""
    bad = [f"check {c.get('code')} {c.get('variant')} {c.get('what')} {c.get('size')} "
           f"({c.get('backend')}): {c.get('error') or c.get('max_abs_diff')}"
           for c in result["checks"] if not c.get("ok")]
    bad += [f"{r['code']} {r['variant']} {r['size']}: the compiled step's replays repeat the noise"
            for r in result["rows"] if r["variant"] != "original"
            and r.get("fresh_noise") and not r["fresh_noise"]["fresh"]]
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dropin",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes on any device (a harness check)")
    p.add_argument("--plan", choices=("full", "check"), default="full",
                   help="CUDA: every cell (default), or gpu_check's budgeted subset")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds; timed cells left after it are skipped, said so (default: none)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="cuda (default when present) or cpu")
    p.add_argument("--reps", type=int, default=200,
                   help="CPU: rounds of the host estimate's interleaved timing")
    p.add_argument("--checks", choices=("auto", "torch", "triton"), default=None,
                   help="only the correctness checks, with this fastvae backend: JSON on stdout")
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/dropin/"
                   "<device>.json; smoke runs under runs/dropin-smoke/)")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error(f"--reps must be at least 1, got {args.reps}")
    if args.budget is not None and not args.budget > 0:
        p.error(f"--budget must be a positive number of seconds, got {args.budget}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device (torch.cuda.is_available() is False)")
    if args.checks:
        from benchmarks import dropin_checks

        rows = dropin_checks.run_checks(device, None if args.checks == "auto" else args.checks)
        print(json.dumps(rows, indent=2))
        return 0 if all(r["ok"] for r in rows) else 1
    from benchmarks import dropin_timing

    result = dropin_timing.run(smoke=args.smoke, kind=args.plan, device=str(device),
                               budget_s=args.budget, reps=args.reps)
    out = Path(args.out) if args.out else dropin_timing.default_out(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(dropin_timing.table(result))
    print(f"wrote {out} ({result['timer']}; {result.get('timing_note', '')})")
    bad = _failures(result)
    for line in bad:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
