"""Triton kernels of fastvae, installed as ``fastvae.kernels``.

Launchers take and return plain tensors; nothing here knows about autograd, models or data.
"""

from ._common import INTERPRETED
from .latent import sample_and_kl_bwd, sample_and_kl_fwd
from .recon import LIKELIHOOD_CODES, recon_loss_bwd, recon_loss_fwd

__all__ = [
    "INTERPRETED",
    "LIKELIHOOD_CODES",
    "recon_loss_bwd",
    "recon_loss_fwd",
    "sample_and_kl_bwd",
    "sample_and_kl_fwd",
]
