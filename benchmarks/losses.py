"""The losses being compared, their inputs and their byte models.

Three implementations of each op:

- ``eager``: the usual few lines of PyTorch (``torch.randn_like`` reparameterization, the KL
  expression of Kingma & Welling's appendix B, ``F.binary_cross_entropy_with_logits`` /
  ``F.mse_loss`` with ``reduction="sum"``);
- ``compile``: ``torch.compile`` of exactly those eager functions;
- ``fastvae``: :func:`fastvae.sample_and_kl` and :func:`fastvae.reconstruction_loss`
  (backend "auto": the Triton kernels on CUDA, the PyTorch path of
  :mod:`fastvae.torch_backend` on the CPU).

Ops: ``latent`` (sample z and the summed KL from ``(B, L)`` mu and logvar), ``recon_bernoulli``
and ``recon_mse`` (summed loss of ``(B, D)`` decoder outputs), and ``loss_head`` (both, as one
VAE loss step: ``z, kl`` from mu and logvar, ``loss = recon + kl``; the decoder between z and
its output is left out). Backward is ``torch.autograd.grad`` with the incoming gradients made
in advance (a random dz for z, 1 for a loss), so nothing but the op itself runs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

import fastvae

OPS = ("latent", "recon_bernoulli", "recon_mse", "loss_head")
IMPLS = ("fastvae", "eager", "compile")
MODES = ("fwd", "fwd+bwd")
LOSS_HEAD_LATENT = 20  # L of the loss-head case (the MNIST VAE's)


@dataclass(frozen=True)
class Case:
    """One benchmark cell: ``dim`` is L for "latent", D for the others."""

    op: str
    batch: int
    dim: int
    dtype: torch.dtype
    mode: str

    @property
    def dtype_name(self) -> str:
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


# ------------------------------------------------------------------ the implementations


def eager_latent(mu, logvar):
    std = torch.exp(0.5 * logvar)
    z = mu + torch.randn_like(std) * std
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return z, kl


def eager_recon_bernoulli(recon, x):
    return F.binary_cross_entropy_with_logits(recon, x, reduction="sum")


def eager_recon_mse(recon, x):
    return F.mse_loss(recon, x, reduction="sum")


def eager_loss_head(mu, logvar, recon, x):
    z, kl = eager_latent(mu, logvar)
    return z, eager_recon_bernoulli(recon, x) + kl


def fastvae_latent(mu, logvar):
    z, kl = fastvae.sample_and_kl(mu, logvar, reduction="sum")
    return z, kl


def fastvae_recon_bernoulli(recon, x):
    return fastvae.reconstruction_loss(recon, x, "bernoulli", reduction="sum")


def fastvae_recon_mse(recon, x):
    return fastvae.reconstruction_loss(recon, x, "mse", reduction="sum")


def fastvae_loss_head(mu, logvar, recon, x):
    z, kl = fastvae.sample_and_kl(mu, logvar, reduction="sum")
    return z, fastvae.reconstruction_loss(recon, x, "bernoulli", reduction="sum") + kl


_EAGER = {
    "latent": eager_latent,
    "recon_bernoulli": eager_recon_bernoulli,
    "recon_mse": eager_recon_mse,
    "loss_head": eager_loss_head,
}
_FASTVAE = {
    "latent": fastvae_latent,
    "recon_bernoulli": fastvae_recon_bernoulli,
    "recon_mse": fastvae_recon_mse,
    "loss_head": fastvae_loss_head,
}
_ARGS = {
    "latent": ("mu", "logvar"),
    "recon_bernoulli": ("recon", "x"),
    "recon_mse": ("recon", "x"),
    "loss_head": ("mu", "logvar", "recon", "x"),
}
_WRT = {"latent": ("mu", "logvar"), "loss_head": ("mu", "logvar", "recon")}


def forward_fn(op: str, impl: str, compile_backend: str = "inductor") -> Callable:
    """The forward function of ``impl`` for ``op`` (a fresh ``torch.compile`` for "compile")."""
    if impl == "fastvae":
        return _FASTVAE[op]
    if impl == "eager":
        return _EAGER[op]
    return torch.compile(_EAGER[op], backend=compile_backend, dynamic=False)


# ------------------------------------------------------------------ inputs


def latent_dim(case: Case) -> int:
    return case.dim if case.op == "latent" else LOSS_HEAD_LATENT


def make_set(case: Case, device: torch.device,
             generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One set of inputs, random and never zeros: mu ~ N(0, 1), logvar ~ N(0, 0.5^2),
    decoder outputs ~ N(0, 2^2), targets ~ U(0, 1), dz ~ N(0, 1); a scalar 1 for a loss's
    incoming gradient. Inputs require grad for "fwd+bwd"."""

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator)).to(device=device,
                                                                     dtype=case.dtype)

    grad = case.mode == "fwd+bwd"
    s: dict[str, torch.Tensor] = {}
    if case.op in ("latent", "loss_head"):
        L = latent_dim(case)
        s["mu"] = randn(case.batch, L).requires_grad_(grad)
        s["logvar"] = randn(case.batch, L, scale=0.5).requires_grad_(grad)
        s["dz"] = randn(case.batch, L)
    if case.op != "latent":
        s["recon"] = randn(case.batch, case.dim, scale=2.0).requires_grad_(grad)
        x = torch.rand(case.batch, case.dim, generator=generator)
        s["x"] = x.to(device=device, dtype=case.dtype)
    s["one"] = torch.ones((), device=device, dtype=torch.float32)
    return s


def n_sets(case: Case, rotate_bytes: int, cap: int = 256) -> int:
    """Input sets to cycle through so that one round touches at least ``rotate_bytes``
    (twice the L2 cache on CUDA), at least 2, at most ``cap``."""
    return max(2, min(cap, math.ceil(rotate_bytes / bytes_moved(replace(case, mode="fwd")))))


# ------------------------------------------------------------------ one step


def step_fn(case: Case, fn: Callable, sets: list[dict[str, torch.Tensor]]) -> Callable[[], object]:
    """A closure running ``fn`` on the next input set (cycling), and for "fwd+bwd" its
    backward through ``torch.autograd.grad``; it returns what it computed."""
    names = _ARGS[case.op]
    wrt = _WRT.get(case.op, ("recon",))
    cycle = itertools.cycle(sets)

    def step():
        s = next(cycle)
        out = fn(*(s[n] for n in names))
        if case.mode == "fwd":
            return out
        if case.op == "latent" or case.op == "loss_head":
            z, loss = out
            outputs, grads = (loss, z), (s["one"].to(loss.dtype), s["dz"])
        else:
            outputs, grads = (out,), (s["one"].to(out.dtype),)
        return out, torch.autograd.grad(outputs, [s[n] for n in wrt], grads)

    return step


def inputs_of(case: Case, s: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [s[n] for n in _ARGS[case.op]]


# ------------------------------------------------------------------ byte model


def bytes_moved(case: Case) -> int:
    """The least traffic an implementation needs, in bytes (E = element size):

    - latent: fwd reads mu, logvar and writes z (3 B L E); backward reads mu, logvar, dz and
      writes dmu, dlogvar (5 B L E); fwd+bwd 8 B L E. eps is never read or written.
    - recon_*: fwd reads recon and x (2 B D E); fwd+bwd reads them once and writes the
      gradient once (3 B D E), as a loss that computes its gradient in the forward pass can.
    - loss_head: the sum of the two.

    Scalars (losses, seeds, incoming gradients) are left out.
    """
    elem = torch.empty((), dtype=case.dtype).element_size()
    bwd = case.mode == "fwd+bwd"
    n = 0
    if case.op in ("latent", "loss_head"):
        n += (8 if bwd else 3) * case.batch * latent_dim(case)
    if case.op != "latent":
        n += (3 if bwd else 2) * case.batch * case.dim
    return n * elem
