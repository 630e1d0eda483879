"""The calls whose host time :mod:`benchmarks.host` measures, as zero-argument steps.

Every step runs on CPU tensors of one :class:`Inputs` set; fastvae's calls take the Triton path
(``$FASTVAE_BACKEND`` is "triton" while :func:`benchmarks.host.measuring` is active, as a CUDA
tensor's "auto" would), so each launch goes through Triton's launch path to the fake driver
(:mod:`benchmarks.fake_cuda`). Reductions are "sum" throughout (pytorch/examples' VAE loss).

- :func:`h200_steps`: the calls of the H200 host measurements in
  ``benchmarks/results/h200-2026-12-04/`` (``host_per_call.txt``: a call per step, "fwd" with
  inputs that require grad, "fwd_bwd" ending in ``.backward()``; ``loss_heads.txt``: the loss
  head of :mod:`benchmarks.losses`, fwd+bwd through ``torch.autograd.grad`` of (loss, z) with a
  given dz).
- :func:`entry_point_steps`: one triple (fastvae, eager, floor) per public entry point, "fwd"
  and "fwd+bwd" (``torch.autograd.backward`` of the outputs, a given dz for z, leaves'
  ``.grad`` accumulated as in a training step). The floor (:class:`Floor`) is the least any
  op written as a Python ``torch.autograd.Function`` costs, as fastvae's ops are: the eager
  code's outputs allocated and one launch forward, the input gradients allocated and one
  launch backward, nothing checked or computed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import fastvae
from benchmarks import fake_cuda, losses
from benchmarks.fake_cuda import noop_kernel

Step = Callable[[], object]


@dataclass
class Inputs:
    """One set of inputs: recon logits and targets ``(B, D)``, mu and logvar ``(B, L)``
    (requiring grad), dz, and copies that do not require grad (``*_const``)."""

    recon: torch.Tensor
    x: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    dz: torch.Tensor
    one: torch.Tensor

    @classmethod
    def make(cls, B: int, D: int, L: int, seed: int = 0) -> "Inputs":
        g = torch.Generator().manual_seed(seed)
        return cls(
            recon=(2 * torch.randn(B, D, generator=g)).requires_grad_(),
            x=torch.rand(B, D, generator=g),
            mu=torch.randn(B, L, generator=g).requires_grad_(),
            logvar=(0.5 * torch.randn(B, L, generator=g)).requires_grad_(),
            dz=torch.randn(B, L, generator=g),
            one=torch.ones(()),
        )


# ------------------------------------------------------------------ the eager code


def eager_reparameterize(mu, logvar):
    std = torch.exp(0.5 * logvar)
    return mu + torch.randn_like(std) * std


def eager_kl(mu, logvar):
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def eager_sample_and_kl(mu, logvar):
    return eager_reparameterize(mu, logvar), eager_kl(mu, logvar)


def eager_recon(recon, x):
    return F.binary_cross_entropy_with_logits(recon, x, reduction="sum")


def eager_elbo(recon, x, mu, logvar):
    return eager_recon(recon, x) + eager_kl(mu, logvar)


# ------------------------------------------------------------------ the H200 measurements


def _no_grad(fn: Step) -> Step:
    def step():
        with torch.no_grad():
            return fn()

    return step


def _backward(fn: Step) -> Step:
    return lambda: fn().backward()


def h200_steps(s: Inputs) -> dict[str, Step]:
    """The calls of ``host_per_call.txt`` and ``loss_heads.txt``, by their names there."""
    recon, x, mu, lv = s.recon, s.x, s.mu, s.logvar
    shape = tuple(recon.shape)

    def recon_fwd():
        return fastvae.reconstruction_loss(recon, x, "bernoulli", reduction="sum")

    def bce_fwd():
        return eager_recon(recon, x)

    return {
        "torch_empty": lambda: torch.empty(shape, device=x.device),
        "torch_add": lambda: x.add(x),
        "triton_noop_launch": lambda: noop_kernel[(1,)](x),
        "bce_logits_fwd": bce_fwd,
        "bce_logits_fwd_bwd": _backward(bce_fwd),
        "eager_sample_kl_fwd": lambda: eager_sample_and_kl(mu, lv),
        "fastvae_recon_fwd": recon_fwd,
        "fastvae_recon_fwd_nograd": _no_grad(recon_fwd),
        "fastvae_recon_fwd_bwd": _backward(recon_fwd),
        "fastvae_sample_and_kl_fwd": lambda: fastvae.sample_and_kl(mu, lv, reduction="sum"),
        **_loss_head_steps(s),
    }


def _loss_head_steps(s: Inputs) -> dict[str, Step]:
    """:mod:`benchmarks.losses`' loss head (fastvae's sampler + recon against the eager code),
    exactly as ``benchmarks.gpu_check`` steps it."""
    out = {}
    B, D = s.recon.shape
    for mode in losses.MODES:
        case = losses.Case("loss_head", B, D, torch.float32, mode)
        grad = mode == "fwd+bwd"
        inputs = {"mu": s.mu.detach().requires_grad_(grad),
                  "logvar": s.logvar.detach().requires_grad_(grad),
                  "recon": s.recon.detach().requires_grad_(grad),
                  "x": s.x, "dz": s.dz, "one": s.one}
        for impl in ("fastvae", "eager"):
            forward = losses.forward_fn("loss_head", impl)
            out[f"loss_head_{mode}_{impl}"] = losses.step_fn(case, forward, [inputs])
    return out


# ------------------------------------------------------------------ one row per entry point


ENTRY_POINTS = ("reparameterize", "gaussian_kl", "sample_and_kl", "reconstruction_loss",
                "elbo_loss", "GaussianSampler", "ELBOLoss")


def _entry_points(s: Inputs) -> dict[str, tuple[Callable, Callable, tuple]]:
    """entry point -> (fastvae forward, eager forward, which inputs); each forward returns a
    tensor or a tuple whose first element may be z."""
    sampler = fastvae.GaussianSampler(reduction="sum")
    elbo = fastvae.ELBOLoss(likelihood="bernoulli", reduction="sum")
    latent, data, both = ("mu", "logvar"), ("recon", "x"), ("recon", "x", "mu", "logvar")
    return {
        "reparameterize": (fastvae.reparameterize, eager_reparameterize, latent),
        "gaussian_kl": (lambda m, v: fastvae.gaussian_kl(m, v, reduction="sum"), eager_kl, latent),
        "sample_and_kl": (lambda m, v: tuple(fastvae.sample_and_kl(m, v, reduction="sum")),
                          eager_sample_and_kl, latent),
        "reconstruction_loss": (
            lambda r, t: fastvae.reconstruction_loss(r, t, "bernoulli", reduction="sum"),
            eager_recon, data),
        "elbo_loss": (lambda r, t, m, v: fastvae.elbo_loss(r, t, m, v, reduction="sum").loss,
                      eager_elbo, both),
        "GaussianSampler": (lambda m, v: tuple(sampler(m, v)), eager_sample_and_kl, latent),
        "ELBOLoss": (lambda r, t, m, v: elbo(r, t, m, v).loss, eager_elbo, both),
    }


@functools.cache
def _noop_launch() -> Callable[[torch.Tensor], None]:
    """The floor's launch (compiled at its first use, under the fake driver): independent of
    the fastvae code estimated."""
    return fake_cuda.direct_noop_launcher(torch.empty(16))


class Floor(torch.autograd.Function):
    """An op with the eager code's outputs (``shapes``: one shape per output) that only
    allocates and launches: one no-op launch forward, one backward."""

    @staticmethod
    def forward(ctx, shapes, *inputs):
        ctx.inputs = inputs
        first = inputs[0]
        _noop_launch()(first)
        outs = tuple(first.new_empty(s) for s in shapes)
        return outs if len(outs) > 1 else outs[0]

    @staticmethod
    def backward(ctx, *grads):
        _noop_launch()(ctx.inputs[0])
        return (None, *(torch.empty_like(t) if need else None
                        for t, need in zip(ctx.inputs, ctx.needs_input_grad[1:])))


def floor_of(eager: Callable, args: tuple) -> Callable:
    """The :class:`Floor` op with the outputs of ``eager(*args)``."""
    with torch.no_grad():
        out = eager(*args)
    shapes = tuple(tuple(o.shape) for o in (out if isinstance(out, tuple) else (out,)))
    return lambda *a: Floor.apply(shapes, *a)


def _fwd_bwd(forward: Callable, args: tuple, dz: torch.Tensor) -> Step:
    """forward, then ``torch.autograd.backward`` of its outputs: z (2-D) receives dz, a loss
    the implicit 1 (as ``loss.backward()``)."""

    def step():
        out = forward(*args)
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(outs, [dz if o.dim() == 2 else None for o in outs])

    return step


def entry_point_steps(s: Inputs) -> dict[tuple[str, str, str], Step]:
    """(entry point, mode, "fastvae" | "eager" | "floor") -> step, for the modes "fwd" and
    "fwd+bwd"."""
    out = {}
    for name, (fast, eager, names) in _entry_points(s).items():
        args = tuple(getattr(s, n) for n in names)
        for impl, fn in (("fastvae", fast), ("eager", eager), ("floor", floor_of(eager, args))):
            out[(name, "fwd", impl)] = lambda fn=fn, args=args: fn(*args)
            out[(name, "fwd+bwd", impl)] = _fwd_bwd(fn, args, s.dz)
    return out
