"""``nn.Module`` wrappers of the functional losses, for drop-in use in training code."""

from __future__ import annotations

import torch
from torch import nn

from fastvae import functional as F


class ELBOLoss(nn.Module):
    """``ELBOLoss(beta, likelihood, reduction)(recon, x, mu, logvar)`` -> ``ELBO(loss, recon, kl)``.

    See :func:`fastvae.functional.elbo_loss` for shapes, units and errors.
    """

    def __init__(
        self,
        beta: float = 1.0,
        likelihood: str = "bernoulli",
        reduction: str = "mean",
        backend: str | None = None,
    ):
        super().__init__()
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
        self.reduction, self.backend = reduction, backend

    def forward(self, mu, logvar) -> torch.Tensor:
        return F.gaussian_kl(mu, logvar, self.reduction, backend=self.backend)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
