"""Other people's VAE code, written out with its source and license, and fastvae's documented
swaps of it (the README's "Drop it into your VAE"): what :mod:`benchmarks.dropin` measures.

Each module holds one code base and exposes the same few names:

- ``VARIANTS``: variant name -> :class:`Variant` (``"original"`` is the code as published);
- ``build(variant, channels, side, latent, *, twin=False, backend=None)``: the variant's model
  for ``(channels, side, side)`` images and ``latent`` latent dims; ``twin`` shrinks every
  width to a few units while keeping the layers, so the model runs the same sequence of ops
  on tiny tensors (a CPU host-time figure, where a full-size model would time CPU compute);
- ``twin_image(channels, side)``: the ``(channels, side)`` of a twin's images;
- ``LR``: the learning rate its training script gives Adam;
- ``LATENT_LAYERS``: the names of the layers that output mu and logvar and of the layer that
  takes z (for replaying one variant's noise into another, :func:`benchmarks.dropin.check_step`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from torch import nn


class Variant(NamedTuple):
    """One variant of a code base.

    ``model``: the ``nn.Module`` class; ``batch_loss(model, x)``: the training step's loss for
    a batch (forward and loss, as the code's training loop computes it); ``head(model, mu,
    logvar, out, x) -> (z, loss)``: the same loss with the encoder and decoder cut out, given
    the latents and the decoder's last layer's output ``out`` (before the sigmoid where the
    original has one); ``model`` only lends its sampling method there.
    """

    model: type[nn.Module]
    batch_loss: Callable
    head: Callable
