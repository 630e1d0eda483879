"""Public functional API: argument checks, then dispatch to the Triton ops or the PyTorch path.

Units are nats. Every loss is summed over each sample's non-batch dims first; ``reduction``
then takes torch's names and meanings: "none" -> per-sample values ``(B,)``; "sum" -> their
total; "mean" -> torch's per-element mean (the total divided by the number of elements, so
``reconstruction_loss(r, x, "mse", reduction="mean") == F.mse_loss(r, x)``); "batchmean" ->
the total divided by B (``F.kl_div``'s name: the per-sample loss averaged over the batch,
nats per sample), the default everywhere.

Empty batch (B = 0): allowed everywhere, with the results of the reductions over nothing that
torch itself gives: "none" -> a ``(0,)`` tensor, "sum" -> 0, "mean" and "batchmean" -> NaN
(like ``torch.mean`` of an empty tensor), and ``reparameterize`` -> z of shape
``(0, *latent_shape)``; gradients are empty tensors. No kernel is launched for an empty input.
NaN and inf in the inputs propagate as in :mod:`fastvae.reference` on the Triton path; the
PyTorch path follows torch's own loss functions there (an infinite logit gives NaN in
``F.binary_cross_entropy_with_logits``). They are not errors: checking would cost a host sync.
Non-contiguous and expanded (stride 0) inputs are accepted on both backends.

Dtypes: ``recon`` and ``x`` may have different floating dtypes (a bf16 decoder output under
``torch.autocast`` and an fp32 target); everything is computed in float32 (float64 if an
input is float64). Integer and bool tensors are refused with a TypeError.

``backend`` selects the implementation: "triton" (the fused kernels; CUDA tensors, or CPU
tensors when TRITON_INTERPRET=1 was set before import), "torch" (:mod:`fastvae.torch_backend`,
the fastest correct composition of PyTorch operators, held to :mod:`fastvae.reference` by the
tests), or "auto" (Triton for CUDA tensors, "torch" elsewhere). ``None`` reads the
environment variable ``FASTVAE_BACKEND``, default "auto".
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import torch

from fastvae import _checks, torch_backend
from fastvae.conventions import LIKELIHOODS, REDUCTIONS
from fastvae.kernels._common import check_launchable
from fastvae.ops import elbo as elbo_op
from fastvae.ops import latent as latent_op
from fastvae.ops import recon as recon_op

BACKENDS = ("auto", "triton", "torch")


class ELBO(NamedTuple):
    """``loss = recon + beta * kl`` and its two parts, each reduced as asked (nats)."""

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


class SampleKL(NamedTuple):
    """A reparameterized sample ``z`` and the KL of its posterior to N(0, I) (nats)."""

    z: torch.Tensor
    kl: torch.Tensor


def resolve_backend(backend: str | None, t: torch.Tensor) -> str:
    """"triton" or "torch" for tensor ``t``, from ``backend`` or ``$FASTVAE_BACKEND``.

    Raises:
        ValueError: unknown backend name; "triton" asked for a tensor the kernels cannot take.
    """
    # The variable is read on every call (it may change at run time): about 1 us.
    name = backend if backend is not None else os.environ.get("FASTVAE_BACKEND", "auto")
    if name == "auto":
        return "triton" if t.is_cuda else "torch"
    if name == "torch":
        return name
    if name != "triton":
        _checks.choice("backend" if backend is not None else "FASTVAE_BACKEND", name, BACKENDS)
    check_launchable("input tensors (backend='triton')", t)
    return name


def _check_latent(mu, logvar) -> None:
    if _checks.plain_pair(mu, logvar, min_ndim=2):
        return
    _checks.tensor("mu", mu, min_ndim=2)
    _checks.tensor("logvar", logvar, min_ndim=2)
    _checks.same("mu", mu, "logvar", logvar)


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Draw z = mu + eps * exp(0.5 * logvar) with eps ~ N(0, I) (Kingma & Welling 2014, 2.4).

    Args:
        mu, logvar: ``(B, *latent_shape)`` posterior mean and log-variance (any shape with a
            batch dim first, e.g. ``(B, L)`` or a spatial ``(B, C, H, W)``), same float dtype
            and device.
        n_samples: K >= 1 draws per row.
        generator: torch.Generator on mu's device type; seeds the draw (else the default one,
            so ``torch.manual_seed`` makes runs reproducible).
        backend: "auto", "triton", "torch" or None (``$FASTVAE_BACKEND``).

    Returns:
        z in mu's dtype: mu's shape if n_samples == 1, else ``(K, *mu.shape)`` (B may be 0).
        On the Triton path eps is drawn in-kernel (Philox) and regenerated in backward, never
        stored; gradients are dmu = dz, dlogvar = 0.5 * dz * eps * exp(0.5 * logvar).

    Raises:
        TypeError, ValueError: bad tensors (dtype, dims, shapes, devices), n_samples < 1,
            generator on another device type, unknown backend.
    """
    _check_latent(mu, logvar)
    _checks.positive_int("n_samples", n_samples)
    _checks.generator(generator, mu.device)
    if resolve_backend(backend, mu) == "torch":
        return torch_backend.reparameterize(mu, logvar, n_samples, generator)
    z, _ = latent_op.sample_and_kl(mu, logvar, generator, n_samples, True, False, "none")
    return z


def gaussian_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    reduction: str = "batchmean",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) = 0.5 * sum_j (mu_j^2 + exp(lv_j) - 1 - lv_j).

    Closed form from Kingma & Welling (2014), Appendix B, summed over all non-batch dims;
    exp(lv) - 1 - lv is evaluated without cancellation near lv = 0.

    Args:
        mu, logvar: ``(B, *latent_shape)``, same float dtype and device.
        reduction: "batchmean" (default) -> the per-sample KL averaged over the batch
            (``F.kl_div(..., reduction="batchmean")``'s meaning); "sum" -> batch total;
            "mean" -> divided by B x L, the mean of
            ``torch.distributions.kl_divergence(q, N(0, 1))`` over all elements; "none" ->
            ``(B,)``. An empty batch gives 0 for "sum", NaN for the means; latents with no
            elements per row, ``(B, 0)``, give zeros (0 / B for "batchmean", NaN for "mean").

    Returns:
        nats, float32 (float64 for float64 inputs). Gradients: dmu = mu,
        dlogvar = 0.5 * (exp(logvar) - 1), times the reduction's 1/divisor.

    Raises:
        TypeError, ValueError: as :func:`reparameterize`, plus an unknown reduction.
    """
    _check_latent(mu, logvar)
    _checks.choice("reduction", reduction, REDUCTIONS)
    if resolve_backend(backend, mu) == "torch":
        return torch_backend.gaussian_kl(mu, logvar, reduction)
    _, kl = latent_op.sample_and_kl(mu, logvar, None, 1, False, True, reduction)
    return kl


def sample_and_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    reduction: str = "batchmean",
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> SampleKL:
    """The reparameterized sample and the Gaussian KL in ONE kernel launch (one in backward).

    Equivalent to ``(reparameterize(mu, logvar), gaussian_kl(mu, logvar, reduction))`` with
    half the memory traffic. A KL weight enters through autograd: for ``loss = rec + beta * kl``
    the single backward launch receives beta as the KL's grad_output and returns
    dmu = dz + beta * mu, dlogvar = 0.5 * dz * eps * exp(0.5 * lv) + 0.5 * beta * (exp(lv) - 1)
    (divided by the reduction's divisor). Inside a model whose ``forward`` should return
    ``(z, kl)``, :class:`fastvae.GaussianSampler` is the module form.

    Args, returns and raises: as :func:`reparameterize` (n_samples is 1 here) and
    :func:`gaussian_kl`. Returns a :class:`SampleKL` ``(z, kl)``.
    """
    _check_latent(mu, logvar)
    if reduction not in REDUCTIONS:
        _checks.choice("reduction", reduction, REDUCTIONS)
    if generator is not None:
        _checks.generator(generator, mu.device)
    if resolve_backend(backend, mu) == "torch":
        return SampleKL(*torch_backend.sample_and_kl(mu, logvar, reduction, generator))
    z, kl = latent_op.sample_and_kl(mu, logvar, generator, 1, True, True, reduction)
    return SampleKL(z, kl)


def _check_recon(recon, x, likelihood, recon_logvar, full, reduction) -> None:
    if not _checks.plain_pair(recon, x, min_ndim=1, same_dtype=False):
        _checks.tensor("recon", recon)
        _checks.tensor("x", x)
        _checks.same("recon", recon, "x", x, dtype=False)
    if likelihood not in LIKELIHOODS:
        _checks.choice("likelihood", likelihood, LIKELIHOODS)
    if reduction not in REDUCTIONS:
        _checks.choice("reduction", reduction, REDUCTIONS)
    if full is True and recon_logvar is None and likelihood != "gaussian":
        if likelihood == "bernoulli":
            _warn_if_probabilities(recon)
        return
    if not isinstance(full, bool):
        raise TypeError(f"full must be a bool, got {type(full).__name__}")
    if likelihood == "gaussian":
        if recon_logvar is None:
            raise ValueError(
                "recon_logvar is required for likelihood='gaussian' (a tensor broadcastable to "
                "recon, or a float for a fixed variance, e.g. 0.0 for unit variance)"
            )
        if isinstance(recon_logvar, torch.Tensor):
            _checks.tensor("recon_logvar", recon_logvar, min_ndim=0)
            _checks.broadcastable("recon_logvar", recon_logvar, "recon", recon)
        else:
            _checks.real("recon_logvar", recon_logvar)
    else:
        if recon_logvar is not None:
            raise ValueError(
                f"recon_logvar is only used by likelihood='gaussian', got likelihood={likelihood!r}"
            )
        if not full:
            raise ValueError(
                f"full=False (drop the log(2 pi) constant) is only used by likelihood='gaussian', "
                f"got likelihood={likelihood!r}"
            )


# Autograd node class -> "made by torch.sigmoid". ``Node.name()`` builds a new string at every
# call; its answer is the same for every node of one class (each generated node, and each custom
# Function's backward, has its own class), so it is asked once per class.
_SIGMOID_NODE: dict[type, bool] = {}


def _warn_if_probabilities(recon: torch.Tensor) -> None:
    """A sigmoid's output passed as logits (a decoder that kept its ``torch.sigmoid``) trains
    without error to a wrong model; say so. The test reads only the autograd node that made
    ``recon`` (no data, no host sync) and is skipped while torch.compile traces."""
    if torch.compiler.is_compiling():
        return
    node = recon.grad_fn
    if node is None:
        return
    sigmoid = _SIGMOID_NODE.get(type(node))
    if sigmoid is None:
        sigmoid = _SIGMOID_NODE[type(node)] = node.name() == "SigmoidBackward0"
    if sigmoid:
        warnings.warn(
            "recon was produced by torch.sigmoid, but likelihood='bernoulli' takes logits: pass "
            "the decoder's output before the sigmoid (more accurate), or keep the sigmoid and use "
            "likelihood='bernoulli_probs' (F.binary_cross_entropy's semantics)",
            stacklevel=3,
        )


def _logvar_args(recon_logvar) -> tuple[torch.Tensor | None, float]:
    """The operators' (recon_logvar tensor or None, logvar_value float) for the public
    argument: a tensor, or a Python float for every element (0.0 when there is none)."""
    if recon_logvar is None or isinstance(recon_logvar, torch.Tensor):
        return recon_logvar, 0.0
    return None, float(recon_logvar)


def _grads_needed(recon, logvar) -> tuple[bool, bool]:
    """Which gradients the forward kernel should write: none under ``torch.no_grad()``."""
    if not torch.is_grad_enabled():
        return False, False
    return recon.requires_grad, logvar is not None and logvar.requires_grad


def reconstruction_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    likelihood: str = "bernoulli",
    *,
    recon_logvar: torch.Tensor | float | None = None,
    full: bool = True,
    reduction: str = "batchmean",
    backend: str | None = None,
) -> torch.Tensor:
    """Negative log-likelihood -log p(x | z) of each sample, in nats.

    - "bernoulli": recon are logits l; sum max(l, 0) - l*x + log(1 + exp(-|l|)), the values
      and gradients of ``F.binary_cross_entropy_with_logits`` (x in [0, 1]). Gradient
      sigmoid(l) - x. Prefer it: it is exact where probabilities round to 0 or 1.
    - "bernoulli_probs": recon are probabilities p in [0, 1] (a decoder ending in a sigmoid);
      ``F.binary_cross_entropy``'s values and gradients: each log clamped below at -100,
      gradient (p - x) / max(p (1 - p), 1e-12). Values outside [0, 1] raise on the PyTorch
      path (torch's own check) and are not checked on the Triton path (a check would read
      the data and sync).
    - "mse": sum (recon - x)^2 (``F.mse_loss``'s terms). Gradient 2 (recon - x).
    - "gaussian": recon is the mean m, ``recon_logvar`` the log-variance v of a diagonal
      Gaussian; sum 0.5 * (log(2 pi) + v + (x - m)^2 exp(-v)) (``F.gaussian_nll_loss`` with
      var = exp(v), ``full=True``). With ``full=False`` the log(2 pi) term is left out, so
      ``recon_logvar=0.0, full=False`` is 0.5 * sum (x - m)^2. Gradients
      dm = (m - x) exp(-v), dv = 0.5 * (1 - (x - m)^2 exp(-v)).

    On the Triton path with a scalar reduction, the gradient is computed in the forward pass
    (one read of recon and x, one write) and backward only scales it by grad_output; with
    "none" it is computed in backward. Nothing is written when no gradient is needed.

    Args:
        recon, x: ``(B, *feature_shape)``, floating dtypes (they may differ: computed in
            float32, float64 if either is float64), same device; each row is summed over all
            non-batch dims.
        recon_logvar: for "gaussian" only: a float tensor broadcastable to recon (e.g.
            ``(B, *feature_shape)``, a learned ``(*feature_shape)`` or a scalar tensor), or a
            Python float (a fixed variance); never expanded to B x D on the PyTorch path.
        full: for "gaussian": include the 0.5 log(2 pi) per element (default, a true NLL).
        reduction: "batchmean" (default: nats per sample, averaged over the batch), "sum",
            "mean" (torch's per-element mean: equals ``F.mse_loss(r, x)``,
            ``F.binary_cross_entropy_with_logits(r, x)``, ``F.binary_cross_entropy(p, x)``),
            "none" -> ``(B,)``. An empty batch gives 0 for "sum", NaN for the means.

    Returns:
        nats, float32 (float64 for float64 inputs).

    Warns:
        UserWarning: "bernoulli" given the output of ``torch.sigmoid`` (probabilities taken as
            logits), read from the autograd graph without touching the data.

    Raises:
        TypeError: non-tensor or non-float (integer, bool) inputs, a non-bool ``full``.
        ValueError: shape or device mismatch, unknown likelihood/reduction/backend, a missing
            or unexpected recon_logvar, a recon_logvar that does not broadcast to recon,
            ``full=False`` for a likelihood other than "gaussian".
    """
    _check_recon(recon, x, likelihood, recon_logvar, full, reduction)
    if resolve_backend(backend, recon) == "torch":
        return torch_backend.reconstruction_loss(
            recon, x, likelihood, recon_logvar, full, reduction
        )
    logvar, logvar_value = _logvar_args(recon_logvar)
    options = recon_op.Options(
        logvar_value, likelihood, reduction, full, *_grads_needed(recon, logvar)
    )
    return recon_op.reconstruction_loss(recon, x, logvar, options)


def elbo_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    beta: float = 1.0,
    likelihood: str = "bernoulli",
    recon_logvar: torch.Tensor | float | None = None,
    full: bool = True,
    reduction: str = "batchmean",
    kl_reduction: str | None = None,
    backend: str | None = None,
) -> ELBO:
    """The beta-VAE objective ``recon + beta * kl``: the negative ELBO when beta = 1.

    ``recon`` is the decoder output for a sample z of q(z | x) = N(mu, exp(logvar)); the KL is
    closed-form (Kingma & Welling 2014, eq. 10; beta: Higgins et al. 2017).

    Args:
        recon, x, likelihood, recon_logvar, full: as :func:`reconstruction_loss`.
        mu, logvar: ``(B, *latent_shape)`` with the same batch size as x.
        beta: KL weight, a finite number >= 0.
        reduction: of the reconstruction term, as in :func:`reconstruction_loss`; of the KL
            too unless ``kl_reduction`` is given.
        kl_reduction: the KL's reduction when it differs (AntixK's VanillaVAE: a per-element
            "mean" reconstruction with a "batchmean" KL); None -> ``reduction``.

    Returns:
        :class:`ELBO` ``(loss, recon, kl)``, nats, float32 (float64 for float64 inputs).

    Raises:
        TypeError, ValueError: as the two losses, a batch-size mismatch, or a bad beta.
    """
    _checks.finite_nonnegative("beta", beta)
    _check_recon(recon, x, likelihood, recon_logvar, full, reduction)
    _check_latent(mu, logvar)
    kl_reduction = reduction if kl_reduction is None else kl_reduction
    _checks.choice("kl_reduction", kl_reduction, REDUCTIONS)
    if mu.shape[0] != x.shape[0]:
        raise ValueError(
            f"mu must have the batch size of x: expected {x.shape[0]}, got {mu.shape[0]}"
        )
    if mu.device != x.device:
        raise ValueError(f"mu must be on the device of x: expected {x.device}, got {mu.device}")
    if resolve_backend(backend, recon) == "torch":
        rec = torch_backend.reconstruction_loss(recon, x, likelihood, recon_logvar, full, reduction)
        kl = torch_backend.gaussian_kl(mu, logvar, kl_reduction)
        return ELBO(rec + beta * kl, rec, kl)
    rv, logvar_value = _logvar_args(recon_logvar)
    rec_options = recon_op.Options(
        logvar_value, likelihood, reduction, full, *_grads_needed(recon, rv)
    )
    options = elbo_op.Options(rec_options, float(beta), kl_reduction)
    return ELBO(*elbo_op.elbo_loss(recon, x, mu, logvar, rv, options))
