"""The beta-VAE objective ``recon + beta * kl`` as ONE autograd Function: the closed-form KL
(one launch of ``kernels/latent.py``), then the reconstruction loss, whose kernel also writes
``loss = recon + beta * kl`` (one launch of ``kernels/recon.py``); backward is one launch for
each term. No separate addition, no second autograd node.

Gradients: d loss / d recon as :mod:`fastvae.ops.recon`; d loss / d (mu, logvar) are the KL's
gradients (:mod:`fastvae.ops.latent`) times beta. The ``recon`` and ``kl`` outputs are
differentiable too (a caller may log them or weight them).

The addition is fused when the loss has the reconstruction term's shape (both reduced to a
scalar, or the reconstruction kept per sample) and the losses are float32; otherwise (a
float64 input, whose beta a float32 kernel argument would round, or a per-sample KL beside a
scalar reconstruction term) the Function adds the two terms with PyTorch operators.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fastvae.ops import latent, recon


def _fused_add(rec_reduction: str, kl_reduction: str, rec_dtype: torch.dtype) -> bool:
    return (rec_reduction == "none" or kl_reduction != "none") and rec_dtype == torch.float32


def _weight(grad: torch.Tensor | None, extra: torch.Tensor | None, shape) -> torch.Tensor | None:
    """The incoming gradient of one term: the loss's gradient (summed down to the term's
    shape where the loss was broadcast) plus the term's own, either may be None."""
    if grad is not None and tuple(grad.shape) != tuple(shape):
        grad = grad.sum_to_size(shape)
    if extra is None:
        return grad
    return extra if grad is None else grad + extra


class Options(NamedTuple):
    """The objective's non-tensor arguments, one argument of the Function."""

    recon: recon.Options  # the reconstruction term's
    beta: float
    kl_reduction: str


class ELBO(torch.autograd.Function):
    """``(loss, recon, kl)``, two launches forward, at most two backward."""

    @staticmethod
    def forward(ctx, recon_, x, mu, logvar, recon_logvar, options: Options):
        rec_options, beta, kl_reduction = options
        # by name: torch 2.6's compiler fails on a slice of a NamedTuple
        logvar_value, likelihood = rec_options.logvar_value, rec_options.likelihood
        reduction = rec_options.reduction
        _, kl = latent.forward(mu, logvar, None, 1, False, True, kl_reduction)
        rec_dtype = recon.loss_dtype(recon_, x, recon_logvar)
        fused = _fused_add(reduction, kl_reduction, rec_dtype) and kl.dtype == rec_dtype
        rec, loss, dr, dv = recon.forward(
            recon_, x, recon_logvar, *rec_options, kl if fused else None, beta
        )
        if not fused:
            loss = rec + beta * kl
        needs = ctx.needs_input_grad
        ctx.recon_needs = (needs[0], needs[1], needs[4])
        ctx.saved_inputs = recon.saves_inputs(reduction, *ctx.recon_needs, dr, dv)
        if ctx.saved_inputs:
            ctx.save_for_backward(recon_, x, recon_logvar, dr, dv, mu, logvar)
        else:
            ctx.save_for_backward(dr if needs[0] else None, dv if needs[4] else None, mu, logvar)
        ctx.beta, ctx.fused = beta, fused
        ctx.logvar_value, ctx.likelihood, ctx.reduction = logvar_value, likelihood, reduction
        ctx.kl_reduction, ctx.shapes = kl_reduction, (rec.shape, kl.shape)
        ctx.set_materialize_grads(False)
        return loss, rec, kl

    @staticmethod
    def backward(ctx, g_loss, g_rec, g_kl):
        *recon_saved, mu, logvar = ctx.saved_tensors
        rec_shape, kl_shape = ctx.shapes
        d_recon = d_x = d_logvar = dmu = dlogvar = None
        g = _weight(g_loss, g_rec, rec_shape)
        if g is not None and ctx.saved_inputs:
            d_recon, d_x, d_logvar = recon.grads_from_inputs(
                *recon_saved, g, ctx.recon_needs, ctx.logvar_value, ctx.likelihood,
                ctx.reduction,
            )
        elif g is not None:
            d_recon, d_logvar = recon.grads_from_saved(*recon_saved, g)
        # The KL's gradient: beta * g_loss, with beta applied by the kernel (as float32)
        # when that is all; combined here in the loss's dtype otherwise.
        g, kl_weight = _weight(g_loss, None, kl_shape), ctx.beta
        if g is not None and (g_kl is not None or not ctx.fused):
            g, kl_weight = _weight(g * ctx.beta, g_kl, kl_shape), 1.0
        elif g is None:
            g, kl_weight = g_kl, 1.0
        if g is not None and (ctx.needs_input_grad[2] or ctx.needs_input_grad[3]):
            dmu, dlogvar = latent.backward(
                mu, logvar, None, 1, None, g, ctx.kl_reduction, kl_weight
            )
        return d_recon, d_x, dmu, dlogvar, d_logvar, None


def elbo_loss(recon_, x, mu, logvar, recon_logvar, options: Options):
    """``(loss, recon, kl)`` of the fused objective (arguments checked by
    :func:`fastvae.functional.elbo_loss`)."""
    return ELBO.apply(recon_, x, mu, logvar, recon_logvar, options)
