"""The fully connected VAE of Kingma & Welling (2014) in the form of the canonical PyTorch
example (pytorch/examples ``vae/main.py``): 784-400-20 with ReLU, a Gaussian encoder
q(z | x) = N(mu, diag(exp(logvar))), a standard normal prior and a Bernoulli decoder.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fastvae.models.base import VAE


class MLPVAE(VAE):
    """Fully connected VAE: ``D -> hidden_dims -> (mu, logvar) ; z -> reversed(hidden_dims) -> D``.

    With the defaults (input ``(1, 28, 28)``, ``hidden_dims=(400,)``, ``latent_dim=20``,
    Bernoulli likelihood) this is the MNIST VAE of pytorch/examples ``vae/main.py``: Linear +
    ReLU layers, a linear head for mu and logvar (one ``Linear(400, 2 * 20)``, the same map as
    that example's two ``Linear(400, 20)`` heads), and a linear output layer.

    Decoder outputs by likelihood (all of shape ``(B, *input_shape)``, the parameters' dtype):

    - ``"bernoulli"``: logits of p(x | z) (data-space image: their sigmoid);
    - ``"mse"``: the mean itself (the squared error, an L2 loss);
    - ``"gaussian"``: a mean and a log-variance per pixel (the last layer has ``2 * D``
      outputs); :meth:`decode` returns them as a tuple ``(mean, logvar)``.

    The "gaussian" decoder's per-pixel log-variance is unconstrained unless ``logvar_floor``
    is given (see :class:`VAE`): without it, on MNIST, the negative ELBO goes below zero and
    keeps falling as the background pixels' variances shrink.

    Args:
        input_shape: shape of one sample, e.g. ``(1, 28, 28)``; D is its product.
        hidden_dims: widths of the encoder's hidden layers (the decoder mirrors them).
        latent_dim: L, the size of z.
        likelihood: "bernoulli", "mse" or "gaussian".
        backend: passed to the fastvae ops: "auto", "triton", "torch" or None
            (``$FASTVAE_BACKEND``, default "auto": Triton on CUDA tensors, the PyTorch path
            elsewhere).
        dropout: probability of ``nn.Dropout`` after every hidden layer's ReLU (encoder and
            decoder); 0 adds no module.
        logvar_floor: the "gaussian" decoder's log-variance floor, or None (see :class:`VAE`).

    Attributes:
        config: the constructor arguments as a dict (plain Python values), so that
            ``MLPVAE(**model.config)`` rebuilds the architecture from a checkpoint.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        hidden_dims: Sequence[int] = (400,),
        latent_dim: int = 20,
        likelihood: str = "bernoulli",
        backend: str | None = None,
        dropout: float = 0.0,
        logvar_floor: float | None = None,
    ):
        super().__init__()
        hidden_dims = tuple(int(h) for h in hidden_dims)
        if any(h < 1 for h in hidden_dims):
            raise ValueError(f"hidden_dims must all be >= 1, got {hidden_dims}")
        self._set_spec(input_shape, latent_dim, likelihood, backend, dropout, logvar_floor,
                       hidden_dims=hidden_dims)

        enc, width = [], self.input_dim
        for h in hidden_dims:
            enc += self._hidden(nn.Linear(width, h), nn.ReLU())
            width = h
        self.encoder = nn.Sequential(*enc)
        self.head = nn.Linear(width, 2 * self.latent_dim)  # -> [mu | logvar]

        dec, width = [], self.latent_dim
        for h in reversed(hidden_dims):
            dec += self._hidden(nn.Linear(width, h), nn.ReLU())
            width = h
        dec.append(nn.Linear(width, self.decoder_channels * self.input_dim))
        self.decoder = nn.Sequential(*dec)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last encoder hidden layer ``(B, hidden_dims[-1])`` (x itself, flattened, without
        hidden layers); ``x`` may have any shape ``(B, ...)`` with D values per sample (checks
        and errors: :meth:`VAE.encode`)."""
        self._check_input(x)
        return self.encoder(x.reshape(x.shape[0], self.input_dim))
