"""The base class of fastvae's VAEs: a Gaussian encoder, a standard normal prior, a decoder,
and the loss through the fused public ops (:func:`fastvae.sample_and_kl` draws the sample and
computes the KL in one launch, :func:`fastvae.reconstruction_loss` the reconstruction term).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastvae import _checks
from fastvae.functional import ELBO, reconstruction_loss, reparameterize, sample_and_kl
from fastvae.reference import LOG_2PI, REDUCTIONS

# The decoders' likelihoods: "bernoulli" decoders output logits (the loss applies the sigmoid);
# "bernoulli_probs" is for models whose decoder ends in a sigmoid, not fastvae's.
MODEL_LIKELIHOODS = ("bernoulli", "mse", "gaussian")


class VAE(nn.Module):
    """Base class of fastvae's VAEs: a Gaussian encoder, a standard normal prior, a decoder.

    A subclass builds three modules, calls :meth:`_set_spec` in its constructor, and
    implements :meth:`features` (x -> the encoder's last hidden activations): ``encoder``
    (used by ``features``), ``head`` (features -> ``[mu | logvar]``, ``2 * latent_dim``
    values) and ``decoder`` (z -> ``decoder_channels * input_dim`` values, flat or image
    shaped). Everything else is shared: :meth:`encode`, :meth:`decode_params`, :meth:`loss`
    (one fused :func:`fastvae.sample_and_kl` launch and one
    :func:`fastvae.reconstruction_loss`), :meth:`forward`, :meth:`decode`, :meth:`sample`,
    :meth:`reconstruct`, :meth:`to_data_space`, :meth:`draw_data`.

    Attributes set by :meth:`_set_spec`: ``input_shape``, ``input_dim`` (its product),
    ``latent_dim``, ``likelihood``, ``backend``, ``logvar_floor`` and ``config``: the
    constructor arguments as a dict of plain Python values, so that
    ``type(model)(**model.config)`` rebuilds the architecture from a checkpoint.

    The "gaussian" decoder's log-variance: with ``logvar_floor`` None it is the network's raw
    output, unbounded. On MNIST, whose background pixels are exactly 0, the density is then
    unbounded as those variances shrink: the negative ELBO goes below zero and keeps falling.
    With a number f it is ``f + softplus(raw - f)``: smooth, always above f (a variance floor
    exp(f)), and the identity to within 0.007 once raw > f + 5. Each pixel's -log p(x | z) is
    then at least ``0.5 * (log(2 pi) + f)`` nats, so the loss is bounded below by
    ``input_dim * 0.5 * (log(2 pi) + f)`` (:meth:`recon_lower_bound`).
    """

    has_posterior = True  # a Gaussian posterior and a KL term (a plain autoencoder has neither)

    def _set_spec(
        self, input_shape: Sequence[int], latent_dim: int, likelihood: str,
        backend: str | None, dropout: float = 0.0, logvar_floor: float | None = None, **config,
    ) -> None:
        """Check and store the arguments every VAE has; ``config`` holds the subclass's own."""
        input_shape = tuple(int(s) for s in input_shape)
        if not input_shape or any(s < 1 for s in input_shape):
            raise ValueError(f"input_shape must be non-empty with sizes >= 1, got {input_shape}")
        _checks.positive_int("latent_dim", latent_dim)
        _checks.choice("likelihood", likelihood, MODEL_LIKELIHOODS)
        _checks.probability("dropout", dropout)
        if logvar_floor is not None:
            if not (isinstance(logvar_floor, (int, float)) and math.isfinite(logvar_floor)):
                raise ValueError(
                    f"logvar_floor must be a finite number or None, got {logvar_floor!r}"
                )
            logvar_floor = float(logvar_floor)
        self.config = {
            "input_shape": input_shape,
            **config,
            "latent_dim": int(latent_dim),
            "likelihood": likelihood,
            "backend": backend,
            "dropout": float(dropout),
            "logvar_floor": logvar_floor,
        }
        self.input_shape = input_shape
        self.input_dim = math.prod(input_shape)
        self.latent_dim = int(latent_dim)
        self.likelihood = likelihood
        self.backend = backend
        self.dropout = float(dropout)
        self.logvar_floor = logvar_floor

    def _hidden(self, *layers: nn.Module) -> list[nn.Module]:
        """``layers`` (a hidden layer and its activation), then ``nn.Dropout(dropout)`` when
        dropout > 0 (no module otherwise, so the parameter names of a model without dropout
        stay those of checkpoints written before dropout existed)."""
        return [*layers, nn.Dropout(self.dropout)] if self.dropout > 0 else list(layers)

    def recon_lower_bound(self) -> float:
        """The least value -log p(x | z) can take per image, in nats: 0 for "bernoulli" and
        "mse"; ``input_dim * 0.5 * (log(2 pi) + logvar_floor)`` for "gaussian" with a floor,
        ``-inf`` without one."""
        if self.likelihood != "gaussian":
            return 0.0
        if self.logvar_floor is None:
            return -math.inf
        return self.input_dim * 0.5 * (LOG_2PI + self.logvar_floor)

    @property
    def decoder_channels(self) -> int:
        """Output values per pixel of the decoder's last layer: 2 (mean, log-variance) for the
        "gaussian" likelihood, else 1."""
        return 2 if self.likelihood == "gaussian" else 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden activations ``(B, F)`` for ``x`` (checked here)."""
        raise NotImplementedError

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
        mu, logvar = self.head(self.features(x)).chunk(2, dim=1)
        return mu, logvar

    def decode_params(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoder output in a form uniform over likelihoods: ``(recon, recon_logvar)``.

        ``recon`` is ``(B, *input_shape)`` (logits, mean or Gaussian mean); ``recon_logvar`` is
        the per-pixel log-variance ``(B, *input_shape)`` for "gaussian" (bounded below by
        ``logvar_floor`` when one is set; see the class doc) and None otherwise. Exactly the
        ``recon`` / ``recon_logvar`` arguments of :func:`fastvae.reconstruction_loss`.
        """
        out = self.decoder(z)
        shape = (z.shape[0], *self.input_shape)
        if self.likelihood != "gaussian":
            return out.reshape(shape), None
        mean, logvar = out.chunk(2, dim=1)
        if self.logvar_floor is not None:
            logvar = self.logvar_floor + F.softplus(logvar - self.logvar_floor)
        return mean.reshape(shape), logvar.reshape(shape)

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
        _checks.finite_nonnegative("beta", beta)
        _checks.choice("reduction", reduction, REDUCTIONS)
        mu, logvar = self.encode(x)
        z, kl = self._latent_and_kl(mu, logvar, reduction, generator)
        recon, recon_logvar = self.decode_params(z)
        target = x.reshape(recon.shape).to(recon.dtype)
        rec = reconstruction_loss(
            recon, target, self.likelihood, recon_logvar=recon_logvar,
            reduction=reduction, backend=self.backend,
        )
        return ELBO(rec + beta * kl, rec, kl)

    def _latent_and_kl(self, mu, logvar, reduction, generator):
        """The code the decoder sees in :meth:`loss` and its KL term: one fused
        :func:`fastvae.sample_and_kl` launch (a subclass without a posterior overrides it)."""
        return sample_and_kl(
            mu, logvar, reduction=reduction, generator=generator, backend=self.backend
        )

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, *, decoder_sample: bool = False,
    ) -> torch.Tensor:
        """``n`` images from the model: z ~ N(0, I), then the decoder.

        By default the decoder's mean (:meth:`to_data_space`: Bernoulli means in [0, 1] for
        "bernoulli", decoder means otherwise); with ``decoder_sample`` a draw x ~ p(x | z)
        (:meth:`draw_data`), the same z for the same generator state. Returns
        ``(n, *input_shape)`` in the parameters' dtype and device. No gradient.
        """
        _checks.positive_int("n", n)
        p = next(self.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype)
        recon, recon_logvar = self.decode_params(z)
        if decoder_sample:
            return self.draw_data(recon, recon_logvar, generator=generator)
        return self.to_data_space(recon)

    @torch.no_grad()
    def draw_data(
        self, recon: torch.Tensor, recon_logvar: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One draw x ~ p(x | z) from the decoder output ``(recon, recon_logvar)`` of
        :meth:`decode_params`, shape ``(B, *input_shape)``:

        - "bernoulli": pixels in {0, 1}, each Bernoulli(sigmoid(logits));
        - "gaussian": mean + exp(logvar / 2) * eps, eps ~ N(0, I) (not clamped);
        - "mse": the squared error is -log N(x; mean, 1/2) up to a constant, so mean +
          sqrt(1/2) * eps (a variance of 1/2 is large next to images in [0, 1]: such draws
          are mostly noise; that is what the "mse" likelihood says).
        """
        if self.likelihood == "bernoulli":
            return torch.bernoulli(torch.sigmoid(recon), generator=generator)
        eps = torch.randn(recon.shape, generator=generator, device=recon.device, dtype=recon.dtype)
        std = torch.exp(0.5 * recon_logvar) if self.likelihood == "gaussian" else math.sqrt(0.5)
        return recon + std * eps

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
