"""A convolutional VAE whose layer sizes are derived from the image shape.

The encoder is a stack of stride-2 convolutions (kernel 4, padding 1, ReLU), each halving the
height and width (rounding down), followed by one linear map to ``[mu | logvar]``; the decoder
mirrors it with a linear map back to the last feature map and stride-2 transposed
convolutions, whose ``output_padding`` restores odd sizes exactly (7 -> 3 -> 7). This is the
DCGAN-style architecture used by most convolutional VAE reports, without normalization layers
(so that a model's output for one image never depends on the rest of its batch).

The likelihood and the loss come from :class:`fastvae.models.VAE`: sampling and KL through the
fused :func:`fastvae.sample_and_kl`, the reconstruction term through
:func:`fastvae.reconstruction_loss`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from fastvae.models.base import VAE

# Default widths: 32 channels after the first downsampling, doubling to at most 256.
BASE_CHANNELS, MAX_CHANNELS = 32, 256
# Default depth: downsample while the smaller side stays at least this large.
MIN_FEATURE_SIZE = 4


def default_channels(height: int, width: int) -> tuple[int, ...]:
    """Channel widths for an image of ``height x width``: one stride-2 layer per halving that
    keeps the smaller side >= ``MIN_FEATURE_SIZE`` (28 -> 14 -> 7: two layers; 128 -> 4: five),
    widths 32, 64, 128, 256, 256, ... At least one layer."""
    side, n = min(height, width), 0
    while side // 2 >= MIN_FEATURE_SIZE:
        side //= 2
        n += 1
    return tuple(min(BASE_CHANNELS * 2**i, MAX_CHANNELS) for i in range(max(n, 1)))


class ConvVAE(VAE):
    """Convolutional VAE for ``(C, H, W)`` images of any size.

    Encoder: ``len(channels)`` layers ``Conv2d(k=4, s=2, p=1) + ReLU`` (sizes H -> H // 2),
    then ``Linear(channels[-1] * h * w, 2 * latent_dim)`` for ``[mu | logvar]``.
    Decoder: ``Linear(latent_dim, channels[-1] * h * w) + ReLU``, then transposed convolutions
    back through the encoder's sizes; the last one outputs, per pixel and channel, the logits
    ("bernoulli"), the mean ("mse") or a mean and a log-variance ("gaussian": ``2 * C``
    channels, split into ``(mean, logvar)``). No activation on the output.

    Args:
        input_shape: ``(C, H, W)``, e.g. ``(1, 28, 28)`` for MNIST, ``(3, 128, 128)`` for
            Animal Faces. H and W need not be equal, even or powers of two.
        latent_dim: L, the size of z.
        likelihood: "bernoulli", "mse" or "gaussian".
        channels: widths of the encoder's conv layers (the decoder mirrors them); default
            :func:`default_channels` of H and W. Each layer halves H and W, which must stay >= 1.
        backend: passed to the fastvae ops, as for :class:`fastvae.MLPVAE`.
        dropout: probability of ``nn.Dropout`` after every hidden layer's ReLU (the encoder's
            convolutions, the decoder's linear map and hidden transposed convolutions); 0 adds
            no module.
        logvar_floor: the "gaussian" decoder's log-variance floor, or None (see
            :class:`fastvae.VAE`).

    Attributes:
        config: the constructor arguments (``channels`` resolved), so that
            ``ConvVAE(**model.config)`` rebuilds it.
        feature_sizes: the ``(H, W)`` of the input and of each encoder feature map.

    Raises:
        ValueError: input_shape not ``(C, H, W)``, a channel width < 1, too many layers for
            the image size, or a bad latent_dim / likelihood.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 20,
        likelihood: str = "bernoulli",
        channels: Sequence[int] | None = None,
        backend: str | None = None,
        dropout: float = 0.0,
        logvar_floor: float | None = None,
    ):
        super().__init__()
        if len(tuple(input_shape)) != 3:
            raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
        c, h, w = (int(s) for s in input_shape)
        channels = default_channels(h, w) if channels is None else tuple(int(k) for k in channels)
        if not channels or any(k < 1 for k in channels):
            raise ValueError(f"channels must be non-empty widths >= 1, got {channels}")
        sizes = [(h, w)]
        for _ in channels:
            sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
        if min(sizes[-1]) < 1:
            raise ValueError(
                f"{len(channels)} stride-2 layers (channels={channels}) shrink a {h}x{w} image "
                f"below 1 pixel; use fewer channels entries"
            )
        self._set_spec(input_shape, latent_dim, likelihood, backend, dropout, logvar_floor,
                       channels=channels)
        self.feature_sizes = tuple(sizes)
        flat_shape = (channels[-1], *sizes[-1])
        flat = math.prod(flat_shape)

        enc, width = [], c
        for k in channels:
            enc += self._hidden(nn.Conv2d(width, k, 4, stride=2, padding=1), nn.ReLU())
            width = k
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.head = nn.Linear(flat, 2 * self.latent_dim)  # -> [mu | logvar]

        dec = self._hidden(nn.Linear(self.latent_dim, flat), nn.ReLU())
        dec.append(nn.Unflatten(1, flat_shape))
        outs = list(reversed(channels[:-1])) + [self.decoder_channels * c]
        for i, k in enumerate(outs):
            target, source = sizes[-2 - i], sizes[-1 - i]
            # ConvTranspose2d(k=4, s=2, p=1) maps n to 2n; output_padding 1 gives 2n + 1.
            pad = (target[0] - 2 * source[0], target[1] - 2 * source[1])
            up = nn.ConvTranspose2d(width, k, 4, stride=2, padding=1, output_padding=pad)
            dec += self._hidden(up, nn.ReLU()) if i < len(outs) - 1 else [up]
            width = k
        self.decoder = nn.Sequential(*dec)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened last feature map ``(B, channels[-1] * h * w)`` for ``x`` of shape
        ``(B, C, H, W)`` (or ``(B, D)``); checks and errors as :meth:`fastvae.VAE.encode`."""
        self._check_input(x, exact_shape=True)
        return self.encoder(x.reshape(x.shape[0], *self.input_shape))
