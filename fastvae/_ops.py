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
    input, whose mean the ops set to NaN themselves)."""
    if reduction == "batchmean" and batch > 0:
        return batch
    if reduction == "mean" and numel > 0:
        return numel
    return 1


def _nan_if_empty(loss: Tensor, reduction: str, batch: int, numel: int) -> Tensor:
    """A mean over nothing is NaN, as torch.mean's: "mean" of no elements, "batchmean" of no rows."""
    if (reduction == "mean" and numel == 0) or (reduction == "batchmean" and batch == 0):
        return loss.fill_(float("nan"))
    return loss


def use_custom_op() -> bool:
    """True while torch.compile (Dynamo / AOT autograd) traces: the registered custom ops are
    then the path, since the compiler needs their fake implementations. Eager calls take the
    cheaper ``torch.autograd.Function`` path to the same launchers."""
    return torch.compiler.is_compiling()


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


# ``device.type`` builds a new string at every read (about 0.25 us, and several us inside a
# training step, where its code is not in the caches); a dict keyed by the device answers
# "is it CUDA" from the device's hash. Devices are few, so it stays small.
_IS_CUDA: dict[torch.device, bool] = {}


def _is_cuda(device: torch.device) -> bool:
    answer = _IS_CUDA.get(device)
    if answer is None:
        answer = _IS_CUDA[device] = device.type == "cuda"
    return answer


def _host_key(generator: torch.Generator | None, device: torch.device, n_samples: int):
    """(seed, counter offset) read and advanced on the host, or None where that would be
    wrong (compiling, capturing) or impossible (a CPU generator)."""
    if not _is_cuda(device) or torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing():
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
    """The forward body shared by the eager Function and the custom op: one launch (and no
    view of z for ``(B, L)`` latents)."""
    B, numel = mu.shape[0], mu.numel()
    mode = "off" if not kl else "rows" if reduction == "none" else "total"
    z, kl_out = kernels.sample_and_kl_fwd(
        _rows(mu), _rows(logvar), key if sample else None, n_samples, sample, mode,
        reduction_divisor(reduction, B, numel),
    )
    if not sample:
        z = _empty(mu)
    elif mu.dim() != 2:
        z = z.view(_z_shape(mu, n_samples))
    if not kl:
        kl_out = _empty(mu, loss_dtype(mu.dtype))
    elif numel == 0:  # (B, 0) latents: "batchmean" is 0 / B = 0, "mean" 0 / 0 = NaN
        kl_out = _nan_if_empty(kl_out, reduction, B, numel)
    return z, kl_out


def _sample_and_kl_backward_body(mu, logvar, key, n_samples, grad_z, grad_kl, reduction):
    """(dmu, dlogvar), contiguous in mu's shape, from one launch; eps regenerated from key.
    grad_z goes to the kernel in its own shape (read flat), a scalar grad_kl as it is (read
    once, stride 0): no view or expand dispatches for ``(B, L)`` latents."""
    dmu, dlv = kernels.sample_and_kl_bwd(
        _rows(mu), _rows(logvar), key, n_samples, grad_z, grad_kl,
        reduction_divisor(reduction, mu.shape[0], mu.numel()),
    )
    if mu.dim() != 2:
        return dmu.view(mu.shape), dlv.view(logvar.shape)
    return dmu, dlv


class _SampleAndKL(torch.autograd.Function):
    """The eager path: the same bodies as the custom op, without its dispatch cost."""

    @staticmethod
    def forward(ctx, mu, logvar, key, n_samples, sample, kl, reduction):
        z, kl_out = _sample_and_kl_forward(mu, logvar, key, n_samples, sample, kl, reduction)
        in_memory = isinstance(key, Tensor)  # a device key is saved (saved-tensor hooks see it)
        ctx.save_for_backward(mu, logvar, key if in_memory else None)
        ctx.host_key = None if in_memory else key
        ctx.n_samples, ctx.reduction = n_samples, reduction
        ctx.set_materialize_grads(False)  # an unused output gets None, not a tensor of zeros
        return z, kl_out

    @staticmethod
    def backward(ctx, grad_z, grad_kl):
        if grad_z is None and grad_kl is None:
            return None, None, None, None, None, None, None
        mu, logvar, key = ctx.saved_tensors
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
#
# Two paths to the same launchers and the same forward/backward bodies (_recon_forward,
# _recon_grads): eager calls go through the autograd.Function _ReconLoss (about 7 us of host
# time per call, against about 20 us for custom-op dispatch); while torch.compile traces
# (use_custom_op()), the registered ops below are the path, so the graph has no breaks.


def _recon_forward(recon, x, recon_logvar, logvar_value, likelihood, reduction, grad_recon, grad_logvar):
    """(loss, d_recon or None, d_logvar or None) from ONE launch. For a scalar reduction the
    gradients for grad_output = 1 (already divided by the divisor) come from the same pass;
    for "none" nothing is written (grad_output is per row: backward recomputes)."""
    B, numel = recon.shape[0], recon.numel()
    fused = reduction != "none"
    loss, dr, dv = kernels.recon_loss_fwd(
        recon, x, recon_logvar, logvar_value, likelihood, not fused,
        reduction_divisor(reduction, B, numel), grad_recon and fused, grad_logvar and fused,
    )
    return _nan_if_empty(loss, reduction, B, numel), dr, dv


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


def _last_use_of_saved(grad_loss: Tensor, dr: Tensor | None, dv: Tensor | None) -> bool:
    """True when this backward call is the last use of the node's saved tensors: autograd frees
    them afterwards (no ``retain_graph``), builds no graph of the backward (no
    ``create_graph``), and nothing is being traced (plain tensors, not the fake or functional
    ones of torch.compile / AOT autograd). Outside a backward pass the engine's query answers
    True (keep), so the answer is then False."""
    return not (
        torch.is_grad_enabled()
        or type(grad_loss) is not Tensor
        or (dr is not None and type(dr) is not Tensor)
        or (dv is not None and type(dv) is not Tensor)
        or torch.compiler.is_compiling()
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
    """The eager path: same launchers and bodies as the custom op, less dispatch. When the
    forward wrote every gradient backward needs (a scalar reduction, x not requiring grad), it
    saves only those and backward just scales them; otherwise it saves the inputs too and
    backward takes the general body."""

    @staticmethod
    def forward(ctx, recon, x, recon_logvar, logvar_value, likelihood, reduction, grad_recon, grad_logvar):
        loss, dr, dv = _recon_forward(
            recon, x, recon_logvar, logvar_value, likelihood, reduction, grad_recon, grad_logvar
        )
        need_r, need_x, need_v = ctx.needs_input_grad[:3]
        ctx.scale_only = (
            reduction != "none" and not need_x
            and (dr is not None or not need_r) and (dv is not None or not need_v)
        )
        if ctx.scale_only:
            ctx.save_for_backward(dr if need_r else None, dv if need_v else None)
            return loss
        ctx.save_for_backward(recon, x, recon_logvar, dr, dv)
        ctx.logvar_value, ctx.likelihood, ctx.reduction = logvar_value, likelihood, reduction
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if not ctx.scale_only:
            return *_recon_grads(ctx, grad_loss, _rows_backward_eager), None, None, None, None, None
        dr, dv = ctx.saved_tensors  # one output: grad_loss is a tensor (materialized)
        in_place = _last_use_of_saved(grad_loss, dr, dv)
        d_recon = None if dr is None else _scaled(dr, grad_loss, in_place)
        d_logvar = None if dv is None else _scaled(dv, grad_loss, in_place)
        return d_recon, None, d_logvar, None, None, None, None, None


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
