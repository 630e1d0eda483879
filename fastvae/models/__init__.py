"""The VAEs, built on fastvae's fused public ops, and their training objectives.

- :mod:`fastvae.models.base`: :class:`VAE`, the base class (encoder, prior, decoder, loss);
- :mod:`fastvae.models.mlp`: :class:`MLPVAE`, the canonical MNIST VAE;
- :mod:`fastvae.models.conv`: :class:`ConvVAE`, layer sizes derived from the image shape;
- :mod:`fastvae.models.autoencoder`: the same networks as plain deterministic autoencoders;
- :mod:`fastvae.models.iwae`: the importance-weighted bound (log-weights, training objective);
- :mod:`fastvae.models.registry`: the classes by the names configurations and checkpoints use.
"""

from fastvae.models.autoencoder import Autoencoder, ConvAutoencoder, MLPAutoencoder
from fastvae.models.base import MODEL_LIKELIHOODS, VAE
from fastvae.models.conv import ConvVAE, default_channels
from fastvae.models.iwae import iwae_loss, log_importance_weights
from fastvae.models.mlp import MLPVAE
from fastvae.models.registry import (
    AUTOENCODERS,
    CHECKPOINT_MODELS,
    MODELS,
    model_name,
    rebuild_model,
)

__all__ = [
    "AUTOENCODERS", "Autoencoder", "CHECKPOINT_MODELS", "ConvAutoencoder", "ConvVAE",
    "MLPAutoencoder", "MLPVAE", "MODELS", "MODEL_LIKELIHOODS", "VAE",
    "default_channels", "iwae_loss", "log_importance_weights", "model_name", "rebuild_model",
]
