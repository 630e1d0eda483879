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


# The Philox key of a draw. Eager calls outside CUDA-graph capture read it from the CUDA
# generator on the host: (initial_seed, offset / 4) with the offset advanced by 4 per sample,
# PyTorch's own reservation protocol (its CUDA random kernels advance the same offset), so the
# draw costs no launch, torch.manual_seed reproduces it, and consecutive calls get fresh
# counters. Under torch.compile or CUDA-graph capture the key must be a device tensor: a
# Python int would be baked into the graph and every replay would repeat its noise; there
# torch.randint draws it (one launch, which a captured graph replays with fresh values). CPU
# generators (mt19937) have no offset: the CPU (interpreter) path draws with torch.randint.


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _host_key(generator: torch.Generator | None, device: torch.device, n_samples: int):
    """(seed, counter offset) read and advanced on the host, or None where that would be
    wrong (compiling, capturing) or impossible (a CPU generator)."""
    if device.type != "cuda" or torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing():
        return None
    if generator is None:
        generator = torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    offset = generator.get_offset()
    generator.set_offset(offset + 4 * n_samples)
    return _signed64(generator.initial_seed()), offset // 4


def philox_key(generator: torch.Generator | None, device: torch.device, n_samples: int):
    """The key of one draw of ``n_samples`` samples: ``(seed, offset)`` ints, or an int64
    device tensor holding them (see above).

    Raises:
        ValueError: a user CUDA generator used while capturing a CUDA graph without being
            registered with the graph (``graph.register_generator_state(generator)`` before
            the capture begins: the graph then refreshes its state at every replay).
    """
    key = _host_key(generator, device, n_samples)
    if key is not None:
        return key
    try:
        return torch.randint(0, 1 << 62, (2,), generator=generator, device=device, dtype=torch.int64)
    except RuntimeError as e:
        if generator is not None and "capture" in str(e):
            raise ValueError(
                "generator is used inside a CUDA graph capture but is not registered with the "
                "graph; call graph.register_generator_state(generator) before capturing"
            ) from e
        raise


def _rows(t: Tensor) -> Tensor:
    """``(B, *latent)`` as ``(B, L)`` rows with a unit last stride: a 2-D tensor as it is
    (a ``chunk`` view keeps its row stride), a contiguous one as a view, anything else copied."""
    if t.dim() == 2 and (t.stride(1) == 1 or t.shape[1] == 1):
        return t
    rows = (t.shape[0], math.prod(t.shape[1:]))  # explicit L: B may be 0
    return t.view(rows) if t.is_contiguous() else t.contiguous().view(rows)


def _z_shape(mu: Tensor, n_samples: int) -> tuple[int, ...]:
    return tuple(mu.shape) if n_samples == 1 else (n_samples, *mu.shape)


def _kl_shape(mu: Tensor, reduction: str) -> tuple[int, ...]:
    return tuple(mu.shape[:1]) if reduction == "none" else ()


def _sample_and_kl_forward(mu, logvar, key, n_samples, sample, kl, reduction):
    """The forward body shared by the eager Function and the custom op: one launch."""
    B, numel = mu.shape[0], mu.numel()
    mode = "off" if not kl else "rows" if reduction == "none" else "total"
    z, kl_out = kernels.sample_and_kl_fwd(
        _rows(mu), _rows(logvar), key if sample else None, n_samples, sample, mode,
        reduction_divisor(reduction, B, numel),
    )
    z = z.view(_z_shape(mu, n_samples)) if sample else _empty(mu)
    if not kl:
        kl_out = _empty(mu, loss_dtype(mu.dtype))
    elif numel == 0 and reduction in ("mean", "batchmean"):
        kl_out = kl_out.new_full((), float("nan"))  # a mean over nothing, as torch.mean's
    return z, kl_out


def _sample_and_kl_backward_body(mu, logvar, key, n_samples, grad_z, grad_kl, reduction):
    """(dmu, dlogvar), contiguous in mu's shape, from one launch; eps regenerated from key."""
    B = mu.shape[0]
    if grad_z is not None:
        grad_z = grad_z.reshape(n_samples, B, math.prod(mu.shape[1:]))
    if grad_kl is not None and reduction != "none":
        grad_kl = grad_kl.expand(B)  # stride 0: the kernel reads the scalar once
    dmu, dlv = kernels.sample_and_kl_bwd(
        _rows(mu), _rows(logvar), key, n_samples, grad_z, grad_kl,
        reduction_divisor(reduction, B, mu.numel()),
    )
    return dmu.view(mu.shape), dlv.view(logvar.shape)


class _SampleAndKL(torch.autograd.Function):
    """The eager path: the same bodies as the custom op, without its dispatch cost."""

    @staticmethod
    def forward(ctx, mu, logvar, key, n_samples, sample, kl, reduction):
        z, kl_out = _sample_and_kl_forward(mu, logvar, key, n_samples, sample, kl, reduction)
        in_memory = isinstance(key, Tensor)
        ctx.save_for_backward(mu, logvar, key if in_memory else None)
        ctx.host_key = None if in_memory else key
        ctx.n_samples, ctx.reduction = n_samples, reduction
        ctx.set_materialize_grads(False)  # an unused output gets None, not a tensor of zeros
        return z, kl_out

    @staticmethod
    def backward(ctx, grad_z, grad_kl):
        mu, logvar, key = ctx.saved_tensors
        if grad_z is None and grad_kl is None:
            return None, None, None, None, None, None, None
        dmu, dlogvar = _sample_and_kl_backward_body(
            mu, logvar, ctx.host_key if key is None else key, ctx.n_samples, grad_z, grad_kl,
            ctx.reduction,
        )
        return dmu, dlogvar, None, None, None, None, None


def sample_and_kl(
    mu: Tensor, logvar: Tensor, generator: torch.Generator | None, n_samples: int,
    sample: bool, kl: bool, reduction: str,
) -> tuple[Tensor, Tensor]:
    """(z, KL reduced as asked) in one launch (no seed launch in eager CUDA use); either may be
    switched off (empty result). z is ``mu.shape`` (``(K, *mu.shape)`` for K > 1), contiguous;
    the KL sums over all non-batch dims. Eager calls take the autograd.Function, traced ones
    (torch.compile) the registered custom op."""
    if use_custom_op():
        key = philox_key(generator, mu.device, n_samples) if sample else mu.new_empty(0, dtype=torch.int64)
        return sample_and_kl_op(mu, logvar, key, n_samples, sample, kl, reduction)
    key = philox_key(generator, mu.device, n_samples) if sample else None
    return _SampleAndKL.apply(mu, logvar, key, n_samples, sample, kl, reduction)


@torch.library.custom_op("fastvae::sample_and_kl", mutates_args=())
def sample_and_kl_op(
    mu: Tensor, logvar: Tensor, key: Tensor, n_samples: int, sample: bool, kl: bool,
    reduction: str,
) -> tuple[Tensor, Tensor]:
    """(z, KL reduced as asked); ``key`` is the int64 device tensor (seed, offset), read only
    when sampling. One kernel launch."""
    return _sample_and_kl_forward(mu, logvar, key, n_samples, sample, kl, reduction)


@sample_and_kl_op.register_fake
def _(mu, logvar, key, n_samples, sample, kl, reduction):
    z = mu.new_empty(_z_shape(mu, n_samples)) if sample else _empty(mu)
    kl_shape = _kl_shape(mu, reduction) if kl else (0,)
    return z, mu.new_empty(kl_shape, dtype=loss_dtype(mu.dtype))


@torch.library.custom_op("fastvae::sample_and_kl_backward", mutates_args=())
def sample_and_kl_backward_op(
    mu: Tensor,
    logvar: Tensor,
    key: Tensor,
    n_samples: int,
    grad_z: Tensor | None,
    grad_kl: Tensor | None,
    reduction: str,
) -> tuple[Tensor, Tensor]:
    """(dmu, dlogvar) from one kernel launch; eps is regenerated from ``key``. ``grad_kl`` is
    ``(B,)`` for reduction "none" and a scalar otherwise (read with stride 0, no expand kernel;
    the kernel divides it as the forward did)."""
    return _sample_and_kl_backward_body(mu, logvar, key, n_samples, grad_z, grad_kl, reduction)


@sample_and_kl_backward_op.register_fake
def _(mu, logvar, key, n_samples, grad_z, grad_kl, reduction):
    return mu.new_empty(mu.shape), logvar.new_empty(logvar.shape)


def _sample_and_kl_setup(ctx, inputs, output):
    mu, logvar, key, n_samples, _, _, reduction = inputs
    ctx.save_for_backward(mu, logvar, key)
    ctx.n_samples, ctx.reduction = n_samples, reduction
    ctx.set_materialize_grads(False)


def _sample_and_kl_backward(ctx, grad_z, grad_kl):
    mu, logvar, key = ctx.saved_tensors
    if grad_z is None and grad_kl is None:
        return None, None, None, None, None, None, None
    dmu, dlogvar = sample_and_kl_backward_op(
        mu, logvar, key, ctx.n_samples, grad_z, grad_kl, ctx.reduction
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
