"""The VAE loss head on the CPU: fastvae against the hand-written eager loss, interleaved.

One step is the MNIST-size loss head forward and backward (B=128, D=784, L=20, fp32): z and the
KL from mu and logvar, the Bernoulli (logits) reconstruction loss, their sum, and
``torch.autograd.grad`` of (loss, z) with the incoming gradients made in advance. fastvae runs
:func:`benchmarks.losses.fastvae_loss_head` (backend "auto": the PyTorch path on CPU tensors),
the baseline :func:`benchmarks.losses.eager_loss_head` (the usual four lines). Single thread
(``torch.set_num_threads(1)``), timed in this process's CPU time (``time.process_time``): on a
machine shared with other work, wall-clock blocks include the time the process waited for a
core, which hits whichever implementation happened to run then.

The two alternate in blocks of ``--block`` steps (interleaved, so drifts in machine load hit
both; the order rotates every round), with a second copy of the eager loss as a control: its
ratio to the first is the noise floor of the run (1.00 on a quiet machine). The medians of the
per-step times of the blocks, the ratio and the control ratio are printed and, with ``--out``,
written as JSON.

    python -m benchmarks.cpu_head [--rounds 40] [--block 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks import losses
from benchmarks.losses import Case

CASE = Case("loss_head", batch=128, dim=784, dtype=torch.float32, mode="fwd+bwd")


def measure(rounds: int = 40, block: int = 20, warmup: int = 10) -> dict:
    """Median CPU seconds per step of each implementation over ``rounds`` interleaved blocks."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    sets = [losses.make_set(CASE, torch.device("cpu"), gen) for _ in range(2)]
    steps = {name: losses.step_fn(CASE, losses.forward_fn("loss_head", impl), sets)
             for name, impl in (("eager", "eager"), ("fastvae", "fastvae"), ("control", "eager"))}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        for _ in range(warmup):
            step()
    names = list(steps)
    for r in range(rounds):
        # Rotate the order every round: whichever block runs after another pays for the cache
        # state that one left (about 1-3% here), so no implementation may keep one position.
        for name in names[r % len(names):] + names[:r % len(names)]:
            step = steps[name]
            t0 = time.process_time()
            for _ in range(block):
                step()
            times[name].append((time.process_time() - t0) / block)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "case": {"batch": CASE.batch, "dim": CASE.dim, "latent": losses.LOSS_HEAD_LATENT,
                 "dtype": CASE.dtype_name, "mode": CASE.mode},
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "block": block,
        "eager_us": med["eager"] * 1e6,
        "fastvae_us": med["fastvae"] * 1e6,
        "ratio": med["fastvae"] / med["eager"],
        "control_ratio": med["control"] / med["eager"],
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="interleaved blocks per impl")
    parser.add_argument("--block", type=int, default=20, help="steps per block")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)
    res = measure(args.rounds, args.block)
    print(
        f"loss head fwd+bwd, B={CASE.batch} D={CASE.dim} L={losses.LOSS_HEAD_LATENT} fp32, "
        f"{res['threads']} thread, process CPU time: eager {res['eager_us']:.1f} us, fastvae "
        f"{res['fastvae_us']:.1f} us (medians of {args.rounds} blocks of {args.block}); "
        f"ratio {res['ratio']:.2f}x (control: eager against itself {res['control_ratio']:.2f}x)"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
