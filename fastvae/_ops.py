"""The Triton kernels registered as PyTorch operators (``torch.library.custom_op``).

Each op has a fake (shape-only) implementation and an autograd formula, so it composes with
autograd, runs under ``torch.compile(fullgraph=True)`` without graph breaks, and is opaque to
the compiler. Optional outputs that were not asked for come back as empty tensors.
"""

from __future__ import annotations

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


@torch.library.custom_op("fastvae::reconstruction_loss", mutates_args=())
def reconstruction_loss_op(
    recon: Tensor,
    x: Tensor,
    recon_logvar: Tensor | None,
    likelihood: str,
    reduction: str,
    grad_recon: bool,
    grad_logvar: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, d_recon, d_logvar): the loss reduced as asked; for "sum"/"mean" the gradients
    (already divided by B for "mean") come from the same pass, for "none" they are empty and
    computed in backward, where grad_output is per row. Two launches: the kernel (one program
    per row and feature chunk), and one sum of its partials (already divided by B for
    "mean")."""
    if reduction == "none":
        parts, _, _ = kernels.recon_loss_fwd(recon, x, recon_logvar, likelihood, 1, False, False)
        return parts.sum(dim=1), _empty(recon), _empty(recon)
    B = recon.shape[0]
    grad_div = reduction_divisor(reduction, B, recon.numel())
    parts, dr, dv = kernels.recon_loss_fwd(
        recon, x, recon_logvar, likelihood, grad_div, grad_recon, grad_logvar
    )
    total = _total(parts.reshape(-1), reduction, recon.numel())
    return total, dr if dr is not None else _empty(recon), dv if dv is not None else _empty(recon)


@reconstruction_loss_op.register_fake
def _(recon, x, recon_logvar, likelihood, reduction, grad_recon, grad_logvar):
    dtype = loss_dtype(recon.dtype)
    loss = recon.new_empty(recon.shape[:1] if reduction == "none" else (), dtype=dtype)
    fused = reduction != "none"
    dr = torch.empty_like(recon) if fused and grad_recon else _empty(recon)
    gaussian = likelihood == "gaussian"
    dv = torch.empty_like(recon) if fused and grad_logvar and gaussian else _empty(recon)
    return loss, dr, dv


@torch.library.custom_op("fastvae::reconstruction_loss_backward", mutates_args=())
def reconstruction_loss_backward_op(
    recon: Tensor,
    x: Tensor,
    recon_logvar: Tensor | None,
    likelihood: str,
    grad_rows: Tensor,
    grad_recon: bool,
    grad_logvar: bool,
) -> tuple[Tensor, Tensor]:
    """Gradients for reduction "none" (per-row grad_output), recomputed from recon and x."""
    dr, dv = kernels.recon_loss_bwd(
        recon, x, recon_logvar, likelihood, grad_rows, grad_recon, grad_logvar
    )
    return dr if dr is not None else _empty(recon), dv if dv is not None else _empty(recon)


@reconstruction_loss_backward_op.register_fake
def _(recon, x, recon_logvar, likelihood, grad_rows, grad_recon, grad_logvar):
    dr = torch.empty_like(recon) if grad_recon else _empty(recon)
    dv = torch.empty_like(recon) if grad_logvar and likelihood == "gaussian" else _empty(recon)
    return dr, dv


def _recon_setup(ctx, inputs, output):
    recon, x, recon_logvar, likelihood, reduction, _, _ = inputs
    _, dr, dv = output
    ctx.save_for_backward(recon, x, recon_logvar, dr, dv)
    ctx.likelihood, ctx.reduction = likelihood, reduction
    ctx.mark_non_differentiable(dr, dv)
    ctx.set_materialize_grads(False)


def _target_grad(recon, x, recon_logvar, likelihood, g):
    """d loss / d x, for the rare case that the target requires grad (PyTorch ops, not fused):
    bernoulli -l, mse -2 (r - x), gaussian -(m - x) exp(-v); times the broadcast weight g."""
    acc = loss_dtype(recon.dtype)
    r, t = recon.to(acc), x.to(acc)
    if likelihood == "bernoulli":
        d = -r
    elif likelihood == "mse":
        d = -2.0 * (r - t)
    else:
        d = -(r - t) * torch.exp(-recon_logvar.to(acc))
    return (d * g).to(x.dtype)


def _last_use_of_saved(*tensors: Tensor) -> bool:
    """True when this backward call is the last use of the node's saved tensors: autograd frees
    them afterwards (no ``retain_graph``), builds no graph of the backward (no
    ``create_graph``), and nothing is being traced (plain tensors, not the fake or functional
    ones of torch.compile / AOT autograd). Outside a backward pass the engine's query answers
    True (keep), so the answer is then False."""
    return not (
        torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or any(type(t) is not Tensor for t in tensors)
        or torch._C._autograd._get_current_graph_task_keep_graph()
    )


def _scaled(grad: Tensor, scale: Tensor, in_place: bool) -> Tensor:
    """grad * scale; in place on the saved gradient when nothing will read it again, so that
    the reconstruction loss never holds more than one B x D buffer beyond its inputs."""
    return grad.mul_(scale) if in_place else grad * scale


def _recon_backward(ctx, grad_loss, _grad_dr, _grad_dv):
    recon, x, recon_logvar, dr, dv = ctx.saved_tensors
    need_r, need_x, need_v = ctx.needs_input_grad[:3]
    if grad_loss is None:
        return None, None, None, None, None, None, None
    d_recon = d_x = d_logvar = None
    if ctx.reduction == "none":
        if need_r or need_v:
            d_recon, d_logvar = reconstruction_loss_backward_op(
                recon, x, recon_logvar, ctx.likelihood, grad_loss, need_r, need_v
            )
        g = grad_loss.reshape((-1,) + (1,) * (recon.dim() - 1))
    else:
        # One launch per gradient: the fused forward pass already wrote it for grad_output 1.
        scale = grad_loss.to(recon.dtype)
        in_place = _last_use_of_saved(scale, dr, dv)
        d_recon = _scaled(dr, scale, in_place) if need_r else None
        d_logvar = _scaled(dv, scale, in_place) if need_v else None
        g = grad_loss
    if need_x:
        if ctx.reduction != "sum":  # only here: dividing when x needs no grad wastes a launch
            g = g / reduction_divisor(ctx.reduction, recon.shape[0], recon.numel())
        d_x = _target_grad(recon, x, recon_logvar, ctx.likelihood, g)
    return (
        d_recon if need_r else None,
        d_x,
        d_logvar if need_v else None,
        None, None, None, None,
    )


reconstruction_loss_op.register_autograd(_recon_backward, setup_context=_recon_setup)
