"""Bytes per op in passes over the data, counted in Triton's interpreter.

    python -m benchmarks.traffic

For the reconstruction loss (each likelihood; reduction "sum", forward and backward with
grad_output 1, as in a training step) and ``sample_and_kl`` (reduction "sum", forward and
backward with dz and the KL's gradient), every byte the step moves is counted
(:func:`benchmarks.measure.count_bytes`: the Triton kernels' loads and stores under the
interpreter, plus the tensor arguments and outputs of every other op that runs a kernel) and
reported in passes over the data: bytes / (B x D x element size) (B x L for the latent op).
The byte models of :func:`benchmarks.losses.bytes_moved` say 3 passes for a Bernoulli or MSE
recon fwd+bwd (read recon, read x, write the gradient), 5 for the Gaussian (3 reads, 2 writes),
8 for the latent fwd+bwd. fp32 only (the interpreter has no bf16); the counts do not depend on
the size beyond the scalars, which are negligible at the sizes used.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the kernels run interpreted

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

import fastvae  # noqa: E402
from benchmarks import measure  # noqa: E402

MODEL_PASSES = {"recon_bernoulli": 3, "recon_mse": 3, "recon_gaussian": 5, "latent": 8}


def recon_passes(likelihood: str, B: int = 4, D: int = 4096) -> dict:
    """Passes over B x D of one reconstruction-loss step (fwd + bwd, grad_output 1)."""
    g = torch.Generator().manual_seed(0)
    recon = torch.randn(B, D, generator=g).requires_grad_()
    x = torch.rand(B, D, generator=g)
    logvar = torch.randn(B, D, generator=g).requires_grad_() if likelihood == "gaussian" else None
    wrt = [t for t in (recon, logvar) if t is not None]

    def step():
        loss = fastvae.reconstruction_loss(recon, x, likelihood, recon_logvar=logvar,
                                           reduction="sum", backend="triton")
        torch.autograd.grad(loss, wrt)

    step()  # first-use allocations (the ticket counters) are not a step's traffic
    return _result(f"recon_{likelihood}", measure.count_bytes(step), B * D * 4)


def latent_passes(B: int = 64, L: int = 20) -> dict:
    """Passes over B x L of one ``sample_and_kl`` step (fwd + bwd with dz and the KL's gradient)."""
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(B, L, generator=g).requires_grad_()
    logvar = torch.randn(B, L, generator=g).requires_grad_()
    dz = torch.randn(B, L, generator=g)

    def step():
        z, kl = fastvae.sample_and_kl(mu, logvar, reduction="sum", backend="triton")
        torch.autograd.grad([z, kl], [mu, logvar], [dz, torch.ones_like(kl)])

    step()  # first-use allocations (the ticket counters) are not a step's traffic
    return _result("latent", measure.count_bytes(step), B * L * 4)


def _result(op: str, traffic: measure.Traffic, pass_bytes: int) -> dict:
    return {
        "op": op,
        "passes": traffic.total / pass_bytes,
        "model_passes": MODEL_PASSES[op],
        "per_launch": [{"op": o, "passes": b / pass_bytes}
                       for o, b in zip(traffic.ops, traffic.bytes)],
    }


def run() -> list[dict]:
    return [recon_passes(lik) for lik in ("bernoulli", "mse", "gaussian")] + [latent_passes()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.traffic",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    results = run()
    if args.json:  # JSON alone, so that the output can be saved as a file
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        launches = ", ".join(f"{x['op']} {x['passes']:.2f}" for x in r["per_launch"]
                             if x["passes"] >= 0.01)
        print(f"{r['op']:<16} fwd+bwd: {r['passes']:.2f} passes (model {r['model_passes']}): "
              f"{launches}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
