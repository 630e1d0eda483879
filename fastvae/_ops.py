"""The Triton kernels registered as PyTorch operators (``torch.library.custom_op``).

Each op has a fake (shape-only) implementation and an autograd formula, so it composes with
autograd, runs under ``torch.compile(fullgraph=True)`` without graph breaks, and is opaque to
the compiler. Optional outputs that were not asked for come back as empty tensors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastvae import kernels
from fastvae.kernels._common import loss_dtype


def _empty(like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return like.new_empty(0, dtype=dtype)


# ---------------------------------------------------------------- reparameterization + KL


# Reductions at the operator level carry torch's names and meanings: "none" per sample,
# "sum", "mean" the per-element mean (sum / numel), "batchmean" the sum divided by the batch
# size. The public API (fastvae.functional) maps its arguments onto these.
OP_REDUCTIONS = ("none", "sum", "mean", "batchmean")


def reduction_divisor(reduction: str, batch: int, numel: int) -> int:
    """The kernels divide each row's loss (and its gradient) by this: B for "batchmean",
    numel (all elements, B x D or B x L) for "mean", 1 for "none" and "sum" (and for an empty
    input, whose reduced value :func:`_total` sets)."""
    if reduction == "batchmean" and batch > 0:
        return batch
    if reduction == "mean" and numel > 0:
        return numel
    return 1


def use_custom_op() -> bool:
    """True while torch.compile (Dynamo / AOT autograd) traces: the registered custom ops are
    then the path, since the compiler needs their fake implementations. Eager calls take the
    cheaper ``torch.autograd.Function`` path to the same launchers."""
    return torch.compiler.is_compiling()


def _total(partials: Tensor, reduction: str, numel: int) -> Tensor:
    """The "sum"/"mean"/"batchmean" loss from a kernel's partial sums (already divided): the
    single partial itself (a view, no launch) or their sum (one launch). A mean over nothing
    is NaN, as torch.mean's."""
    if reduction in ("mean", "batchmean") and numel == 0:
        return partials.new_full((), float("nan"))
    return partials.reshape(()) if partials.numel() == 1 else partials.sum()


@torch.library.custom_op("fastvae::sample_and_kl", mutates_args=())
def sample_and_kl_op(
    mu: Tensor, logvar: Tensor, seed: Tensor, n_samples: int, sample: bool, kl: bool,
    reduction: str,
) -> tuple[Tensor, Tensor]:
    """(z, KL reduced as asked); either may be switched off (empty result). One kernel launch,
    plus one sum of per-program KL partials for a "sum"/"mean" KL over more than
    ``_SINGLE_PROGRAM_ELEMS`` elements."""
    B = mu.shape[0]
    reduce = reduction != "none"
    z, kl_out = kernels.sample_and_kl_fwd(
        mu, logvar, seed, n_samples, sample, kl, reduction_divisor(reduction, B, mu.numel()), reduce
    )
    if kl_out is None:
        kl_out = _empty(mu, loss_dtype(mu.dtype))
    elif reduce:
        kl_out = _total(kl_out, reduction, mu.numel())
    return z if z is not None else _empty(mu), kl_out


@sample_and_kl_op.register_fake
def _(mu, logvar, seed, n_samples, sample, kl, reduction):
    B, L = mu.shape
    z_shape = (B, L) if n_samples == 1 else (n_samples, B, L)
    z = mu.new_empty(z_shape) if sample else _empty(mu)
    kl_shape = (0,) if not kl else (B,) if reduction == "none" else ()
    return z, mu.new_empty(kl_shape, dtype=loss_dtype(mu.dtype))


@torch.library.custom_op("fastvae::sample_and_kl_backward", mutates_args=())
def sample_and_kl_backward_op(
    mu: Tensor,
    logvar: Tensor,
    seed: Tensor,
    n_samples: int,
    grad_z: Tensor | None,
    grad_kl: Tensor | None,
    reduction: str,
) -> tuple[Tensor, Tensor]:
    """(dmu, dlogvar) from one kernel launch; eps is regenerated from ``seed``. ``grad_kl`` is
    ``(B,)`` for reduction "none" and a scalar otherwise (read with stride 0, no expand kernel;
    the kernel divides it by B for "mean")."""
    B = mu.shape[0]
    if grad_kl is not None and reduction != "none":
        grad_kl = grad_kl.expand(B)
    return kernels.sample_and_kl_bwd(
        mu, logvar, seed, n_samples, grad_z, grad_kl, reduction_divisor(reduction, B, mu.numel())
    )


@sample_and_kl_backward_op.register_fake
def _(mu, logvar, seed, n_samples, grad_z, grad_kl, reduction):
    return torch.empty_like(mu), torch.empty_like(logvar)


def _sample_and_kl_setup(ctx, inputs, output):
    mu, logvar, seed, n_samples, _, _, reduction = inputs
    ctx.save_for_backward(mu, logvar, seed)
    ctx.n_samples, ctx.reduction = n_samples, reduction
    ctx.set_materialize_grads(False)  # an unused output gets None, not a tensor of zeros


def _sample_and_kl_backward(ctx, grad_z, grad_kl):
    mu, logvar, seed = ctx.saved_tensors
    if grad_z is None and grad_kl is None:
        return None, None, None, None, None, None, None
    dmu, dlogvar = sample_and_kl_backward_op(
        mu, logvar, seed, ctx.n_samples, grad_z, grad_kl, ctx.reduction
    )
    return dmu, dlogvar, None, None, None, None, None


sample_and_kl_op.register_autograd(_sample_and_kl_backward, setup_context=_sample_and_kl_setup)


# ---------------------------------------------------------------- reconstruction loss
#
# Two paths to the same launchers and the same forward/backward bodies (_recon_forward,
# _recon_grads): eager calls go through the autograd.Function _ReconLoss (about 7 us of host
# time per call, against about 20 us for custom-op dispatch); while torch.compile traces
# (use_custom_op()), the registered ops below are the path, so the graph has no breaks.


def _nan_if_empty(loss: Tensor, reduction: str, batch: int, numel: int) -> Tensor:
    """A mean over nothing is NaN, as torch.mean's: "mean" of no elements, "batchmean" of no rows."""
    if (reduction == "mean" and numel == 0) or (reduction == "batchmean" and batch == 0):
        return loss.fill_(float("nan"))
    return loss


def _recon_forward(recon, x, recon_logvar, logvar_value, likelihood, reduction, grad_recon, grad_logvar):
    """(loss, d_recon or None, d_logvar or None) from ONE launch. For a scalar reduction the
    gradients for grad_output = 1 (already divided by the divisor) come from the same pass;
    for "none" nothing is written (grad_output is per row: backward recomputes)."""
    B = recon.shape[0]
    fused = reduction != "none"
    loss, dr, dv = kernels.recon_loss_fwd(
        recon, x, recon_logvar, logvar_value, likelihood, not fused,
        reduction_divisor(reduction, B, recon.numel()), grad_recon and fused, grad_logvar and fused,
    )
    return _nan_if_empty(loss, reduction, B, recon.numel()), dr, dv


def _target_grad(recon, x, recon_logvar, logvar_value, likelihood, g):
    """d loss / d x, for the rare case that the target requires grad (PyTorch ops, not fused):
    bernoulli -l; bernoulli_probs -logit(p) (torch's binary_cross_entropy target gradient);
    mse -2 (r - x); gaussian -(m - x) exp(-v); times the broadcast weight g; in x's dtype."""
    acc = torch.float64 if torch.float64 in (recon.dtype, x.dtype) else loss_dtype(recon.dtype)
    r, t = recon.to(acc), x.to(acc)
    if likelihood == "bernoulli":
        d = -r
    elif likelihood == "bernoulli_probs":
        d = torch.log1p(-r) - torch.log(r)
    elif likelihood == "mse":
        d = -2.0 * (r - t)
    else:
        v = recon_logvar.to(acc) if recon_logvar is not None else torch.tensor(logvar_value, dtype=acc)
        d = -(r - t) * torch.exp(-v)
    return (d * g).to(x.dtype)


def _last_use_of_saved(*tensors: Tensor | None) -> bool:
    """True when this backward call is the last use of the node's saved tensors: autograd frees
    them afterwards (no ``retain_graph``), builds no graph of the backward (no
    ``create_graph``), and nothing is being traced (plain tensors, not the fake or functional
    ones of torch.compile / AOT autograd). Outside a backward pass the engine's query answers
    True (keep), so the answer is then False."""
    return not (
        torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or any(t is not None and type(t) is not Tensor for t in tensors)
        or torch._C._autograd._get_current_graph_task_keep_graph()
    )


def _scaled(grad: Tensor, grad_output: Tensor, in_place: bool) -> Tensor:
    """grad * grad_output. In place on the saved gradient when nothing will read it again: one
    tiny launch that returns at once on the device when grad_output is exactly 1 (no host
    sync), so a plain ``loss.backward()`` adds no pass over B x D. Otherwise out of place."""
    if in_place:
        return kernels.recon_loss_scale_grad(grad, grad_output)
    return grad * grad_output.to(grad.dtype)


def _recon_grads(ctx, grad_loss, rows_backward):
    """The backward body shared by _ReconLoss and the custom op: (d_recon, d_x, d_logvar).
    ``rows_backward`` is the launcher (eager) or the registered backward op (traced)."""
    recon, x, recon_logvar, dr, dv = ctx.saved_tensors
    need_r, need_x, need_v = ctx.needs_input_grad[:3]
    need_v = need_v and recon_logvar is not None
    if grad_loss is None:
        return None, None, None
    args = (recon, x, recon_logvar, ctx.logvar_value, ctx.likelihood)
    B = recon.shape[0]
    divisor = reduction_divisor(ctx.reduction, B, recon.numel())
    if ctx.reduction == "none":
        grad_rows, g_x = grad_loss, grad_loss.reshape((-1,) + (1,) * (recon.dim() - 1))
    else:
        grad_rows, g_x = None, grad_loss / divisor if divisor != 1 else grad_loss
    d_recon = d_logvar = None
    if grad_rows is None and (need_r and dr is None or need_v and dv is None):
        # The forward was asked for no gradient (a direct call of the op): recompute.
        grad_rows = (grad_loss / divisor).expand(B)
    if grad_rows is not None:
        if need_r or need_v:
            d_recon, d_logvar = rows_backward(*args, grad_rows, need_r, need_v)
    else:
        in_place = _last_use_of_saved(grad_loss, dr, dv)
        d_recon = _scaled(dr, grad_loss, in_place) if need_r else None
        d_logvar = _scaled(dv, grad_loss, in_place) if need_v else None
    d_x = _target_grad(*args, g_x) if need_x else None
    return (d_recon if need_r else None), d_x, (d_logvar if need_v else None)


class _ReconLoss(torch.autograd.Function):
    """The eager path: same launchers and bodies as the custom op, less dispatch."""

    @staticmethod
    def forward(ctx, recon, x, recon_logvar, logvar_value, likelihood, reduction, grad_recon, grad_logvar):
        loss, dr, dv = _recon_forward(
            recon, x, recon_logvar, logvar_value, likelihood, reduction, grad_recon, grad_logvar
        )
        ctx.save_for_backward(recon, x, recon_logvar, dr, dv)
        ctx.logvar_value, ctx.likelihood, ctx.reduction = logvar_value, likelihood, reduction
        ctx.set_materialize_grads(False)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        return *_recon_grads(ctx, grad_loss, _rows_backward_eager), None, None, None, None, None


def _rows_backward_eager(recon, x, recon_logvar, logvar_value, likelihood, grad_rows, need_r, need_v):
    return kernels.recon_loss_bwd(recon, x, recon_logvar, logvar_value, likelihood, grad_rows, need_r, need_v)


def reconstruction_loss(
    recon: Tensor,
    x: Tensor,
    recon_logvar: Tensor | None,
    logvar_value: float,
    likelihood: str,
    reduction: str,
    grad_recon: bool,
    grad_logvar: bool,
) -> Tensor:
    """The fused reconstruction loss, differentiable: the custom op while torch.compile traces,
    the cheaper autograd.Function otherwise. Arguments as :func:`reconstruction_loss_op`."""
    if use_custom_op():
        return reconstruction_loss_op(
            recon, x, recon_logvar, logvar_value, likelihood, reduction, grad_recon, grad_logvar
        )[0]
    return _ReconLoss.apply(
        recon, x, recon_logvar, logvar_value, likelihood, reduction, grad_recon, grad_logvar
    )


@torch.library.custom_op("fastvae::reconstruction_loss", mutates_args=())
def reconstruction_loss_op(
    recon: Tensor,
    x: Tensor,
    recon_logvar: Tensor | None,
    logvar_value: float,
    likelihood: str,
    reduction: str,
    grad_recon: bool,
    grad_logvar: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """fastvae::reconstruction_loss(Tensor recon, Tensor x, Tensor? recon_logvar,
    float logvar_value, str likelihood, str reduction, bool grad_recon, bool grad_logvar)
    -> (Tensor, Tensor, Tensor)

    (loss, d_recon, d_logvar) from ONE launch (the reduction included).

    - recon ``(B, *F)`` float: logits ("bernoulli"), probabilities ("bernoulli_probs"), the
      mean ("mse", "gaussian"); x of recon's shape, any float dtype.
    - recon_logvar: "gaussian" only, a tensor broadcastable to recon (read with stride 0 where
      broadcast), or None: then ``logvar_value`` is the log-variance of every element.
    - reduction: one of :data:`OP_REDUCTIONS`; loss ``(B,)`` for "none", else ``()``; float32
      (float64 when any input is float64).
    - d_recon (recon's dtype, shape, strides from ``kernels.recon_grad_strides``) and d_logvar
      (recon_logvar's dtype and shape) for grad_output = 1, already divided by the divisor;
      empty when not asked for and always for "none" (backward recomputes them).
    """
    loss, dr, dv = _recon_forward(
        recon, x, recon_logvar, logvar_value, likelihood, reduction, grad_recon, grad_logvar
    )
    return loss, dr if dr is not None else _empty(recon), dv if dv is not None else _empty(recon)


def _fake_grads(recon, recon_logvar, grad_recon, grad_logvar):
    """Exactly the dtypes, shapes and strides the launchers give the gradients."""
    strides = kernels.recon_grad_strides(tuple(recon.shape), tuple(recon.stride()))
    dr = recon.new_empty_strided(recon.shape, strides) if grad_recon else _empty(recon)
    dv = _empty(recon)
    if grad_logvar and recon_logvar is not None:
        full = tuple(recon_logvar.shape) == tuple(recon.shape) and math.prod(recon.shape[1:]) != 1
        dv = recon.new_empty_strided(recon.shape, strides, dtype=recon_logvar.dtype) if full else torch.empty_like(recon_logvar, memory_format=torch.contiguous_format)
    return dr, dv


@reconstruction_loss_op.register_fake
def _(recon, x, recon_logvar, logvar_value, likelihood, reduction, grad_recon, grad_logvar):
    f64 = torch.float64 in (recon.dtype, x.dtype) or (recon_logvar is not None and recon_logvar.dtype == torch.float64)
    loss = recon.new_empty(recon.shape[:1] if reduction == "none" else (), dtype=torch.float64 if f64 else loss_dtype(recon.dtype))
    fused = reduction != "none"
    dr, dv = _fake_grads(recon, recon_logvar, fused and grad_recon, fused and grad_logvar and likelihood == "gaussian")
    return loss, dr, dv


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
    """fastvae::reconstruction_loss_backward(Tensor recon, Tensor x, Tensor? recon_logvar,
    float logvar_value, str likelihood, Tensor grad_rows, bool grad_recon, bool grad_logvar)
    -> (Tensor, Tensor)

    (d_recon, d_logvar) of ``sum_b grad_rows[b] * loss_rows[b]``, recomputed from recon and
    x in one launch; ``grad_rows`` is ``(B,)`` (any stride). Empty where not asked for."""
    dr, dv = kernels.recon_loss_bwd(
        recon, x, recon_logvar, logvar_value, likelihood, grad_rows, grad_recon, grad_logvar
    )
    return dr if dr is not None else _empty(recon), dv if dv is not None else _empty(recon)


@reconstruction_loss_backward_op.register_fake
def _(recon, x, recon_logvar, logvar_value, likelihood, grad_rows, grad_recon, grad_logvar):
    return _fake_grads(recon, recon_logvar, grad_recon, grad_logvar and likelihood == "gaussian")


def _rows_backward_op(recon, x, recon_logvar, logvar_value, likelihood, grad_rows, need_r, need_v):
    dr, dv = reconstruction_loss_backward_op(
        recon, x, recon_logvar, logvar_value, likelihood, grad_rows, need_r, need_v
    )
    return dr if need_r else None, dv if need_v else None


def _recon_setup(ctx, inputs, output):
    recon, x, recon_logvar, logvar_value, likelihood, reduction, grad_recon, grad_logvar = inputs
    _, dr, dv = output
    fused = reduction != "none"
    ctx.save_for_backward(
        recon, x, recon_logvar,
        dr if fused and grad_recon else None,
        dv if fused and grad_logvar and recon_logvar is not None and likelihood == "gaussian" else None,
    )
    ctx.logvar_value, ctx.likelihood, ctx.reduction = logvar_value, likelihood, reduction
    ctx.mark_non_differentiable(dr, dv)
    ctx.set_materialize_grads(False)


def _recon_backward(ctx, grad_loss, _grad_dr, _grad_dv):
    return *_recon_grads(ctx, grad_loss, _rows_backward_op), None, None, None, None, None


reconstruction_loss_op.register_autograd(_recon_backward, setup_context=_recon_setup)
