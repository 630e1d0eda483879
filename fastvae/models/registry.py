"""The model classes by the names a configuration and a checkpoint use.

:data:`MODELS` maps the names of ``--model`` to the VAE classes, :data:`AUTOENCODERS` the same
names to the deterministic autoencoders (``--autoencoder``), and :data:`CHECKPOINT_MODELS`
every class to the name a checkpoint records (:func:`model_name`, :func:`rebuild_model`).
"""

from __future__ import annotations

from typing import Any

from fastvae import _checks
from fastvae.models.autoencoder import ConvAutoencoder, MLPAutoencoder
from fastvae.models.base import VAE
from fastvae.models.conv import ConvVAE
from fastvae.models.mlp import MLPVAE

MODELS: dict[str, type[VAE]] = {"mlp": MLPVAE, "conv": ConvVAE}
AUTOENCODERS: dict[str, type[VAE]] = {"mlp": MLPAutoencoder, "conv": ConvAutoencoder}
CHECKPOINT_MODELS: dict[str, type[VAE]] = {
    **MODELS, **{f"{name}-ae": cls for name, cls in AUTOENCODERS.items()},
}


def model_name(model: VAE) -> str:
    """The :data:`CHECKPOINT_MODELS` key of ``model``'s class, or of the nearest registered
    class it derives from (what a checkpoint records, so :func:`rebuild_model` can rebuild
    it)."""
    for cls in type(model).__mro__:
        for name, registered in CHECKPOINT_MODELS.items():
            if cls is registered:
                return name
    raise ValueError(f"no model name registered for {type(model).__name__}")


def rebuild_model(name: str, config: dict[str, Any]) -> VAE:
    """``CHECKPOINT_MODELS[name](**config)``: the architecture of a checkpoint's
    ``model_name`` and ``model_config`` (checkpoints from before ``model_name`` existed hold
    an MLPVAE)."""
    _checks.choice("model_name", name, tuple(CHECKPOINT_MODELS))
    return CHECKPOINT_MODELS[name](**config)
