"""Triton kernels of fastvae, installed as ``fastvae.kernels``.

Launchers take and return plain tensors; nothing here knows about autograd, models or data.
"""

from ._common import INTERPRETED
from .latent import sample_and_kl_bwd, sample_and_kl_fwd
from .recon import LIKELIHOOD_CODES, recon_loss_bwd, recon_loss_fwd, recon_loss_scale_grad
from .recon import grad_strides as recon_grad_strides

__all__ = [
    "INTERPRETED",
    "LIKELIHOOD_CODES",
    "recon_loss_bwd",
    "recon_loss_fwd",
    "recon_grad_strides",
    "recon_loss_scale_grad",
    "sample_and_kl_bwd",
    "sample_and_kl_fwd",
]
