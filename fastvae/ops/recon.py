"""The reconstruction losses of ``kernels/recon.py`` as a PyTorch operator: the loss, its
gradient and the batch reduction in one launch.

Per element, with r the decoder output and x the target (``kernels/recon.py`` states the
numerically careful forms): "bernoulli" (logits) loss max(r, 0) - r x + log(1 + exp(-|r|)),
gradient sigmoid(r) - x; "bernoulli_probs" ``F.binary_cross_entropy``'s values and gradients;
"mse" (r - x)^2, gradient 2 (r - x); "gaussian" with log-variance v
0.5 (log 2pi + v + (x - r)^2 exp(-v)), gradients dr = (r - x) exp(-v),
dv = 0.5 (1 - (x - r)^2 exp(-v)).

With a scalar reduction the kernel writes the gradient for grad_output = 1 (divided by the
reduction's divisor) in the forward pass; backward only scales it by grad_output, in place when
nothing will read the saved gradient again, with a kernel that returns at once when
grad_output is exactly 1 (no host sync): a plain ``loss.backward()`` adds no pass over B x D.
With "none", grad_output is per row: backward recomputes the gradient in one launch. Nothing is
written when no gradient is needed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from fastvae import kernels
from fastvae.conventions import accumulation_dtype, divisor, nan_if_empty, reduced_shape

# ---------------------------------------------------------------- the launches


def launch_forward(
    recon, x, recon_logvar, logvar_value, likelihood, reduction, full, grad_recon, grad_logvar,
    kl=None, beta=1.0,
) -> kernels.ReconOutputs:
    """One launch: the reduced loss, ``loss + beta * kl`` when ``kl`` is given, and for a
    scalar reduction the gradients asked for (for grad_output = 1)."""
    B, numel = recon.shape[0], recon.numel()
    fused = reduction != "none"
    out = kernels.recon_loss_fwd(
        recon, x, recon_logvar, logvar_value, likelihood, not fused,
        divisor(reduction, B, numel), grad_recon and fused, grad_logvar and fused, full, kl,
        beta,
    )
    if numel == 0:  # nothing launched: a mean over nothing is NaN, then the KL is added
        loss = nan_if_empty(out.loss, reduction, B, numel)
        return out._replace(loss=loss, elbo=None if kl is None else loss + beta * kl)
    return out


def launch_rows_backward(
    recon, x, recon_logvar, logvar_value, likelihood, grad_rows, need_r, need_v
):
    """(d_recon, d_logvar) of ``sum_b grad_rows[b] * loss_rows[b]``, recomputed, one launch."""
    return kernels.recon_loss_bwd(
        recon, x, recon_logvar, logvar_value, likelihood, grad_rows, need_r, need_v
    )


# ---------------------------------------------------------------- what torch.compile traces


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


@torch.library.custom_op("fastvae::reconstruction_loss", mutates_args=())
def reconstruction_loss_op(
    recon: Tensor,
    x: Tensor,
    recon_logvar: Tensor | None,
    logvar_value: float,
    likelihood: str,
    reduction: str,
    full: bool,
    grad_recon: bool,
    grad_logvar: bool,
    kl: Tensor | None,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, loss + beta * kl, d_recon, d_logvar) from ONE launch, the reduction included.

    - recon ``(B, *F)`` float: logits ("bernoulli"), probabilities ("bernoulli_probs"), the
      mean ("mse", "gaussian"); x of recon's shape, any float dtype.
    - recon_logvar: "gaussian" only, a tensor broadcastable to recon (read with stride 0
      where broadcast), or None: then ``logvar_value`` is the log-variance of every element.
    - loss ``(B,)`` for "none", else ``()``; float32 (float64 when any input is float64).
    - kl: None, or a KL ``()`` / ``(B,)`` to add with weight ``beta``.
    - d_recon (recon's dtype, shape, strides from ``kernels.recon_grad_strides``) and d_logvar
      (recon_logvar's dtype and shape) for grad_output = 1, already divided by the divisor.

    An output not asked for (or, for the gradients, not written: always with "none") is empty.
    """
    out = launch_forward(
        recon, x, recon_logvar, logvar_value, likelihood, reduction, full, grad_recon,
        grad_logvar, kl, beta,
    )
    return tuple(_empty(recon) if t is None else t for t in out)


def _fake_grads(recon, recon_logvar, grad_recon, grad_logvar):
    """Exactly the dtypes, shapes and strides the launchers give the gradients."""
    strides = kernels.recon_grad_strides(tuple(recon.shape), tuple(recon.stride()))
    dr = recon.new_empty_strided(recon.shape, strides) if grad_recon else _empty(recon)
    dv = _empty(recon)
    if grad_logvar and recon_logvar is not None:
        full = tuple(recon_logvar.shape) == tuple(recon.shape) and math.prod(recon.shape[1:]) != 1
        dv = (
            recon.new_empty_strided(recon.shape, strides, dtype=recon_logvar.dtype) if full
            else torch.empty_like(recon_logvar, memory_format=torch.contiguous_format)
        )
    return dr, dv


def loss_dtype(recon: Tensor, x: Tensor, recon_logvar: Tensor | None) -> torch.dtype:
    """The loss's dtype: float32, float64 when any input is float64."""
    dtypes = (recon.dtype, x.dtype) + (() if recon_logvar is None else (recon_logvar.dtype,))
    return accumulation_dtype(*dtypes)


@reconstruction_loss_op.register_fake
def _(
    recon, x, recon_logvar, logvar_value, likelihood, reduction, full, grad_recon, grad_logvar,
    kl, beta,
):
    loss = recon.new_empty(
        reduced_shape(reduction, recon.shape[0]), dtype=loss_dtype(recon, x, recon_logvar)
    )
    elbo = _empty(recon) if kl is None else torch.empty_like(loss)
    fused = reduction != "none"
    dr, dv = _fake_grads(
        recon, recon_logvar, fused and grad_recon,
        fused and grad_logvar and likelihood == "gaussian",
    )
    return loss, elbo, dr, dv


@torch.library.custom_op("fastvae::reconstruction_loss_backward", mutates_args=())
def reconstruction_loss_backward_op(
    recon: Tensor,
    x: Tensor,
    recon_logvar: Tensor | None,
    logvar_value: float,
    likelihood: str,
    grad_rows: Tensor,
    grad_recon: bool,
    grad_logvar: bool,
) -> tuple[Tensor, Tensor]:
    """(d_recon, d_logvar) of ``sum_b grad_rows[b] * loss_rows[b]``, recomputed from recon and
    x in one launch; ``grad_rows`` is ``(B,)`` (any stride). Empty where not asked for."""
    dr, dv = launch_rows_backward(
        recon, x, recon_logvar, logvar_value, likelihood, grad_rows, grad_recon, grad_logvar
    )
    return _empty(recon) if dr is None else dr, _empty(recon) if dv is None else dv


@reconstruction_loss_backward_op.register_fake
def _(recon, x, recon_logvar, logvar_value, likelihood, grad_rows, grad_recon, grad_logvar):
    return _fake_grads(recon, recon_logvar, grad_recon, grad_logvar and likelihood == "gaussian")


def forward(
    recon, x, recon_logvar, logvar_value, likelihood, reduction, full, grad_recon, grad_logvar,
    kl=None, beta=1.0,
):
    """:func:`launch_forward` eagerly, its custom op while torch.compile traces; returns
    ``(loss, elbo or None, d_recon or None, d_logvar or None)``."""
    if not torch.compiler.is_compiling():
        return launch_forward(
            recon, x, recon_logvar, logvar_value, likelihood, reduction, full, grad_recon,
            grad_logvar, kl, beta,
        )
    loss, elbo, dr, dv = reconstruction_loss_op(
        recon, x, recon_logvar, logvar_value, likelihood, reduction, full, grad_recon,
        grad_logvar, kl, beta,
    )
    fused = reduction != "none"
    write_dv = fused and grad_logvar and recon_logvar is not None and likelihood == "gaussian"
    return (loss, elbo if kl is not None else None, dr if fused and grad_recon else None,
            dv if write_dv else None)


def _rows_backward(recon, x, recon_logvar, logvar_value, likelihood, grad_rows, need_r, need_v):
    if not torch.compiler.is_compiling():
        return launch_rows_backward(
            recon, x, recon_logvar, logvar_value, likelihood, grad_rows, need_r, need_v
        )
    dr, dv = reconstruction_loss_backward_op(
        recon, x, recon_logvar, logvar_value, likelihood, grad_rows, need_r, need_v
    )
    return dr if need_r else None, dv if need_v else None


# ---------------------------------------------------------------- backward


def _target_grad(recon, x, recon_logvar, logvar_value, likelihood, g):
    """d loss / d x, for the rare case that the target requires grad (PyTorch ops, not fused):
    bernoulli -l; bernoulli_probs -logit(p) (torch's binary_cross_entropy target gradient);
    mse -2 (r - x); gaussian -(m - x) exp(-v); times the broadcast weight g; in x's dtype."""
    acc = loss_dtype(recon, x, None)
    r, t = recon.to(acc), x.to(acc)
    if likelihood == "bernoulli":
        d = -r
    elif likelihood == "bernoulli_probs":
        d = torch.log1p(-r) - torch.log(r)
    elif likelihood == "mse":
        d = -2.0 * (r - t)
    else:
        v = (
            recon_logvar.to(acc) if recon_logvar is not None
            else torch.tensor(logvar_value, dtype=acc)
        )
        d = -(r - t) * torch.exp(-v)
    return (d * g).to(x.dtype)


def _last_use_of_saved(grad_loss: Tensor, *saved: Tensor | None) -> bool:
    """True when this backward call is the last use of the node's saved tensors: autograd frees
    them afterwards (no ``retain_graph``), builds no graph of the backward (no
    ``create_graph``), and nothing is being traced (plain tensors, not the fake or functional
    ones of torch.compile / AOT autograd). Outside a backward pass the engine's query answers
    True (keep), so the answer is then False."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or type(grad_loss) is not Tensor:
        return False
    if any(t is not None and type(t) is not Tensor for t in saved):
        return False
    return not torch._C._autograd._get_current_graph_task_keep_graph()


def scaled(grad: Tensor | None, grad_output: Tensor, in_place: bool) -> Tensor | None:
    """grad * grad_output. In place on the saved gradient when nothing will read it again: one
    tiny launch that returns at once on the device when grad_output is exactly 1 (no host
    sync). Otherwise out of place."""
    if grad is None:
        return None
    if in_place:
        return kernels.recon_loss_scale_grad(grad, grad_output)
    return grad * grad_output.to(grad.dtype)


def saves_inputs(reduction: str, need_r: bool, need_x: bool, need_v: bool, dr, dv) -> bool:
    """Whether backward needs the inputs (recon, x, recon_logvar): unless the forward wrote
    every gradient backward must return (a scalar reduction, x not requiring grad)."""
    return reduction == "none" or need_x or (need_r and dr is None) or (need_v and dv is None)


def grads_from_saved(dr, dv, grad_loss):
    """(d_recon, d_logvar) from the gradients the forward wrote: scaled by grad_loss."""
    in_place = _last_use_of_saved(grad_loss, dr, dv)
    return scaled(dr, grad_loss, in_place), scaled(dv, grad_loss, in_place)


def grads_from_inputs(
    recon, x, recon_logvar, dr, dv, grad_loss, needs, logvar_value, likelihood, reduction
):
    """(d_recon, d_x, d_logvar) when backward needs the inputs (see :func:`saves_inputs`):
    "none" recomputes the gradients weighted per row, x's gradient comes from PyTorch ops."""
    need_r, need_x, need_v = needs
    need_v = need_v and recon_logvar is not None
    args = (recon, x, recon_logvar, logvar_value, likelihood)
    B = recon.shape[0]
    div = divisor(reduction, B, recon.numel())
    d_recon = d_logvar = None
    if reduction == "none":
        grad_rows, g_x = grad_loss, grad_loss.reshape((-1,) + (1,) * (recon.dim() - 1))
    else:
        grad_rows, g_x = None, grad_loss / div if div != 1 else grad_loss
        if (need_r and dr is None) or (need_v and dv is None):  # the forward wrote none
            grad_rows = (grad_loss / div).expand(B)
    if grad_rows is not None:
        if need_r or need_v:
            d_recon, d_logvar = _rows_backward(*args, grad_rows, need_r, need_v)
    else:
        in_place = _last_use_of_saved(grad_loss, dr, dv)
        d_recon = scaled(dr, grad_loss, in_place) if need_r else None
        d_logvar = scaled(dv, grad_loss, in_place) if need_v else None
    d_x = _target_grad(*args, g_x) if need_x else None
    return (d_recon if need_r else None), d_x, (d_logvar if need_v else None)


# ---------------------------------------------------------------- the op


class Options(NamedTuple):
    """The op's non-tensor arguments, one argument of the Functions (each argument of
    ``autograd.Function.apply`` costs host time)."""

    logvar_value: float  # "gaussian" without a recon_logvar tensor: every element's
    likelihood: str
    reduction: str
    full: bool  # "gaussian": include 0.5 log(2 pi) per element
    grad_recon: bool  # write d loss / d recon in the forward (scalar reductions)
    grad_logvar: bool  # write d loss / d recon_logvar in the forward (scalar reductions)


class ReconstructionLoss(torch.autograd.Function):
    """The reduced loss from one launch. When the forward wrote every gradient backward needs,
    only those are saved and backward scales them; otherwise the inputs are saved too."""

    @staticmethod
    def forward(ctx, recon, x, recon_logvar, options: Options):
        loss, _, dr, dv = forward(recon, x, recon_logvar, *options)
        needs = ctx.needs_input_grad[:3]
        ctx.saved_inputs = saves_inputs(options.reduction, *needs, dr, dv)
        if ctx.saved_inputs:
            ctx.save_for_backward(recon, x, recon_logvar, dr, dv)
            ctx.logvar_value, ctx.likelihood = options.logvar_value, options.likelihood
            ctx.reduction = options.reduction
        else:
            ctx.save_for_backward(dr if needs[0] else None, dv if needs[2] else None)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.saved_inputs:
            d_recon, d_x, d_logvar = grads_from_inputs(
                *ctx.saved_tensors, grad_loss, ctx.needs_input_grad[:3], ctx.logvar_value,
                ctx.likelihood, ctx.reduction,
            )
        else:
            d_x = None
            d_recon, d_logvar = grads_from_saved(*ctx.saved_tensors, grad_loss)
        return d_recon, d_x, d_logvar, None


def reconstruction_loss(recon, x, recon_logvar, options: Options) -> Tensor:
    """The fused reconstruction loss, differentiable (arguments as
    :func:`reconstruction_loss_op`; checked by :mod:`fastvae.functional`)."""
    return ReconstructionLoss.apply(recon, x, recon_logvar, options)
