"""Public functional API: argument checks, then dispatch to the Triton ops or the reference.

Units are nats. Every loss is summed over each sample's non-batch dims first; ``reduction``
then gives per-sample values ``(B,)`` ("none"), their batch total ("sum") or their batch mean
("mean": the mean of per-sample sums, NOT a per-element mean).

Empty batch (B = 0): allowed everywhere, with the results of the reductions over nothing that
torch itself gives: "none" -> a ``(0,)`` tensor, "sum" -> 0, "mean" -> NaN (like
``torch.mean`` of an empty tensor: there is no per-sample average to report), and
``reparameterize`` -> z of shape ``(0, L)`` (``(K, 0, L)``); gradients are empty tensors.
No kernel is launched for an empty input. NaN and inf in the inputs propagate exactly as in
:mod:`fastvae.reference` on both backends (they are not errors: checking would cost a host
sync). Non-contiguous and expanded (stride 0) inputs are accepted on both backends; the Triton
path copies them to contiguous memory first.

``backend`` selects the implementation: "triton" (the fused kernels; CUDA tensors, or CPU
tensors when TRITON_INTERPRET=1 was set before import), "torch" (:mod:`fastvae.reference`),
or "auto" (Triton for CUDA tensors, the reference elsewhere). ``None`` reads the environment
variable ``FASTVAE_BACKEND``, default "auto".
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from fastvae import _checks, _ops, reference
from fastvae.kernels._common import check_launchable
from fastvae.reference import LIKELIHOODS, REDUCTIONS

BACKENDS = ("auto", "triton", "torch")


class ELBO(NamedTuple):
    """``loss = recon + beta * kl`` and its two parts, each reduced as asked (nats)."""

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


class SampleKL(NamedTuple):
    """A reparameterized sample ``z`` and the KL of its posterior to N(0, I) (nats)."""

    z: torch.Tensor
    kl: torch.Tensor


def resolve_backend(backend: str | None, t: torch.Tensor) -> str:
    """"triton" or "torch" for tensor ``t``, from ``backend`` or ``$FASTVAE_BACKEND``.

    Raises:
        ValueError: unknown backend name; "triton" asked for a tensor the kernels cannot take.
    """
    name = backend if backend is not None else os.environ.get("FASTVAE_BACKEND", "auto")
    _checks.choice("backend" if backend is not None else "FASTVAE_BACKEND", name, BACKENDS)
    if name == "auto":
        return "triton" if t.is_cuda else "torch"
    if name == "triton":
        check_launchable("input tensors (backend='triton')", t)
    return name


def _check_latent(mu, logvar) -> None:
    _checks.tensor("mu", mu, ndim=2)
    _checks.tensor("logvar", logvar, ndim=2)
    _checks.same("mu", mu, "logvar", logvar)


def _op_reduction(reduction: str) -> str:
    """The operator-level name of a public reduction (today's public "mean" is the batch mean
    of per-sample sums, the operators' "batchmean")."""
    return "batchmean" if reduction == "mean" else reduction


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Draw z = mu + eps * exp(0.5 * logvar) with eps ~ N(0, I) (Kingma & Welling 2014, 2.4).

    Args:
        mu, logvar: ``(B, L)`` posterior mean and log-variance, same float dtype and device.
        n_samples: K >= 1 draws per row.
        generator: torch.Generator on mu's device type; seeds the draw (else the default one,
            so ``torch.manual_seed`` makes runs reproducible).
        backend: "auto", "triton", "torch" or None (``$FASTVAE_BACKEND``).

    Returns:
        z in mu's dtype: ``(B, L)`` if n_samples == 1, else ``(K, B, L)`` (B may be 0). On
        the Triton path eps is drawn in-kernel (Philox) and regenerated in backward, never
        stored; gradients are dmu = dz, dlogvar = 0.5 * dz * eps * exp(0.5 * logvar).

    Raises:
        TypeError, ValueError: bad tensors (dtype, dims, shapes, devices), n_samples < 1,
            generator on another device type, unknown backend.
    """
    _check_latent(mu, logvar)
    _checks.positive_int("n_samples", n_samples)
    _checks.generator(generator, mu.device)
    if resolve_backend(backend, mu) == "torch":
        return reference.reparameterize(mu, logvar, n_samples=n_samples, generator=generator)
    z, _ = _ops.sample_and_kl(mu, logvar, generator, n_samples, True, False, "none")
    return z


def gaussian_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    reduction: str = "mean",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) = 0.5 * sum_j (mu_j^2 + exp(lv_j) - 1 - lv_j).

    Closed form from Kingma & Welling (2014), Appendix B; exp(lv) - 1 - lv is evaluated by a
    Taylor series for |lv| < 0.5, where the direct form cancels.

    Args:
        mu, logvar: ``(B, L)``, same float dtype and device.
        reduction: "none" -> ``(B,)``; "sum" -> batch total (0 for an empty batch); "mean"
            -> batch mean of the per-sample sums (NaN for an empty batch).

    Returns:
        nats, float32 (float64 for float64 inputs). Gradients: dmu = mu,
        dlogvar = 0.5 * (exp(logvar) - 1).

    Raises:
        TypeError, ValueError: as :func:`reparameterize`, plus an unknown reduction.
    """
    _check_latent(mu, logvar)
    _checks.choice("reduction", reduction, REDUCTIONS)
    if resolve_backend(backend, mu) == "torch":
        return reference.gaussian_kl(mu, logvar, reduction)
    _, kl = _ops.sample_and_kl(mu, logvar, None, 1, False, True, _op_reduction(reduction))
    return kl


def sample_and_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    reduction: str = "mean",
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> SampleKL:
    """The reparameterized sample and the Gaussian KL in ONE kernel launch (one in backward).

    Equivalent to ``(reparameterize(mu, logvar), gaussian_kl(mu, logvar, reduction))`` with
    half the memory traffic. A KL weight enters through autograd: for ``loss = rec + beta * kl``
    the single backward launch receives beta as the KL's grad_output and returns
    dmu = dz + beta * mu, dlogvar = 0.5 * dz * eps * exp(0.5 * lv) + 0.5 * beta * (exp(lv) - 1)
    (times 1/B for "mean").

    Args, returns and raises: as :func:`reparameterize` (n_samples is 1 here) and
    :func:`gaussian_kl`. Returns a :class:`SampleKL` ``(z, kl)``.
    """
    _check_latent(mu, logvar)
    _checks.choice("reduction", reduction, REDUCTIONS)
    _checks.generator(generator, mu.device)
    if resolve_backend(backend, mu) == "torch":
        return SampleKL(*reference.sample_and_kl(mu, logvar, reduction=reduction, generator=generator))
    z, kl = _ops.sample_and_kl(mu, logvar, generator, 1, True, True, _op_reduction(reduction))
    return SampleKL(z, kl)


def _check_recon(recon, x, likelihood, recon_logvar, reduction) -> None:
    _checks.tensor("recon", recon)
    _checks.tensor("x", x)
    _checks.same("recon", recon, "x", x)
    _checks.choice("likelihood", likelihood, LIKELIHOODS)
    _checks.choice("reduction", reduction, REDUCTIONS)
    if likelihood == "gaussian":
        if recon_logvar is None:
            raise ValueError("recon_logvar is required for likelihood='gaussian'")
        _checks.tensor("recon_logvar", recon_logvar)
        _checks.same("recon", recon, "recon_logvar", recon_logvar)
    elif recon_logvar is not None:
        raise ValueError(
            f"recon_logvar is only used by likelihood='gaussian', got likelihood={likelihood!r}"
        )


def reconstruction_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    likelihood: str = "bernoulli",
    *,
    recon_logvar: torch.Tensor | None = None,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """Negative log-likelihood -log p(x | z) of each sample, in nats.

    - "bernoulli": recon are logits l; sum max(l, 0) - l*x + log(1 + exp(-|l|))
      (binary cross-entropy with logits; x in [0, 1]). Gradient sigmoid(l) - x.
    - "mse": sum (recon - x)^2 (the L2 reconstruction term of the seed reports). Gradient
      2 (recon - x).
    - "gaussian": recon is the mean m and ``recon_logvar`` the log-variance v of a diagonal
      Gaussian; sum 0.5 * (log(2 pi) + v + (x - m)^2 exp(-v)). Gradients
      dm = (m - x) exp(-v), dv = 0.5 * (1 - (x - m)^2 exp(-v)).

    On the Triton path with "sum"/"mean", the gradient is computed in the forward pass (one
    read of recon and x, one write) and backward only scales it by grad_output; with "none" it
    is computed in backward. Nothing is written when no gradient is needed.

    Args:
        recon, x: ``(B, *feature_shape)``, same float dtype and device; each row is summed over
            all non-batch dims.
        recon_logvar: ``(B, *feature_shape)``; required for "gaussian", refused otherwise.
        reduction: "none" -> ``(B,)``; "sum" (0 for an empty batch); "mean" (batch mean of
            per-sample sums; NaN for an empty batch).

    Returns:
        nats, float32 (float64 for float64 inputs).

    Raises:
        TypeError, ValueError: non-tensor or non-float inputs, shape/dtype/device mismatch,
            unknown likelihood/reduction/backend, missing or unexpected recon_logvar.
    """
    _check_recon(recon, x, likelihood, recon_logvar, reduction)
    if resolve_backend(backend, recon) == "torch":
        return reference.reconstruction_loss(
            recon, x, likelihood, recon_logvar=recon_logvar, reduction=reduction
        )
    grad = torch.is_grad_enabled()
    grad_recon = grad and recon.requires_grad
    grad_logvar = grad and recon_logvar is not None and recon_logvar.requires_grad
    return _ops.reconstruction_loss(
        recon, x, recon_logvar, 0.0, likelihood, _op_reduction(reduction), grad_recon, grad_logvar
    )


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
    backend: str | None = None,
) -> ELBO:
    """The beta-VAE objective ``recon + beta * kl``: the negative ELBO when beta = 1.

    ``recon`` is the decoder output for a sample z of q(z | x) = N(mu, exp(logvar)); the KL is
    closed-form (Kingma & Welling 2014, eq. 10; beta: Higgins et al. 2017).

    Args:
        recon, x, likelihood, recon_logvar: as :func:`reconstruction_loss`.
        mu, logvar: ``(B, L)`` with the same batch size as x.
        beta: KL weight, a finite number >= 0.
        reduction: applied to all three terms, as in :func:`reconstruction_loss`.

    Returns:
        :class:`ELBO` ``(loss, recon, kl)``, nats, float32 (float64 for float64 inputs).

    Raises:
        TypeError, ValueError: as the two losses, a batch-size mismatch, or a bad beta.
    """
    _checks.beta(beta)
    _check_recon(recon, x, likelihood, recon_logvar, reduction)
    _check_latent(mu, logvar)
    if mu.shape[0] != x.shape[0]:
        raise ValueError(
            f"mu must have the batch size of x: expected {x.shape[0]}, got {mu.shape[0]}"
        )
    rec = reconstruction_loss(
        recon, x, likelihood, recon_logvar=recon_logvar, reduction=reduction, backend=backend
    )
    kl = gaussian_kl(mu, logvar, reduction, backend=backend)
    return ELBO(rec + beta * kl, rec, kl)
