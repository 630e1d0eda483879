"""``nn.Module`` wrappers of the functional losses, for drop-in use in training code."""

from __future__ import annotations

import torch
from torch import nn

from fastvae import _checks
from fastvae import functional as F
from fastvae.reference import LIKELIHOODS, REDUCTIONS


def _check_options(likelihood=None, reduction=None, backend=None) -> None:
    """Constructor arguments fail at construction, not at the first call."""
    if likelihood is not None:
        _checks.choice("likelihood", likelihood, LIKELIHOODS)
    if reduction is not None:
        _checks.choice("reduction", reduction, REDUCTIONS)
    if backend is not None:
        _checks.choice("backend", backend, F.BACKENDS)


class ELBOLoss(nn.Module):
    """``ELBOLoss(beta, likelihood, reduction)(recon, x, mu, logvar)`` -> ``ELBO(loss, recon, kl)``.

    See :func:`fastvae.functional.elbo_loss` for shapes, units and errors; a bad ``beta``,
    ``likelihood``, ``reduction`` or ``backend`` raises ``ValueError`` here, at construction.
    """

    def __init__(
        self,
        beta: float = 1.0,
        likelihood: str = "bernoulli",
        reduction: str = "mean",
        backend: str | None = None,
    ):
        super().__init__()
        _checks.beta(beta)
        _check_options(likelihood, reduction, backend)
        self.beta, self.likelihood, self.reduction, self.backend = beta, likelihood, reduction, backend

    def forward(self, recon, x, mu, logvar, recon_logvar=None) -> F.ELBO:
        return F.elbo_loss(
            recon, x, mu, logvar, beta=self.beta, likelihood=self.likelihood,
            recon_logvar=recon_logvar, reduction=self.reduction, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"beta={self.beta}, likelihood={self.likelihood!r}, reduction={self.reduction!r}"


class ReconstructionLoss(nn.Module):
    """Module form of :func:`fastvae.functional.reconstruction_loss`."""

    def __init__(self, likelihood: str = "bernoulli", reduction: str = "mean", backend: str | None = None):
        super().__init__()
        _check_options(likelihood, reduction, backend)
        self.likelihood, self.reduction, self.backend = likelihood, reduction, backend

    def forward(self, recon, x, recon_logvar=None) -> torch.Tensor:
        return F.reconstruction_loss(
            recon, x, self.likelihood, recon_logvar=recon_logvar,
            reduction=self.reduction, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"likelihood={self.likelihood!r}, reduction={self.reduction!r}"


class GaussianKL(nn.Module):
    """Module form of :func:`fastvae.functional.gaussian_kl`."""

    def __init__(self, reduction: str = "mean", backend: str | None = None):
        super().__init__()
        _check_options(reduction=reduction, backend=backend)
        self.reduction, self.backend = reduction, backend

    def forward(self, mu, logvar) -> torch.Tensor:
        return F.gaussian_kl(mu, logvar, self.reduction, backend=self.backend)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
