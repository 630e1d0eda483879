"""Plain deterministic autoencoders with the VAEs' networks: the baseline of the "autoencoder
vs VAE" study (``fastvae experiment ae-vs-vae``).

:class:`MLPAutoencoder` and :class:`ConvAutoencoder` are :class:`fastvae.MLPVAE` and
:class:`fastvae.ConvVAE` with two changes (:class:`Autoencoder`): the encoder's head outputs
only a code ``z`` of ``latent_dim`` values (no log-variance), and the loss is the
reconstruction term of that code alone, ``-log p(x | z = enc(x))`` (Bernoulli cross-entropy,
squared error or Gaussian NLL, as the likelihood says), with no sampling and no KL term. The
rest of the interface is the VAE's: ``encode`` returns ``(z, None)``, and ``decode``,
``reconstruct``, ``sample`` (decodes z ~ N(0, I), a distribution the autoencoder was never
trained to decode), ``draw_data`` and training through ``fastvae train`` work
unchanged; the run's ``kl`` columns are 0 and its ``loss`` columns equal ``recon``.
"""

from __future__ import annotations

import torch
from torch import nn

from fastvae.models.conv import ConvVAE
from fastvae.models.mlp import MLPVAE


class Autoencoder:
    """What turns a VAE class into a deterministic autoencoder (a mixin placed before it)."""

    has_posterior = False

    def _deterministic_head(self) -> None:
        """Replace the VAE's ``[mu | logvar]`` head by a ``latent_dim`` code head."""
        self.head = nn.Linear(self.head.in_features, self.latent_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The code ``(z, None)``: ``z = head(features(x))`` of shape ``(B, L)``; there is no
        posterior variance. Checks and errors: :meth:`fastvae.VAE.encode`."""
        return self.head(self.features(x)), None

    def _latent_and_kl(self, z, logvar, reduction, generator):
        """The code itself and a KL term of 0 (``(B,)`` zeros for "none", else a scalar)."""
        shape = (z.shape[0],) if reduction == "none" else ()
        return z, z.new_zeros(shape, dtype=torch.promote_types(z.dtype, torch.float32))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Encode and decode: ``(recon, z, None)`` with ``recon`` as :meth:`decode` returns it
        (``generator`` is accepted for the VAE's interface and unused)."""
        z, _ = self.encode(x)
        return self.decode(z), z, None


class MLPAutoencoder(Autoencoder, MLPVAE):
    """:class:`fastvae.MLPVAE`'s networks (same arguments) as a deterministic autoencoder:
    ``D -> hidden_dims -> L ; L -> reversed(hidden_dims) -> D``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._deterministic_head()


class ConvAutoencoder(Autoencoder, ConvVAE):
    """:class:`fastvae.ConvVAE`'s networks (same arguments) as a deterministic autoencoder."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._deterministic_head()
