"""The importance-weighted bound of Burda, Grosse & Salakhutdinov ("Importance Weighted
Autoencoders", ICLR 2016), as log-weights and as a training objective.

    L_k(x) = logsumexp_i(log w_i) - log k,
    log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x),   z_1..z_k ~ q(z | x) i.i.d. (eq. 8)

L_1 is the ELBO (with a Monte Carlo KL); L_k increases with k towards log p(x). The k draws come
from :func:`fastvae.reparameterize` with ``n_samples=k`` (one fused launch on CUDA, noise
regenerated in backward) and log p(x | z) from :func:`fastvae.reconstruction_loss`.
"""

from __future__ import annotations

import math

import torch

from fastvae import _checks
from fastvae.functional import ELBO, reconstruction_loss, reparameterize
from fastvae.models.base import VAE
from fastvae.reference import REDUCTIONS, reduce_rows


def _log_weight_parts(
    model: VAE, x: torch.Tensor, k: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(-log p(x | z), log p(z) - log q(z | x))`` for k draws per image, each ``(k, B)``
    float64; the second from eps = (z - mu) / sigma as ``0.5 * sum_j (eps_j^2 - z_j^2 + logvar_j)``
    (the log(2 pi) terms cancel)."""
    _checks.positive_int("k", k)
    mu, logvar = model.encode(x)
    z = reparameterize(mu, logvar, n_samples=k, generator=generator, backend=model.backend)
    z = z.reshape(k, *mu.shape)
    b = x.shape[0]
    recon, recon_logvar = model.decode_params(z.reshape(k * b, -1))
    target = x.reshape(1, b, *recon.shape[1:]).expand(k, -1, *recon.shape[1:])
    target = target.reshape(recon.shape).to(recon.dtype)
    nll_x = reconstruction_loss(
        recon, target, model.likelihood, recon_logvar=recon_logvar, reduction="none",
        backend=model.backend,
    ).reshape(k, b)
    eps = (z - mu) * torch.exp(-0.5 * logvar)
    return nll_x.double(), 0.5 * (eps.square() - z.square() + logvar).double().sum(-1)


def log_importance_weights(
    model: VAE, x: torch.Tensor, k: int, *, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``log w = log p(x | z) + log p(z) - log q(z | x)`` for k draws z ~ q(z | x) per image.

    Args:
        model: a :class:`fastvae.models.VAE` (its encoder is the proposal).
        x: ``(B, *input_shape)`` data, as the model is trained on.
        k: draws per image.
        generator: seeds the draws (else torch's default generator).

    Returns:
        ``(k, B)`` float64 log-weights in nats, differentiable (call under ``torch.no_grad``
        to evaluate only).
    """
    nll_x, log_prior_ratio = _log_weight_parts(model, x, k, generator)
    return log_prior_ratio - nll_x


def iwae_loss(
    model: VAE, x: torch.Tensor, k: int, *, reduction: str = "batchmean",
    generator: torch.Generator | None = None,
) -> ELBO:
    """The IWAE training objective -L_k(x), differentiable (gradients through the
    reparameterized draws, Burda et al. 2016, section 3).

    Returns :class:`fastvae.ELBO` ``(loss, recon, kl)`` in nats, reduced as ``reduction``
    ("batchmean", the default: per image; "mean" divides by B x input_dim, torch's per-element
    mean): ``loss = -L_k``; ``recon`` the mean over the k draws of
    -log p(x | z_i); ``kl = loss - recon``, the rest of the bound (for k = 1 a one-sample
    estimate of the KL). Only ``loss`` is the objective.
    """
    _checks.choice("reduction", reduction, REDUCTIONS)
    nll_x, log_prior_ratio = _log_weight_parts(model, x, k, generator)
    logw = log_prior_ratio - nll_x
    loss = -(torch.logsumexp(logw, dim=0) - math.log(k)).float()
    recon = nll_x.mean(0).float()
    numel = x.shape[0] * model.input_dim
    return ELBO(*(reduce_rows(t, reduction, numel) for t in (loss, recon, loss - recon)))
