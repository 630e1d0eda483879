"""Pure-PyTorch implementation of every fastvae op: the specification, the CPU path and the oracle.

Every function here is differentiable through ordinary autograd. Inputs are computed in float32
(float64 stays float64), and losses are returned in that accumulation dtype; samples come back
in the input dtype. Shapes follow DESIGN.md: ``x`` and ``recon`` are ``(B, *feature_shape)`` and
each row (sample) is summed over all non-batch dims; ``mu`` and ``logvar`` are ``(B, L)``.
No argument checking happens here: :mod:`fastvae.functional` checks before dispatching.

Sources of the math: Kingma & Welling, "Auto-Encoding Variational Bayes" (ICLR 2014),
eq. 10 and Appendix B (reparameterization, closed-form Gaussian KL); the Bernoulli and
Gaussian log-likelihoods are the standard densities, written in numerically stable forms.
"""

from __future__ import annotations

import math

import torch

LIKELIHOODS = ("bernoulli", "mse", "gaussian")
REDUCTIONS = ("none", "sum", "mean")

# phi(v) = exp(v) - 1 - v cancels catastrophically near v = 0; below this |v| a Taylor series is
# used instead (truncation error about 1e-10 relative at the switch, direct form < 1e-6 in fp32).
SERIES_CUTOFF = 0.5
_LOG_2PI = math.log(2.0 * math.pi)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed and reduced in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def reduce_rows(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce a per-sample ``(B,)`` vector: "none" keeps it, "sum" adds, "mean" divides by B.

    "mean" is the batch mean of per-sample sums (not a per-element mean); an empty batch gives
    NaN, as ``torch.mean`` of an empty tensor does.
    """
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.mean()


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


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) in nats: 0.5 * sum_j (mu_j^2 + exp(lv_j) - 1 - lv_j).

    mu, logvar: ``(B, L)``. Returns ``(B,)`` for "none", a scalar otherwise, in float32
    (float64 for float64 inputs). Gradient: dmu = mu, dlogvar = 0.5 * (exp(logvar) - 1).
    Source: Kingma & Welling (2014), Appendix B.
    """
    acc = accumulation_dtype(mu.dtype)
    mu, logvar = mu.to(acc), logvar.to(acc)
    per_sample = 0.5 * (mu * mu + exp_minus_one_minus(logvar)).sum(dim=1)
    return reduce_rows(per_sample, reduction)


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """z = mu + eps * exp(0.5 * logvar), eps ~ N(0, I).

    mu, logvar: ``(B, L)``. Returns ``(B, L)`` for ``n_samples == 1``, else ``(K, B, L)``, in
    the input dtype. ``eps`` (same shape as the result) replaces the random draw, which lets the
    tests feed the kernel's noise through this specification.
    Source: Kingma & Welling (2014), section 2.4.
    """
    acc = accumulation_dtype(mu.dtype)
    shape = mu.shape if n_samples == 1 else (n_samples, *mu.shape)
    if eps is None:
        eps = torch.randn(shape, generator=generator, device=mu.device, dtype=acc)
    z = mu.to(acc) + eps.to(acc) * torch.exp(0.5 * logvar.to(acc))
    return z.to(mu.dtype)


def sample_and_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    reduction: str = "mean",
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(reparameterize(mu, logvar), gaussian_kl(mu, logvar, reduction))``."""
    z = reparameterize(mu, logvar, generator=generator, eps=eps)
    return z, gaussian_kl(mu, logvar, reduction)


def reconstruction_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    likelihood: str = "bernoulli",
    *,
    recon_logvar: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Negative log-likelihood of x under the decoder output, summed over each row, in nats.

    - "bernoulli": recon holds logits l; sum max(l, 0) - l*x + log(1 + exp(-|l|)); its autograd
      gradient is sigmoid(l) - x, exact at l = 0 too.
    - "mse": sum (recon - x)^2 (the L2 loss of the seed reports; not a normalized density).
    - "gaussian": recon is the mean m, recon_logvar the log-variance v (same shape);
      sum 0.5 * (log(2 pi) + v + (x - m)^2 * exp(-v)).

    recon, x: ``(B, *feature_shape)``. Returns ``(B,)`` for "none", else a scalar, in float32
    (float64 for float64 inputs).
    """
    acc = accumulation_dtype(recon.dtype)
    r, t = recon.to(acc), x.to(acc)
    if likelihood == "bernoulli":
        # max(l, 0) - l*x as l*(1 - x) or -l*x: a confidently wrong infinite logit gives +inf,
        # not inf - inf. Both where()s take their l >= 0 branch at l = 0, so autograd's
        # one-sided derivative there is the true one, sigmoid(0) - x.
        pos = r >= 0
        elem = torch.where(pos, r * (1.0 - t), -r * t) + torch.log1p(torch.exp(torch.where(pos, -r, r)))
    elif likelihood == "mse":
        elem = (r - t) ** 2
    else:
        v = recon_logvar.to(acc)
        elem = 0.5 * (_LOG_2PI + v + (t - r) ** 2 * torch.exp(-v))
    per_sample = elem.reshape(elem.shape[0], math.prod(elem.shape[1:])).sum(dim=1)
    return reduce_rows(per_sample, reduction)


def elbo_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    beta: float = 1.0,
    likelihood: str = "bernoulli",
    recon_logvar: torch.Tensor | None = None,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(recon_loss + beta * kl, recon_loss, kl)``; the negative ELBO when beta = 1."""
    rec = reconstruction_loss(recon, x, likelihood, recon_logvar=recon_logvar, reduction=reduction)
    kl = gaussian_kl(mu, logvar, reduction)
    return rec + beta * kl, rec, kl
