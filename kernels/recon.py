"""Fused reconstruction losses: per-sample negative log-likelihood, its gradient and the
batch reduction in ONE launch.

Each row of ``recon`` (one sample) is summed over all its features. A row is handed to the
kernel as one dense block of D elements in MEMORY order (the sum over a row does not depend on
the order), with a row stride: contiguous, channels_last and ``chunk`` views go in without a
copy. The gradient is written with the same feature strides as ``recon`` (row stride D).

The kernels and their launchers are here; the per-element math and the tile helpers are in
``kernels/_recon_terms.py``, the in-launch batch reduction in ``kernels/_recon_reduce.py``,
the host-side layout and plan in ``kernels/_recon_plan.py``.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import TicketCounters, device_guard, loss_dtype
from ._launch import CachedKernel, launch_key
from ._recon_plan import (
    ELEMS_PER_THREAD,
    LIKELIHOOD_CODES,
    MAX_WARPS,
    dv_row_stride,
    empty_grads,
    fwd_plan,
    grad_strides,
    layout,
    new_grad,
    prepare,
)
from ._recon_reduce import N_COUNTERS, reduce_losses
from ._recon_terms import (
    DV_NONE,
    forward_tile,
    row_tile,
    store_grads,
    tile_terms,
    to_compute,
)

__all__ = [
    "LIKELIHOOD_CODES",
    "ReconOutputs",
    "grad_strides",
    "recon_loss_bwd",
    "recon_loss_fwd",
    "recon_loss_scale_grad",
]


# Forward: one program per tile (row, chunk of BLOCK_D features); or, for a scalar reduction
# over inputs laid out alike as one dense block of B * D elements (FLAT: rows do not matter
# to a total), one per BLOCK_D block of that block (fewer address computations, and no
# masks where BLOCK_D divides B * D rather than D). Loss and gradients
# are multiplied by 1/divisor (1 for "sum" and "none", B for "batchmean", B*D for "mean"), so
# that backward only scales them by grad_output. The divisor is an int (i64 past 2**31, so
# B*D cannot overflow); its reciprocal is taken once per program. The batch reduction happens
# in the same launch (kernels/_recon_reduce.py: a last-program ticket).
@triton.jit
def _recon_loss_fwd_kernel(
    r_ptr,  # (B, D) recon rows: row stride r_row_stride, features unit-stride
    x_ptr,  # (B, D) target rows (its own dtype): row stride x_row_stride
    v_ptr,  # log-variance rows (V_ELEMENTS), one value per row (V_ROW) or unused (V_SCALAR)
    dr_ptr,  # (B, D) d loss / d recon in recon's dtype (WRITE_DR): row stride dr_row_stride
    dv_ptr,  # (B, D) d loss / d v rows (DV_ELEMENTS) or (B * n_chunks,) per-tile sums (DV_PARTIALS)
    partial_ptr,  # per-program loss sums: by program (OUT_TOTAL), chunk-major (OUT_ROWS)
    counters_ptr,  # int32 ticket counters (top, then one per group), 0 between launches
    out_ptr,  # (B,) per-row losses or () the total, divided by divisor
    kl_ptr,  # (B,) or () KL values added to the losses (ADD_KL), element stride kl_stride
    elbo_ptr,  # out's shape: out + beta * kl (ADD_KL)
    D,  # features per row
    n_chunks,  # tiles per row
    n_rows,  # B
    n_programs,  # the grid (an argument: its divisibility is known)
    r_row_stride,
    x_row_stride,
    v_row_stride,  # 0 when v is shared by all rows
    dr_row_stride,
    dv_row_stride,
    kl_stride,  # 1 for a KL per row, 0 for one KL for all
    divisor,  # int: losses and gradients are divided by it
    logvar_value,  # fp32 log-variance for V_SCALAR
    beta,  # fp32 KL weight (ADD_KL)
    LIKELIHOOD: tl.constexpr,
    FULL: tl.constexpr,  # gaussian: include 0.5 log(2 pi) per element
    V_MODE: tl.constexpr,
    DV_MODE: tl.constexpr,
    WRITE_DR: tl.constexpr,
    OUT: tl.constexpr,
    ADD_KL: tl.constexpr,  # also write out + beta * kl to elbo_ptr
    F64: tl.constexpr,
    BLOCK_D: tl.constexpr,
    EVEN_D: tl.constexpr,  # BLOCK_D divides D: no masks
    RBLOCK: tl.constexpr,
    FLAT: tl.constexpr,  # one BLOCK_D block of the dense B * D elements per program
    GROUP: tl.constexpr,  # programs per ticket group
    SBLOCK: tl.constexpr,  # group sums the last program adds per step
):
    pid = tl.program_id(0)
    scale = 1.0 / to_compute(divisor, F64)
    total = forward_tile(
        pid, r_ptr, x_ptr, v_ptr, dr_ptr, dv_ptr, D, n_chunks, n_rows, r_row_stride,
        x_row_stride, v_row_stride, dr_row_stride, dv_row_stride, scale, logvar_value,
        LIKELIHOOD, FULL, V_MODE, DV_MODE, WRITE_DR, F64, BLOCK_D, EVEN_D, FLAT,
    )
    reduce_losses(
        total, pid, partial_ptr, counters_ptr, out_ptr, kl_ptr, elbo_ptr, n_programs, n_chunks,
        n_rows, kl_stride, beta, OUT, ADD_KL, RBLOCK, GROUP, SBLOCK,
    )


# Backward for reduction "none": grad_output g is per row, so the gradient is recomputed here
# and scaled by g[row]: dr = g dr_elem, dv = g dv_elem.
@triton.jit
def _recon_loss_bwd_kernel(
    r_ptr,  # (B, D) recon rows: row stride r_row_stride
    x_ptr,  # (B, D) target rows: row stride x_row_stride
    v_ptr,  # as in the forward kernel
    g_ptr,  # (B,) grad_output, stride g_stride (0 when expanded)
    dr_ptr,  # (B, D) d recon rows (WRITE_DR): row stride dr_row_stride
    dv_ptr,  # (B, D) d v rows (DV_ELEMENTS) or (B * n_chunks,) per-tile sums (DV_PARTIALS)
    D,
    n_chunks,
    r_row_stride,
    x_row_stride,
    v_row_stride,
    dr_row_stride,
    dv_row_stride,
    g_stride,
    logvar_value,
    LIKELIHOOD: tl.constexpr,
    V_MODE: tl.constexpr,
    DV_MODE: tl.constexpr,
    WRITE_DR: tl.constexpr,
    F64: tl.constexpr,
    BLOCK_D: tl.constexpr,
    EVEN_D: tl.constexpr,
):
    pid = tl.program_id(0)
    row64, start, cols, mask = row_tile(pid, n_chunks, D, BLOCK_D)
    _, dr, dv = tile_terms(  # FULL: the loss is unused
        r_ptr + row64 * r_row_stride + start + cols, x_ptr + row64 * x_row_stride + start + cols,
        v_ptr + row64 * v_row_stride, start + cols, mask, logvar_value, LIKELIHOOD, True, V_MODE,
        F64, EVEN_D,
    )
    g = to_compute(tl.load(g_ptr + row64 * g_stride), F64)
    store_grads(
        dr_ptr + row64 * dr_row_stride + start + cols,
        dv_ptr + row64 * dv_row_stride + start + cols,
        dv_ptr + pid, g * dr, g * dv, mask, WRITE_DR, DV_MODE, EVEN_D,
    )


# grad *= g for a dense buffer, where g is a scalar on the device: every program returns at
# once when g is exactly 1 (the common loss.backward()), so then nothing crosses memory and
# the host never reads g.
@triton.jit
def _recon_loss_scale_grad_kernel(
    g_ptr,  # () grad_output
    grad_ptr,  # (n,) the dense gradient buffer, scaled in place
    n,
    BLOCK: tl.constexpr,
):
    g = tl.load(g_ptr)  # fp32, or fp64 when the loss is fp64
    if g != 1.0:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        grad = tl.load(grad_ptr + offs, mask=mask)
        tl.store(grad_ptr + offs, (grad.to(g.dtype) * g).to(grad_ptr.dtype.element_ty), mask=mask)


_COUNTERS = TicketCounters(N_COUNTERS)  # this kernel's own


class ReconOutputs(NamedTuple):
    """What :func:`recon_loss_fwd` returns: the loss (float32, float64 for float64 inputs),
    ``loss + beta * kl`` when a KL was given, and the gradients it was asked to write."""

    loss: torch.Tensor
    elbo: torch.Tensor | None
    d_recon: torch.Tensor | None
    d_logvar: torch.Tensor | None


_FWD = CachedKernel(_recon_loss_fwd_kernel)
_BWD = CachedKernel(_recon_loss_bwd_kernel)
_SCALE = CachedKernel(_recon_loss_scale_grad_kernel)


def recon_loss_fwd(
    recon: torch.Tensor,
    x: torch.Tensor,
    recon_logvar: torch.Tensor | None,
    logvar_value: float,
    likelihood: str,
    per_row: bool,
    divisor: int,
    grad_recon: bool,
    grad_logvar: bool,
    full: bool = True,
    kl: torch.Tensor | None = None,
    beta: float = 1.0,
) -> ReconOutputs:
    """Per-sample reconstruction loss reduced in the same launch, and optionally its gradient.

    Args:
        recon: ``(B, *feature_shape)`` decoder output (logits, probabilities or mean), float.
        x: target of recon's shape, any float dtype (loaded in its own dtype).
        recon_logvar: "gaussian" only: a tensor broadcastable to recon (read with stride 0
            where it is broadcast), or None to use ``logvar_value`` for every element.
        logvar_value: the scalar log-variance when recon_logvar is None ("gaussian").
        likelihood: a key of :data:`LIKELIHOOD_CODES`.
        per_row: True -> the loss per row ``(B,)``; False -> their total ``()``.
        divisor: the loss and the written gradients are divided by it (1 for "none"/"sum",
            B for "batchmean", B*D for "mean").
        grad_recon, grad_logvar: which gradients to write (grad_logvar needs recon_logvar).
        full: "gaussian": include 0.5 log(2 pi) per element.
        kl: a KL to add, ``()`` or ``(B,)`` (one per row; needs ``per_row``), float32 (float64
            for float64 inputs); then ``elbo = loss + beta * kl`` is written too, by the same
            launch.
        beta: the KL's weight (passed to the kernel as float32).

    Returns:
        :class:`ReconOutputs`: loss in nats; d_recon in recon's dtype and shape with
        :func:`grad_strides`; d_logvar in recon_logvar's dtype and shape (reduced over
        broadcast dims). Computed in float32, or float64 when any input is float64.
    """
    recon, x, logvar, B, D, f64 = prepare(recon, x, recon_logvar, likelihood)
    acc = torch.float64 if f64 else loss_dtype(recon.dtype)
    out = recon.new_empty(size=(B,) if per_row else (), dtype=acc)  # size= : see _new_grad
    elbo = None if kl is None else torch.empty_like(out)
    if B * D == 0:
        dr, dv = empty_grads(recon, logvar, grad_recon, grad_logvar)
        out.zero_()
        return ReconOutputs(out, None if kl is None else torch.add(out, kl, alpha=beta), dr, dv)
    dv_mode = logvar.dv_mode(grad_logvar)
    plan = fwd_plan(
        B, D, recon.stride(0), x.stride(0), logvar.mode, logvar.row_stride, dv_mode,
        kl.stride(0) if kl is not None and kl.dim() else 0, divisor, likelihood, full,
        grad_recon, per_row, kl is not None, f64,
    )
    dr = new_grad(recon) if grad_recon else None
    dv_buf = recon
    if dv_mode != DV_NONE.value:
        dv_buf = logvar.grad_buffer(recon, B * plan.n_chunks)
    partial = out if not plan.n_partials else recon.new_empty(size=(plan.n_partials,), dtype=acc)
    pointers = (
        recon,  # r_ptr
        x,  # x_ptr
        recon if logvar.tensor is None else logvar.tensor,  # v_ptr
        recon if dr is None else dr,  # dr_ptr
        dv_buf,  # dv_ptr
        partial,  # partial_ptr
        out if not plan.n_partials else _COUNTERS[recon.device],  # counters_ptr
        out,  # out_ptr
        out if kl is None else kl,  # kl_ptr
        out if elbo is None else elbo,  # elbo_ptr
    )
    floats = (float(logvar_value), float(beta))  # logvar_value, beta
    with device_guard(recon):
        # Positional arguments, in the kernel's order (named in fwd_plan): keywords would
        # cost more host time than the rest of the launcher (Triton repacks them per launch).
        _FWD.launch(
            launch_key(pointers, plan.key_values), plan.n_programs,
            pointers + plan.values + floats + plan.constexprs, plan.num_warps,
        )
    dv = logvar.reduce_grad(dv_buf, recon, plan.n_chunks) if dv_mode != DV_NONE.value else None
    return ReconOutputs(out, elbo, dr, dv)


def recon_loss_bwd(
    recon: torch.Tensor,
    x: torch.Tensor,
    recon_logvar: torch.Tensor | None,
    logvar_value: float,
    likelihood: str,
    grad_rows: torch.Tensor,
    grad_recon: bool,
    grad_logvar: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradient of ``sum_b grad_rows[b] * loss_rows[b]`` (reduction "none"), recomputed.

    Arguments as :func:`recon_loss_fwd`; ``grad_rows`` is ``(B,)`` float (any stride,
    including an expanded view). Returns ``(d_recon or None, d_logvar or None)`` with the
    dtypes, shapes and strides :func:`recon_loss_fwd` gives them.
    """
    recon, x, logvar, B, D, f64 = prepare(recon, x, recon_logvar, likelihood)
    dv_mode = logvar.dv_mode(grad_logvar)
    if B * D == 0 or not (grad_recon or dv_mode != DV_NONE.value):
        return empty_grads(recon, logvar, grad_recon, grad_logvar)
    block_d, num_warps, n_chunks, _ = layout(B, D)
    n_programs = B * n_chunks
    dr = new_grad(recon) if grad_recon else None
    dv_buf = recon if dv_mode == DV_NONE.value else logvar.grad_buffer(recon, n_programs)
    pointers = (
        recon,  # r_ptr
        x,  # x_ptr
        recon if logvar.tensor is None else logvar.tensor,  # v_ptr
        grad_rows,  # g_ptr
        recon if dr is None else dr,  # dr_ptr
        dv_buf,  # dv_ptr
    )
    values = (
        D,
        n_chunks,
        recon.stride(0),  # r_row_stride
        x.stride(0),  # x_row_stride
        logvar.row_stride,  # v_row_stride
        D,  # dr_row_stride
        dv_row_stride(dv_mode, D),
        grad_rows.stride(0),  # g_stride
    )
    constexprs = (
        LIKELIHOOD_CODES[likelihood],  # LIKELIHOOD
        logvar.mode,  # V_MODE
        dv_mode,  # DV_MODE
        dr is not None,  # WRITE_DR
        f64,  # F64
        block_d,  # BLOCK_D
        D % block_d == 0,  # EVEN_D
    )
    with device_guard(recon):
        _BWD.launch(
            launch_key(pointers, values + constexprs), n_programs,
            pointers + values + (float(logvar_value),) + constexprs, num_warps,
        )
    dv = logvar.reduce_grad(dv_buf, recon, n_chunks) if dv_mode != DV_NONE.value else None
    return dr, dv


_SCALE_BLOCK = ELEMS_PER_THREAD * 32 * MAX_WARPS


def recon_loss_scale_grad(grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """``grad *= grad_output`` in place and return ``grad``; nothing is read or written when
    the scalar ``grad_output`` (a device tensor, never read on the host) is exactly 1.

    ``grad`` must be dense (the gradients :func:`recon_loss_fwd` writes are).
    """
    n = grad.numel()
    if n:
        pointers = (grad_output, grad)  # g_ptr, grad_ptr
        with device_guard(grad):
            _SCALE.launch(
                launch_key(pointers, (n,)), -(-n // _SCALE_BLOCK),
                pointers + (n, _SCALE_BLOCK), MAX_WARPS,  # n, BLOCK
            )
    return grad
