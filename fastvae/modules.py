"""``nn.Module`` wrappers of the functional losses and of the fused sampler, for drop-in use."""

from __future__ import annotations

import torch
from torch import nn

from fastvae import _checks
from fastvae import functional as F
from fastvae.reference import LIKELIHOODS, REDUCTIONS


def _check_options(likelihood=None, reduction=None, backend=None, **reductions) -> None:
    """Constructor arguments fail at construction, not at the first call."""
    if likelihood is not None:
        _checks.choice("likelihood", likelihood, LIKELIHOODS)
    if reduction is not None:
        _checks.choice("reduction", reduction, REDUCTIONS)
    for name, value in reductions.items():
        if value is not None:
            _checks.choice(name, value, REDUCTIONS)
    if backend is not None:
        _checks.choice("backend", backend, F.BACKENDS)


class ELBOLoss(nn.Module):
    """``ELBOLoss(beta, likelihood, reduction)(recon, x, mu, logvar)`` -> ``ELBO(loss, recon, kl)``.

    See :func:`fastvae.functional.elbo_loss` for shapes, units, reductions (default
    "batchmean": nats per sample) and errors; a bad ``beta``, ``likelihood``, ``reduction``,
    ``kl_reduction`` or ``backend`` raises ``ValueError`` here, at construction.
    """

    def __init__(
        self,
        beta: float = 1.0,
        likelihood: str = "bernoulli",
        reduction: str = "batchmean",
        backend: str | None = None,
        *,
        full: bool = True,
        kl_reduction: str | None = None,
    ):
        super().__init__()
        _checks.finite_nonnegative("beta", beta)
        _check_options(likelihood, reduction, backend, kl_reduction=kl_reduction)
        self.beta, self.likelihood, self.reduction = beta, likelihood, reduction
        self.backend, self.full, self.kl_reduction = backend, full, kl_reduction

    def forward(self, recon, x, mu, logvar, recon_logvar=None) -> F.ELBO:
        return F.elbo_loss(
            recon, x, mu, logvar, beta=self.beta, likelihood=self.likelihood,
            recon_logvar=recon_logvar, full=self.full, reduction=self.reduction,
            kl_reduction=self.kl_reduction, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"beta={self.beta}, likelihood={self.likelihood!r}, reduction={self.reduction!r}"


class ReconstructionLoss(nn.Module):
    """Module form of :func:`fastvae.functional.reconstruction_loss`."""

    def __init__(
        self,
        likelihood: str = "bernoulli",
        reduction: str = "batchmean",
        backend: str | None = None,
        *,
        full: bool = True,
    ):
        super().__init__()
        _check_options(likelihood, reduction, backend)
        self.likelihood, self.reduction = likelihood, reduction
        self.backend, self.full = backend, full

    def forward(self, recon, x, recon_logvar=None) -> torch.Tensor:
        return F.reconstruction_loss(
            recon, x, self.likelihood, recon_logvar=recon_logvar, full=self.full,
            reduction=self.reduction, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"likelihood={self.likelihood!r}, reduction={self.reduction!r}"


class GaussianKL(nn.Module):
    """Module form of :func:`fastvae.functional.gaussian_kl`."""

    def __init__(self, reduction: str = "batchmean", backend: str | None = None):
        super().__init__()
        _check_options(reduction=reduction, backend=backend)
        self.reduction, self.backend = reduction, backend

    def forward(self, mu, logvar) -> torch.Tensor:
        return F.gaussian_kl(mu, logvar, self.reduction, backend=self.backend)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class GaussianSampler(nn.Module):
    """The fused sampler as a layer: ``forward(mu, logvar)`` -> ``SampleKL(z, kl)`` from one
    launch (:func:`fastvae.functional.sample_and_kl`; one launch in backward too).

    It replaces a model's reparameterization lines; the model hands ``kl`` on with its output
    and the loss adds it instead of recomputing it from mu and logvar (a second launch)::

        self.sample = fastvae.GaussianSampler(reduction="sum")   # in __init__
        z, kl = self.sample(mu, logvar)                          # in forward

    Args:
        reduction: of the KL, as in :func:`fastvae.functional.gaussian_kl` (default
            "batchmean").
        backend: "auto", "triton", "torch" or None (``$FASTVAE_BACKEND``).
    """

    def __init__(self, reduction: str = "batchmean", backend: str | None = None):
        super().__init__()
        _check_options(reduction=reduction, backend=backend)
        self.reduction, self.backend = reduction, backend

    def forward(self, mu, logvar, generator: torch.Generator | None = None) -> F.SampleKL:
        return F.sample_and_kl(
            mu, logvar, reduction=self.reduction, generator=generator, backend=self.backend
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
