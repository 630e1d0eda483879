"""Pure-PyTorch implementation of every fastvae op: the specification and the test oracle.

Every function here is differentiable through autograd (the Bernoulli on probabilities through a
small ``autograd.Function`` that states ``F.binary_cross_entropy``'s gradient). Inputs are
computed in float32 (float64 if any input is float64), and losses are returned in that
accumulation dtype; samples come back in the input dtype. Shapes: ``x`` and
``recon`` are ``(B, *feature_shape)``, ``mu`` and ``logvar`` ``(B, *latent_shape)``, and each
row (sample) is summed over all non-batch dims. Reductions carry torch's names and meanings
(:func:`reduce_rows`; :mod:`fastvae.conventions` states them). No argument checking happens
here: :mod:`fastvae.functional` checks before dispatching.

This module is the specification and the test oracle; the CPU path of the public API is
:mod:`fastvae.torch_backend`, a faster composition of the same math tested against it.

Sources of the math: Kingma & Welling, "Auto-Encoding Variational Bayes" (ICLR 2014),
eq. 10 and Appendix B (reparameterization, closed-form Gaussian KL); the Bernoulli and
Gaussian log-likelihoods are the standard densities, written in numerically stable forms.
"""

from __future__ import annotations

import math

import torch

# The conventions, re-exported: models and studies read them from here too.
from fastvae.conventions import (  # noqa: F401
    LIKELIHOODS,
    REDUCTIONS,
    accumulation_dtype,
    constant_count,
)

# phi(v) = exp(v) - 1 - v cancels catastrophically near v = 0; below this |v| a Taylor series is
# used instead (truncation error about 1e-10 relative at the switch, direct form < 1e-6 in fp32).
SERIES_CUTOFF = 0.5
LOG_2PI = math.log(2.0 * math.pi)
# F.binary_cross_entropy's constants: each log is clamped below at -100 (so p = 0 or 1 gives a
# finite loss of at most 100 nats per element), and its gradient (p - x) / (p (1 - p)) divides
# by at least 1e-12.
BCE_LOG_MIN = -100.0
BCE_GRAD_EPS = 1e-12


def reduce_rows(per_sample: torch.Tensor, reduction: str, numel: int) -> torch.Tensor:
    """Reduce a per-sample ``(B,)`` vector with torch's reduction names and meanings.

    "none" keeps it; "sum" adds; "mean" is torch's per-element mean, the sum divided by
    ``numel`` (the number of elements the loss was summed over, B x D or B x L, as in
    ``F.mse_loss``); "batchmean" is the sum divided by B (``F.kl_div``'s name for it: the
    per-sample loss averaged over the batch). A mean over nothing is NaN, like ``torch.mean``
    of an empty tensor.
    """
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    return total / (numel if reduction == "mean" else per_sample.shape[0])


def row_sums(elem: torch.Tensor) -> torch.Tensor:
    """``(B, *shape)`` -> ``(B,)``: each sample summed over all its non-batch dims."""
    return elem.reshape(elem.shape[0], math.prod(elem.shape[1:])).sum(dim=1)


def exp_minus_one_minus(v: torch.Tensor) -> torch.Tensor:
    """phi(v) = exp(v) - 1 - v, accurate near 0 (Taylor series to v^10 below SERIES_CUTOFF)."""
    small = v.abs() < SERIES_CUTOFF
    # Feed the series only small values so that its unused branch never overflows (inf * 0
    # in torch.where's backward would be NaN).
    s = torch.where(small, v, torch.zeros_like(v))
    poly = torch.full_like(s, 1.0 / math.factorial(10))
    for n in range(9, 1, -1):
        poly = poly * s + 1.0 / math.factorial(n)
    ev = torch.exp(v)
    # Beyond v = 64 the "- 1 - v" is below half an ulp of exp(v) even in float64; dropping it
    # keeps phi(+inf) = +inf instead of inf - inf = NaN.
    return torch.where(small, s * s * poly, torch.where(v > 64.0, ev, ev - 1.0 - v))


def gaussian_kl(
    mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "batchmean"
) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) in nats: 0.5 * sum_j (mu_j^2 + exp(lv_j) - 1 - lv_j).

    mu, logvar: ``(B, *latent_shape)``, summed over all non-batch dims. Returns ``(B,)`` for
    "none", a scalar otherwise (see :func:`reduce_rows`; "mean" divides by B x L), in float32
    (float64 for float64 inputs). Gradient: dmu = mu, dlogvar = 0.5 * (exp(logvar) - 1).
    Source: Kingma & Welling (2014), Appendix B.
    """
    acc = accumulation_dtype(mu.dtype, logvar.dtype)
    mu, logvar = mu.to(acc), logvar.to(acc)
    per_sample = 0.5 * row_sums(mu * mu + exp_minus_one_minus(logvar))
    return reduce_rows(per_sample, reduction, mu.numel())


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """z = mu + eps * exp(0.5 * logvar), eps ~ N(0, I).

    mu, logvar: ``(B, *latent_shape)``. Returns mu's shape for ``n_samples == 1``, else
    ``(K, *mu.shape)``, in mu's dtype. ``eps`` (same shape as the result) replaces the random
    draw, which lets the tests feed the kernel's noise through this specification.
    Source: Kingma & Welling (2014), section 2.4.
    """
    acc = accumulation_dtype(mu.dtype, logvar.dtype)
    shape = mu.shape if n_samples == 1 else (n_samples, *mu.shape)
    if eps is None:
        eps = torch.randn(shape, generator=generator, device=mu.device, dtype=acc)
    z = mu.to(acc) + eps.to(acc) * torch.exp(0.5 * logvar.to(acc))
    return z.to(mu.dtype)


def sample_and_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    reduction: str = "batchmean",
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(reparameterize(mu, logvar), gaussian_kl(mu, logvar, reduction))``."""
    z = reparameterize(mu, logvar, generator=generator, eps=eps)
    return z, gaussian_kl(mu, logvar, reduction)


class _BernoulliProbsNLL(torch.autograd.Function):
    """Elementwise -[x log p + (1 - x) log(1 - p)] with each log clamped below at -100, and
    ``F.binary_cross_entropy``'s gradients: d/dp = (p - x) / max(p (1 - p), 1e-12) (finite at
    p = 0 and 1, where the clamped loss's own derivative is not) and d/dx = -logit(p)."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(p, t)
        log_p = torch.log(p).clamp_min(BCE_LOG_MIN)
        log_q = torch.log1p(-p).clamp_min(BCE_LOG_MIN)
        return -(t * log_p + (1.0 - t) * log_q)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, t = ctx.saved_tensors
        dp = dt = None
        if ctx.needs_input_grad[0]:
            dp = grad * (p - t) / (p * (1.0 - p)).clamp_min(BCE_GRAD_EPS)
        if ctx.needs_input_grad[1]:
            dt = -grad * torch.logit(p)
        return dp, dt


def reconstruction_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    likelihood: str = "bernoulli",
    *,
    recon_logvar: torch.Tensor | float | None = None,
    full: bool = True,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """Negative log-likelihood of x under the decoder output, summed over each row, in nats.

    - "bernoulli": recon holds logits l; sum max(l, 0) - l*x + log(1 + exp(-|l|)); its autograd
      gradient is sigmoid(l) - x, exact at l = 0 too.
    - "bernoulli_probs": recon holds probabilities p in [0, 1];
      sum -[x max(log p, -100) + (1 - x) max(log(1 - p), -100)], ``F.binary_cross_entropy``'s
      values and gradients (see :class:`_BernoulliProbsNLL`).
    - "mse": sum (recon - x)^2 (the squared L2 error; not a normalized density).
    - "gaussian": recon is the mean m, recon_logvar the log-variance v (a tensor broadcastable
      to recon, or a float); sum 0.5 * (log(2 pi) + v + (x - m)^2 * exp(-v)), without the
      log(2 pi) term when ``full`` is False (``F.gaussian_nll_loss``'s ``full``).

    recon, x: ``(B, *feature_shape)``, any float dtypes (computed in float32, float64 if either
    is float64). Returns ``(B,)`` for "none", else a scalar (see :func:`reduce_rows`; "mean"
    divides by recon.numel()), in that accumulation dtype.
    """
    dtypes = [recon.dtype, x.dtype]
    if isinstance(recon_logvar, torch.Tensor):
        dtypes.append(recon_logvar.dtype)
    acc = accumulation_dtype(*dtypes)
    r, t = recon.to(acc), x.to(acc)
    if likelihood == "bernoulli":
        # max(l, 0) - l*x as l*(1 - x) or -l*x: a confidently wrong infinite logit gives +inf,
        # not inf - inf. Both where()s take their l >= 0 branch at l = 0, so autograd's
        # one-sided derivative there is the true one, sigmoid(0) - x.
        pos = r >= 0
        elem = (
            torch.where(pos, r * (1.0 - t), -r * t)
            + torch.log1p(torch.exp(torch.where(pos, -r, r)))
        )
    elif likelihood == "bernoulli_probs":
        elem = _BernoulliProbsNLL.apply(r, t)
    elif likelihood == "mse":
        elem = (r - t) ** 2
    else:
        v = recon_logvar.to(acc) if isinstance(recon_logvar, torch.Tensor) else recon_logvar
        inv_var = torch.exp(-v) if isinstance(v, torch.Tensor) else math.exp(-v)
        elem = 0.5 * ((LOG_2PI if full else 0.0) + v + (t - r) ** 2 * inv_var)
        elem = elem.expand(r.shape)  # a float v: elem has r's shape already
    return reduce_rows(row_sums(elem), reduction, recon.numel())


def elbo_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    beta: float = 1.0,
    likelihood: str = "bernoulli",
    recon_logvar: torch.Tensor | float | None = None,
    full: bool = True,
    reduction: str = "batchmean",
    kl_reduction: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(recon_loss + beta * kl, recon_loss, kl)``; the negative ELBO when beta = 1 and both
    terms are reduced alike. ``kl_reduction`` (default: ``reduction``) reduces the KL
    differently, for conventions that mix a per-element reconstruction mean with a per-sample
    KL (AntixK's VanillaVAE: "mean" and "batchmean")."""
    rec = reconstruction_loss(
        recon, x, likelihood, recon_logvar=recon_logvar, full=full, reduction=reduction
    )
    kl = gaussian_kl(mu, logvar, reduction if kl_reduction is None else kl_reduction)
    return rec + beta * kl, rec, kl
