"""The "torch" backend (and "auto" on CPU tensors): every op as the fastest correct composition
of PyTorch operators.

:mod:`fastvae.reference` states the math in the plainest form and is the test oracle; this
module computes the same values with as few operator calls and autograd nodes as possible, so
that a CPU training step through fastvae is no slower than the hand-written loss it replaces
(``python -m benchmarks.cpu_head`` measures that). The tests hold both to the reference.

- Reconstruction terms go straight to torch's fused loss functions
  (``F.binary_cross_entropy_with_logits``, ``F.binary_cross_entropy``, ``F.mse_loss``) with the
  matching reduction: one operator forward, one backward. A scalar Gaussian log-variance is the
  squared error scaled, plus a constant: no ``B x D`` log-variance is ever made.
- Sampling and the KL are one ``autograd.Function``: forward draws eps from torch's generator
  (the reference's draw, so a seed gives the same z on both), backward is a handful of
  operators for both gradients instead of autograd's walk through a dozen nodes.

Differences from the reference, all at non-finite inputs: ``F.binary_cross_entropy_with_logits``
returns NaN for an infinite logit whose target is not 0 or 1 (the reference: +inf). Float32
KL terms exp(v) - 1 - v are evaluated in float64 (``expm1(v) - v``, error about 1e-16 absolute,
below float32's rounding of the result), the reference's series is kept for float64 inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastvae.conventions import accumulation_dtype, constant_count, divisor, nan_if_empty
from fastvae.reference import LOG_2PI, reduce_rows, row_sums
from fastvae.reference import gaussian_kl as gaussian_kl_reference

# likelihood -> torch's elementwise loss with the same value and gradient per element
_FUSED = {
    "bernoulli": F.binary_cross_entropy_with_logits,
    "bernoulli_probs": F.binary_cross_entropy,
    "mse": F.mse_loss,
}


_SCALARS: dict[tuple[float, torch.dtype], torch.Tensor] = {}


def _scalar(value: float, dtype: torch.dtype) -> torch.Tensor:
    """A 0-dim CPU tensor holding ``value``, made once: an operand that costs what a tensor
    operand costs (a Python float is wrapped into a new tensor on every call, several
    microseconds each on the CPU). Never written to. While torch.compile traces, a fresh
    tensor (a constant of the graph): the cache stays out of the traced code, where a
    ``functools.lru_cache`` would be ignored with a warning and a dict's update would be a
    side effect that a traced ``autograd.Function`` refuses."""
    if torch.compiler.is_compiling():
        return torch.tensor(value, dtype=dtype)
    t = _SCALARS.get((value, dtype))
    if t is None:
        t = _SCALARS[value, dtype] = torch.tensor(value, dtype=dtype)
    return t


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)  # Tensor.to costs ~2 us even as a no-op


def _row_weight(g: torch.Tensor, reduction: str, r: torch.Tensor) -> torch.Tensor:
    """A reduced loss's incoming gradient as a weight broadcastable to ``r``: per row for
    "none", the scalar divided by the reduction's divisor otherwise."""
    if reduction == "none":
        return g.reshape((-1,) + (1,) * (r.dim() - 1))
    div = divisor(reduction, r.shape[0], r.numel())
    return g if div == 1 else g / div


def _reduced(fn, r: torch.Tensor, t: torch.Tensor, reduction: str) -> torch.Tensor:
    """``fn(r, t)`` summed per row, reduced with fastvae's (torch's) reduction names."""
    if reduction in ("sum", "mean"):
        return fn(r, t, reduction=reduction)
    if reduction == "batchmean":
        return fn(r, t, reduction="sum") / r.shape[0]
    return row_sums(fn(r, t, reduction="none"))


def reconstruction_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    likelihood: str,
    recon_logvar: torch.Tensor | float | None,
    full: bool,
    reduction: str,
) -> torch.Tensor:
    """:func:`fastvae.reference.reconstruction_loss`, composed from torch's fused losses."""
    if recon_logvar is None and recon.dtype is x.dtype is torch.float32:  # the common case
        return _reduced(_FUSED[likelihood], recon, x, reduction)
    tensor_logvar = isinstance(recon_logvar, torch.Tensor)
    acc = accumulation_dtype(
        recon.dtype, x.dtype, *((recon_logvar.dtype,) if tensor_logvar else ())
    )
    r, t = _as(recon, acc), _as(x, acc)
    if likelihood != "gaussian":
        return _reduced(_FUSED[likelihood], r, t, reduction)
    const = LOG_2PI if full else 0.0
    if not tensor_logvar:
        # 0.5 * sum (v + c + (x - m)^2 e^-v) = 0.5 e^-v * sum (x - m)^2 + 0.5 (v + c) * count
        sq = _reduced(F.mse_loss, r, t, reduction)
        per_element = 0.5 * (recon_logvar + const)
        return 0.5 * math.exp(-recon_logvar) * sq + per_element * constant_count(reduction, r)
    v = _as(recon_logvar, acc)
    elem = 0.5 * (const + v + (t - r).square() * torch.exp(-v))
    return reduce_rows(row_sums(elem.expand(r.shape)), reduction, r.numel())


# ------------------------------------------------------------------ sampling and the KL


def _kl_and_var_minus_one(
    m: torch.Tensor, v: torch.Tensor, reduction: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reduced KL 0.5 * sum (m^2 + exp(v) - 1 - v), exp(v) - 1 (the KL's gradient in v,
    times 2) and std = exp(v / 2), from accumulation-dtype ``m``, ``v`` and in their dtype.

    For float32 inputs exp(v) is taken once in float64 and serves all three: exp(v) - 1 - v
    in float64 has an absolute error of about 1e-16 per element, far below float32's rounding
    of the result (the float32 form cancels near v = 0, where the reference switches to a
    series), and the sums run in float64; float64 inputs take the reference's series. The
    clamp keeps phi(+inf) = +inf, not inf - inf. (``torch.expm1`` is not vectorized on the
    CPU: several times slower than ``torch.exp``.)
    """
    if m.dtype == torch.float64:
        std = torch.exp(0.5 * v)
        return gaussian_kl_reference(m, v, reduction), torch.expm1(v), std
    v64 = v.double().clamp_max_(1e300)
    e64 = torch.exp(v64)
    std = e64.sqrt().to(v.dtype)
    var_minus_one = e64.sub_(_scalar(1.0, torch.float64))
    phi = var_minus_one - v64
    if reduction == "none":
        kl = row_sums(phi).add_(row_sums(m * m)).mul_(_scalar(0.5, torch.float64))
    else:
        div = divisor(reduction, m.shape[0], m.numel())
        m_flat = m.reshape(-1)
        kl = phi.sum().add_(torch.dot(m_flat, m_flat)).mul_(_scalar(0.5 / div, torch.float64))
        kl = nan_if_empty(kl, reduction, m.shape[0], m.numel())
    return kl.to(m.dtype), var_minus_one.to(m.dtype), std


class _GaussianKL(torch.autograd.Function):
    """KL(N(mu, e^lv) || N(0, I)), one node; backward dmu = w mu, dlv = 0.5 w (e^lv - 1)
    with the KL's incoming gradient w."""

    @staticmethod
    def forward(ctx, mu, logvar, reduction):
        acc = accumulation_dtype(mu.dtype, logvar.dtype)
        m, v = _as(mu, acc), _as(logvar, acc)
        kl, var_minus_one, _ = _kl_and_var_minus_one(m, v, reduction)
        ctx.save_for_backward(m, var_minus_one)
        ctx.reduction, ctx.dtypes = reduction, (mu.dtype, logvar.dtype)
        return kl

    @staticmethod
    def backward(ctx, g):
        m, var_minus_one = ctx.saved_tensors
        w = _row_weight(g, ctx.reduction, m)
        dmu = w * m if ctx.needs_input_grad[0] else None
        dlv = var_minus_one.mul(w).mul_(_scalar(0.5, m.dtype)) if ctx.needs_input_grad[1] else None
        return _as_input(dmu, ctx, 0), _as_input(dlv, ctx, 1), None


def _as_input(grad: torch.Tensor | None, ctx, i: int) -> torch.Tensor | None:
    """``grad`` in the dtype of the i-th input."""
    return None if grad is None else _as(grad, ctx.dtypes[i])


class _SampleAndKL(torch.autograd.Function):
    """z = mu + eps e^(lv/2) and the reduced KL, one node. Backward, with dz and the KL's
    weight w: dmu = dz + w mu, dlv = 0.5 (dz eps e^(lv/2) + w (e^lv - 1))."""

    @staticmethod
    def forward(ctx, mu, logvar, eps, reduction):
        acc = accumulation_dtype(mu.dtype, logvar.dtype)
        m, v = _as(mu, acc), _as(logvar, acc)
        kl, var_minus_one, std = _kl_and_var_minus_one(m, v, reduction)
        noise = eps.mul_(std)  # eps is this node's own draw
        ctx.save_for_backward(m, var_minus_one, noise)
        ctx.reduction, ctx.dtypes = reduction, (mu.dtype, logvar.dtype)
        ctx.set_materialize_grads(False)
        return _as(m + noise, mu.dtype), kl

    @staticmethod
    def backward(ctx, dz, g):
        m, var_minus_one, noise = ctx.saved_tensors
        half = _scalar(0.5, m.dtype)
        if g is None:
            if dz is None:
                return None, None, None, None
            dz = _as(dz, m.dtype)
            return _as_input(dz, ctx, 0), _as_input(dz.mul(noise).mul_(half), ctx, 1), None, None
        w = _row_weight(g, ctx.reduction, m)
        dlv = var_minus_one.mul(w)
        if dz is None:
            return _as_input(w * m, ctx, 0), _as_input(dlv.mul_(half), ctx, 1), None, None
        dz = _as(dz, m.dtype)
        dmu = torch.addcmul(dz, w, m)
        dlv = dlv.addcmul_(dz, noise).mul_(half)
        return _as_input(dmu, ctx, 0), _as_input(dlv, ctx, 1), None, None


def _eps(mu, logvar, n_samples, generator):
    acc = accumulation_dtype(mu.dtype, logvar.dtype)
    shape = mu.shape if n_samples == 1 else (n_samples, *mu.shape)
    return torch.randn(shape, generator=generator, device=mu.device, dtype=acc)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, reduction: str) -> torch.Tensor:
    """:func:`fastvae.reference.gaussian_kl`, one autograd node."""
    return _GaussianKL.apply(mu, logvar, reduction)


def reparameterize(mu, logvar, n_samples, generator) -> torch.Tensor:
    """:func:`fastvae.reference.reparameterize` (the same draw from ``generator``)."""
    acc = accumulation_dtype(mu.dtype, logvar.dtype)
    eps = _eps(mu, logvar, n_samples, generator)
    return _as(torch.addcmul(_as(mu, acc), eps, torch.exp(0.5 * _as(logvar, acc))), mu.dtype)


def sample_and_kl(mu, logvar, reduction, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fastvae.reference.sample_and_kl` (the same draw), one autograd node."""
    if generator is None and mu.dtype is logvar.dtype is torch.float32:  # the common case
        eps = torch.randn_like(mu)  # the same values as _eps's torch.randn, fewer arguments
    else:
        eps = _eps(mu, logvar, 1, generator)
    return _SampleAndKL.apply(mu, logvar, eps, reduction)
