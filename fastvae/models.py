"""VAE models built on fastvae's fused losses.

:class:`MLPVAE` is the fully connected VAE of Kingma & Welling (2014) in the form of the
canonical PyTorch example (pytorch/examples ``vae/main.py``): 784-400-20 with ReLU, a Gaussian
encoder q(z | x) = N(mu, diag(exp(logvar))), a standard normal prior and a Bernoulli decoder.
Its :meth:`MLPVAE.loss` draws the sample and computes the KL in one fused launch
(:func:`fastvae.sample_and_kl`) and the reconstruction term in another
(:func:`fastvae.reconstruction_loss`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from fastvae import _checks
from fastvae.functional import ELBO, reconstruction_loss, reparameterize, sample_and_kl
from fastvae.reference import REDUCTIONS

# The decoders' likelihoods: "bernoulli" decoders output logits (the loss applies the sigmoid);
# "bernoulli_probs" is for models whose decoder ends in a sigmoid, not fastvae's.
MODEL_LIKELIHOODS = ("bernoulli", "mse", "gaussian")


class VAE(nn.Module):
    """Base class of fastvae's VAEs: a Gaussian encoder, a standard normal prior, a decoder.

    A subclass builds its two networks, calls :meth:`_set_spec` in its constructor, and
    implements :meth:`encode` (x -> mu, logvar) and :meth:`decode_params`
    (z -> recon, recon_logvar). Everything else is shared: :meth:`loss` (one fused
    :func:`fastvae.sample_and_kl` launch and one :func:`fastvae.reconstruction_loss`),
    :meth:`forward`, :meth:`decode`, :meth:`sample`, :meth:`reconstruct`,
    :meth:`to_data_space`.

    Attributes set by :meth:`_set_spec`: ``input_shape``, ``input_dim`` (its product),
    ``latent_dim``, ``likelihood``, ``backend`` and ``config``: the constructor arguments as a
    dict of plain Python values, so that ``type(model)(**model.config)`` rebuilds the
    architecture from a checkpoint.
    """

    def _set_spec(
        self, input_shape: Sequence[int], latent_dim: int, likelihood: str,
        backend: str | None, **config,
    ) -> None:
        """Check and store the arguments every VAE has; ``config`` holds the subclass's own."""
        input_shape = tuple(int(s) for s in input_shape)
        if not input_shape or any(s < 1 for s in input_shape):
            raise ValueError(f"input_shape must be non-empty with sizes >= 1, got {input_shape}")
        _checks.positive_int("latent_dim", latent_dim)
        _checks.choice("likelihood", likelihood, MODEL_LIKELIHOODS)
        self.config = {
            "input_shape": input_shape,
            **config,
            "latent_dim": int(latent_dim),
            "likelihood": likelihood,
            "backend": backend,
        }
        self.input_shape = input_shape
        self.input_dim = math.prod(input_shape)
        self.latent_dim = int(latent_dim)
        self.likelihood = likelihood
        self.backend = backend

    @property
    def decoder_channels(self) -> int:
        """Output values per pixel of the decoder's last layer: 2 (mean, log-variance) for the
        "gaussian" likelihood, else 1."""
        return 2 if self.likelihood == "gaussian" else 1

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters ``(mu, logvar)`` of q(z | x), each ``(B, L)``."""
        raise NotImplementedError

    def decode_params(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoder output ``(recon, recon_logvar)`` for ``z`` of shape ``(B, L)``."""
        raise NotImplementedError

    def _check_input(self, x, *, exact_shape: bool = False) -> None:
        """``x`` must be a tensor of B (>= 0) samples of ``input_dim`` values, in the
        parameters' dtype (any float dtype under ``torch.autocast``) and on their device. The
        samples may have any shape with ``input_dim`` values, or, with ``exact_shape`` (for
        networks that see the image's layout), only ``input_shape`` or ``(input_dim,)``.

        Raises:
            TypeError: x is not a tensor, or has another dtype than the parameters.
            ValueError: x has the wrong shape, or is on another device.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if exact_shape:
            flat = x.dim() == 2 and x.shape[1] == self.input_dim
            bad = not (flat or (x.dim() >= 2 and tuple(x.shape[1:]) == self.input_shape))
        else:
            bad = x.dim() < 2 or math.prod(x.shape[1:]) != self.input_dim
        if bad:
            raise ValueError(
                f"x must have shape (B, {', '.join(map(str, self.input_shape))}) or "
                f"(B, {self.input_dim}), got {tuple(x.shape)}"
            )
        p = next(self.parameters())
        if x.dtype != p.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"x must have the model's dtype: expected {p.dtype}, got {x.dtype} (convert "
                "the data, e.g. x.float(), or the model, e.g. model.double())"
            )
        if x.device != p.device:
            raise ValueError(
                f"x must be on the model's device: expected {p.device}, got {x.device}"
            )

    def decode(self, z: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Parameters of p(x | z) for latent codes ``z`` of shape ``(B, L)``.

        Returns:
            "bernoulli": logits, "mse": the mean; each one tensor ``(B, *input_shape)``.
            "gaussian": a tuple ``(mean, logvar)``, each ``(B, *input_shape)``.
            Use :meth:`decode_params` for one return type across likelihoods, or
            :meth:`to_data_space` for images.
        """
        recon, recon_logvar = self.decode_params(z)
        return (recon, recon_logvar) if self.likelihood == "gaussian" else recon

    def to_data_space(self, recon: torch.Tensor) -> torch.Tensor:
        """Images from the decoder's ``recon``: sigmoid of the logits for "bernoulli" (the
        Bernoulli mean, in [0, 1]), the mean itself otherwise (not clamped)."""
        return torch.sigmoid(recon) if self.likelihood == "bernoulli" else recon

    # ------------------------------------------------------------------ training

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Encode, draw one z ~ q(z | x) (reparameterized), decode.

        Returns:
            ``(recon, mu, logvar)``: ``recon`` as :meth:`decode` returns it (a tensor, or
            ``(mean, logvar)`` for "gaussian"), ``mu`` and ``logvar`` ``(B, L)``.
        """
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator=generator, backend=self.backend)
        return self.decode(z), mu, logvar

    def loss(
        self,
        x: torch.Tensor,
        beta: float = 1.0,
        reduction: str = "batchmean",
        generator: torch.Generator | None = None,
    ) -> ELBO:
        """The beta-VAE objective with a single-sample estimate of the reconstruction term.

        ``loss = recon + beta * kl`` where recon = -log p(x | z) for one z ~ q(z | x) and kl is
        the closed-form KL(q(z | x) || N(0, I)); the negative ELBO when beta = 1. Sampling and
        KL run as one fused op (:func:`fastvae.sample_and_kl`).

        Args:
            x: ``(B, *input_shape)`` float data ([0, 1] for "bernoulli"; binarized or not).
            beta: KL weight >= 0.
            reduction: "batchmean" (the per-image loss averaged over the batch: nats per
                image), "sum", "mean" (per element, torch's meaning: divided by
                B x input_dim; the KL by B x latent_dim), or "none" (per-sample ``(B,)``).
            generator: torch.Generator on x's device type for the sample (else torch's default).

        Returns:
            :class:`fastvae.ELBO` ``(loss, recon, kl)`` in nats, float32 (float64 for a
            float64 model), differentiable.
        """
        _checks.beta(beta)
        _checks.choice("reduction", reduction, REDUCTIONS)
        mu, logvar = self.encode(x)
        z, kl = sample_and_kl(
            mu, logvar, reduction=reduction, generator=generator, backend=self.backend
        )
        recon, recon_logvar = self.decode_params(z)
        target = x.reshape(recon.shape).to(recon.dtype)
        rec = reconstruction_loss(
            recon, target, self.likelihood, recon_logvar=recon_logvar,
            reduction=reduction, backend=self.backend,
        )
        return ELBO(rec + beta * kl, rec, kl)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images from the model: z ~ N(0, I), then :meth:`to_data_space` of the decoder.

        Returns ``(n, *input_shape)`` in the parameters' dtype and device: Bernoulli means in
        [0, 1] for "bernoulli", decoder means otherwise. No gradient.
        """
        _checks.positive_int("n", n)
        p = next(self.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype)
        recon, _ = self.decode_params(z)
        return self.to_data_space(recon)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstructions: decode the posterior mean mu(x), map to data space.

        Returns ``(B, *input_shape)`` like :meth:`sample`. No gradient.
        """
        mu, _ = self.encode(x)
        recon, _ = self.decode_params(mu)
        return self.to_data_space(recon)

    def extra_repr(self) -> str:
        return f"likelihood={self.likelihood!r}, latent_dim={self.latent_dim}"


class MLPVAE(VAE):
    """Fully connected VAE: ``D -> hidden_dims -> (mu, logvar) ; z -> reversed(hidden_dims) -> D``.

    With the defaults (input ``(1, 28, 28)``, ``hidden_dims=(400,)``, ``latent_dim=20``,
    Bernoulli likelihood) this is the MNIST VAE of pytorch/examples ``vae/main.py``: Linear +
    ReLU layers, a linear head for mu and logvar (one ``Linear(400, 2 * 20)``, the same map as
    that example's two ``Linear(400, 20)`` heads), and a linear output layer.

    Decoder outputs by likelihood (all of shape ``(B, *input_shape)``, the parameters' dtype):

    - ``"bernoulli"``: logits of p(x | z) (data-space image: their sigmoid);
    - ``"mse"``: the mean itself (the L2 loss of the seed reports);
    - ``"gaussian"``: a mean and a log-variance per pixel (the last layer has ``2 * D``
      outputs); :meth:`decode` returns them as a tuple ``(mean, logvar)``.

    The "gaussian" decoder's per-pixel variance is unconstrained. On MNIST, whose background
    pixels are exactly 0, the density is unbounded as those variances shrink: the negative
    ELBO goes below zero and keeps falling, and the mean samples get worse. That is the model,
    not a bug; prefer "bernoulli" (or "mse") for MNIST.

    Args:
        input_shape: shape of one sample, e.g. ``(1, 28, 28)``; D is its product.
        hidden_dims: widths of the encoder's hidden layers (the decoder mirrors them).
        latent_dim: L, the size of z.
        likelihood: "bernoulli", "mse" or "gaussian".
        backend: passed to the fastvae ops: "auto", "triton", "torch" or None
            (``$FASTVAE_BACKEND``, default "auto": Triton on CUDA tensors, reference on CPU).

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
    ):
        super().__init__()
        hidden_dims = tuple(int(h) for h in hidden_dims)
        if any(h < 1 for h in hidden_dims):
            raise ValueError(f"hidden_dims must all be >= 1, got {hidden_dims}")
        self._set_spec(input_shape, latent_dim, likelihood, backend, hidden_dims=hidden_dims)

        enc, width = [], self.input_dim
        for h in hidden_dims:
            enc += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.encoder = nn.Sequential(*enc)
        self.head = nn.Linear(width, 2 * self.latent_dim)  # -> [mu | logvar]

        dec, width = [], self.latent_dim
        for h in reversed(hidden_dims):
            dec += [nn.Linear(width, h), nn.ReLU()]
            width = h
        dec.append(nn.Linear(width, self.decoder_channels * self.input_dim))
        self.decoder = nn.Sequential(*dec)

    # ------------------------------------------------------------------ the two networks

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters of q(z | x).

        Args:
            x: ``(B, *input_shape)`` (or ``(B, D)``), floats in data space ([0, 1] for MNIST),
                in the parameters' dtype (any float dtype under ``torch.autocast``) and on
                their device. B = 0 is allowed (empty outputs).

        Returns:
            ``(mu, logvar)``, each ``(B, L)`` in the parameters' dtype; logvar is the natural
            log of the variance.

        Raises:
            TypeError: x is not a tensor, or has another dtype than the parameters.
            ValueError: x has the wrong shape, or is on another device.
        """
        self._check_input(x)
        h = self.encoder(x.reshape(x.shape[0], self.input_dim))
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar

    def decode_params(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoder output in a form uniform over likelihoods: ``(recon, recon_logvar)``.

        ``recon`` is ``(B, *input_shape)`` (logits, mean or Gaussian mean); ``recon_logvar`` is
        the per-pixel log-variance ``(B, *input_shape)`` for "gaussian" and None otherwise.
        Exactly the ``recon`` / ``recon_logvar`` arguments of :func:`fastvae.reconstruction_loss`.
        """
        out = self.decoder(z)
        shape = (z.shape[0], *self.input_shape)
        if self.likelihood == "gaussian":
            mean, logvar = out.chunk(2, dim=1)
            return mean.reshape(shape), logvar.reshape(shape)
        return out.reshape(shape), None
