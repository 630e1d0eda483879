"""Fused reconstruction losses: per-sample negative log-likelihood, its gradient and the
batch reduction in ONE launch.

Each row of ``recon`` (one sample) is summed over all its features. A row is handed to the
kernel as one dense block of D elements in MEMORY order (the sum over a row does not depend on
the order), with a row stride: contiguous, channels_last and ``chunk`` views go in without a
copy. The gradient is written with the same feature strides as ``recon`` (row stride D).
"""

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import (
    INTERPRETED,
    TicketCounters,
    check_launchable,
    device_guard,
    loss_dtype,
    pow2_at_least,
)
from ._launch import CachedKernel, launch_key
from ._math import log1p_unit

LIKELIHOOD_CODES = {"bernoulli": 0, "mse": 1, "gaussian": 2, "bernoulli_probs": 3}
_ELEMS_PER_THREAD = 16  # four 128-bit loads per fp32 input, two per bf16/fp16 input
_MAX_WARPS = 8
_MAX_GRID = 2**31 - 1  # CUDA's limit on a launch grid's x dimension
_HALF_LOG_2PI = tl.constexpr(0.9189385332046727)  # log(2 pi) / 2
INTERPRET = tl.constexpr(INTERPRETED)  # kernels run through Triton's CPU interpreter

# How the log-variance v of "gaussian" reaches the kernel.
V_ELEMENTS = tl.constexpr(0)  # one value per element: v_ptr rows with stride v_row_stride
V_ROW = tl.constexpr(1)  # one value per row (stride-0 features): a scalar load per program
V_SCALAR = tl.constexpr(2)  # one float for everything: the argument logvar_value, no tensor
# What the kernel writes for d loss / d v.
DV_NONE = tl.constexpr(0)
DV_ELEMENTS = tl.constexpr(1)  # per element, rows of dv_ptr with stride dv_row_stride
DV_PARTIALS = tl.constexpr(2)  # per program, the sum over its elements (v constant in a row)
# Where the reduced loss goes.
OUT_ROWS_DIRECT = tl.constexpr(0)  # "none", one program per row: its sum is the row's loss
OUT_ROWS = tl.constexpr(1)  # "none", several programs per row: the last program adds them
OUT_TOTAL = tl.constexpr(2)  # a scalar reduction: the last program adds all partials


# GPU-only fast forms (FAST: fp32 compute compiled for a GPU; inline PTX does not run under the
# interpreter, where plain tl.exp and a division take their place).
#   ex2.approx.ftz.f32: max error 2 ulp (PTX ISA), like tl.exp's ex2.approx.f32, but results
#     below 2^-126 flush to 0 instead of taking the subnormal fix-up path. Bernoulli (|l| >
#     87.3): log(1 + t) and t/(1+t) lose at most 1.2e-38 absolute. Gaussian exp(-v) (v > 87.3):
#     (x - m)^2 exp(-v) loses at most (x - m)^2 * 1.2e-38.
#   rcp.approx.ftz.f32: max error 1 ulp for 1 + t in [1, 2] (no subnormals, no overflow), where
#     a division (div.full.f32) costs a range check and scaling around the same MUFU.RCP.
@triton.jit
def _ex2_ftz(a):
    return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [a], dtype=tl.float32,
                                     is_pure=True, pack=1)


@triton.jit
def _rcp_ftz(a):
    return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [a], dtype=tl.float32,
                                     is_pure=True, pack=1)


# Per element, with r the decoder output (logits l, probabilities p or mean m), x the target,
# v the log-variance (all computed in fp32, or fp64 when an input is fp64):
#   bernoulli:       loss = l (1 - x) if l >= 0 else -l x, plus log(1 + exp(-|l|))
#                    dl = sigmoid(l) - x
#   bernoulli_probs: loss = (x - 1) max(log(1 - p), -100) - x max(log p, -100)
#                    dp = (p - x) / max(p (1 - p), 1e-12)      (torch's binary_cross_entropy)
#   mse:             loss = (r - x)^2                           dr = 2 (r - x)
#   gaussian:        loss = 0.5 (log 2pi + v + (x - m)^2 exp(-v))   (log 2pi only if FULL)
#                    dm = (m - x) exp(-v)                       dv = 0.5 (1 - (x - m)^2 exp(-v))
# Bernoulli on logits: with t = exp(-|l|) in (0, 1], sigmoid(l) is 1/(1+t) for l >= 0 and
# t/(1+t) below: ONE reciprocal serves both branches, nothing overflows for any |l|, and
# log(1 + t) is a polynomial on (0, 1] (log1p_unit, error budget beside it). Writing
# max(l, 0) - l x as l (1 - x) or -l x makes a confidently wrong infinite logit give +inf.
@triton.jit
def _recon_terms(r, x, v, inv_var, LIKELIHOOD: tl.constexpr, FULL: tl.constexpr,
                 FAST: tl.constexpr):
    if LIKELIHOOD == 0:
        if FAST:
            t = _ex2_ftz(tl.abs(r) * -1.4426950408889634)
            sig_abs = _rcp_ftz(1.0 + t)
        else:
            t = tl.exp(-tl.abs(r))
            sig_abs = 1.0 / (1.0 + t)
        pos = r >= 0
        loss = r * tl.where(pos, 1.0 - x, -x) + log1p_unit(t)
        dr = tl.where(pos, sig_abs, t * sig_abs) - x
        dv = dr
    elif LIKELIHOOD == 3:
        log_p = tl.maximum(tl.log(r), -100.0, propagate_nan=tl.PropagateNan.ALL)
        q = 1.0 - r  # log(1 - p) = log(q) * (-p) / (q - 1): exact where q rounds (Goldberg)
        log_q = tl.where(q == 1.0, -r, tl.log(q) * (r / (1.0 - q)))
        log_q = tl.maximum(log_q, -100.0, propagate_nan=tl.PropagateNan.ALL)
        loss = (x - 1.0) * log_q - x * log_p
        dr = (r - x) / tl.maximum(r * q, 1e-12, propagate_nan=tl.PropagateNan.ALL)
        dv = dr
    elif LIKELIHOOD == 1:
        diff = r - x
        loss = diff * diff
        dr = 2.0 * diff
        dv = dr
    else:
        diff = r - x
        scaled = diff * diff * inv_var
        loss = 0.5 * (v + scaled)
        if FULL:  # the normalizing constant 0.5 log(2 pi) (F.gaussian_nll_loss's full=True)
            loss += _HALF_LOG_2PI
        dr = diff * inv_var
        dv = 0.5 - 0.5 * scaled
    return loss, dr, dv


@triton.jit
def _acc(t, F64: tl.constexpr):
    """The computation dtype: fp64 when any input is fp64, fp32 otherwise."""
    if F64:
        return tl.cast(t, tl.float64)
    else:
        return tl.cast(t, tl.float32)


@triton.jit
def _load(ptr, mask, F64: tl.constexpr, EVEN_D: tl.constexpr):
    if EVEN_D:
        return _acc(tl.load(ptr), F64)
    else:
        return _acc(tl.load(ptr, mask=mask, other=0.0), F64)


@triton.jit
def _store(ptr, value, mask, EVEN_D: tl.constexpr):
    if EVEN_D:
        tl.store(ptr, value.to(ptr.dtype.element_ty))
    else:
        tl.store(ptr, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _terms(
    r_at, x_at, v_base, offs, mask, logvar_value, LIKELIHOOD: tl.constexpr, FULL: tl.constexpr,
    V_MODE: tl.constexpr, F64: tl.constexpr, EVEN: tl.constexpr,
):
    """A tile's loss, gradients d recon and d v, from its element pointers r_at and x_at; the
    log-variance at v_base + offs (V_ELEMENTS), at v_base (V_ROW) or logvar_value. The mask
    is not applied when EVEN (no predicates, no zero fill, no select per element)."""
    FAST: tl.constexpr = not F64 and not INTERPRET
    r = _load(r_at, mask, F64, EVEN)
    x = _load(x_at, mask, F64, EVEN)
    v = r
    inv_var = r
    if LIKELIHOOD == 2:
        if V_MODE == V_ELEMENTS:
            v = _load(v_base + offs, mask, F64, EVEN)
        elif V_MODE == V_ROW:
            v = _acc(tl.load(v_base), F64)
        else:
            v = _acc(logvar_value, F64)
        if FAST:
            inv_var = _ex2_ftz(v * -1.4426950408889634)
        else:
            inv_var = tl.exp(-v)
    return _recon_terms(r, x, v, inv_var, LIKELIHOOD, FULL, FAST)


@triton.jit
def _row_tile(tile, n_chunks, D, BLOCK_D: tl.constexpr):
    """Tile ``tile`` of the row tiles (tiles numbered row by row, n_chunks a row): its row
    (int64), first column (int64), the columns and their mask. Row and start are int64 scalars
    (row * stride and a row itself may pass 2**31); per element only the int32 column inside
    the chunk is added."""
    row = tile // n_chunks
    start = (tile - row * n_chunks).to(tl.int64) * BLOCK_D
    cols = tl.arange(0, BLOCK_D)
    mask = cols < tl.minimum(D - start, BLOCK_D).to(tl.int32)  # unused (and dropped) if EVEN_D
    return row.to(tl.int64), start, cols, mask


@triton.jit
def _store_grads(
    dr_at, dv_at, dv_sum_at, dr, dv, mask, WRITE_DR: tl.constexpr, DV_MODE: tl.constexpr,
    EVEN: tl.constexpr,
):
    """Store a tile's gradients at element pointers dr_at, dv_at; a log-variance shared by the
    tile's elements gets their sum, at dv_sum_at (DV_PARTIALS)."""
    if WRITE_DR:
        _store(dr_at, dr, mask, EVEN)
    if DV_MODE == DV_ELEMENTS:
        _store(dv_at, dv, mask, EVEN)
    elif DV_MODE == DV_PARTIALS:
        if not EVEN:
            dv = tl.where(mask, dv, 0.0)
        tl.store(dv_sum_at, tl.sum(dv, axis=0))


@triton.jit
def _store_losses(out_ptr, elbo_ptr, kl_ptr, at, rec, kl_stride, beta, mask, ADD_KL: tl.constexpr):
    """Store the reconstruction losses ``rec`` at offsets ``at`` of out (under ``mask``) and,
    with ADD_KL, the objective rec + beta * kl beside them (kl read at ``at * kl_stride``:
    one value per row, or stride 0 for one value for all)."""
    tl.store(out_ptr + at, rec, mask=mask)
    if ADD_KL:
        kl = tl.load(kl_ptr + at * kl_stride, mask=mask)
        tl.store(elbo_ptr + at, rec + tl.cast(beta, rec.dtype) * kl, mask=mask)


@triton.jit
def _last_program(counters_ptr, partial_ptr, pid, n_programs, GROUP: tl.constexpr,
                  SUM_GROUPS: tl.constexpr):
    """Two-level last-program ticket: True in exactly one program, which then sees every
    program's stores. Each program takes a ticket from its group's counter (GROUP programs a
    group, each counter on its own 32-byte sector); the last of a group adds the group's
    partials (SUM_GROUPS: into partial_ptr[n_programs + group], in a fixed order) and takes a
    ticket from the top counter; the last of those is the last program. Every counter is
    reset by the program that drew its last ticket."""
    group = pid // GROUP
    size = tl.minimum(n_programs - group * GROUP, GROUP)
    tl.debug_barrier()
    ticket = tl.atomic_add(counters_ptr + (1 + group) * _COUNTER_STRIDE, 1, sem="acq_rel")
    last = pid < 0
    if ticket == size - 1:
        tl.store(counters_ptr + (1 + group) * _COUNTER_STRIDE, 0)
        if SUM_GROUPS:
            offs = tl.arange(0, GROUP)
            parts = tl.load(partial_ptr + group * GROUP + offs, mask=offs < size, other=0.0,
                            cache_modifier=".cg")
            tl.store(partial_ptr + n_programs + group, tl.sum(parts, axis=0))
            tl.debug_barrier()
        ticket = tl.atomic_add(counters_ptr, 1, sem="acq_rel")
        if ticket == tl.cdiv(n_programs, GROUP) - 1:
            tl.store(counters_ptr, 0)
            last = pid >= 0
    return last


@triton.jit
def _add_partials(
    partial_ptr, out_ptr, elbo_ptr, kl_ptr, n_programs, n_chunks, n_rows, kl_stride, beta,
    OUT: tl.constexpr, ADD_KL: tl.constexpr, RBLOCK: tl.constexpr, GROUP: tl.constexpr,
    SBLOCK: tl.constexpr,
):
    """Run by the last program only, in a fixed order (so the result is deterministic): the
    group sums into the total (OUT_TOTAL), or the per-program partials into one value per
    row."""
    acc_ty = partial_ptr.dtype.element_ty
    if OUT == OUT_TOTAL:
        n_groups = tl.cdiv(n_programs, GROUP)
        offs = tl.arange(0, SBLOCK)
        acc = tl.zeros([SBLOCK], acc_ty)
        for first in range(0, n_groups, SBLOCK):
            idx = first + offs
            acc += tl.load(partial_ptr + n_programs + idx, mask=idx < n_groups, other=0.0,
                           cache_modifier=".cg")
        _store_losses(out_ptr, elbo_ptr, kl_ptr, 0, tl.sum(acc, axis=0), 0, beta, None, ADD_KL)
    else:
        offs = tl.arange(0, RBLOCK)
        for first in range(0, n_rows, RBLOCK):
            rows = first + offs
            keep = rows < n_rows
            acc = tl.zeros([RBLOCK], acc_ty)
            for c in range(0, n_chunks):  # chunk-major partials: a dense run of rows per chunk
                acc += tl.load(partial_ptr + c * n_rows + rows, mask=keep, other=0.0,
                               cache_modifier=".cg")
            _store_losses(out_ptr, elbo_ptr, kl_ptr, rows, acc, kl_stride, beta, keep, ADD_KL)


# Forward: one program per tile (row, chunk of BLOCK_D features); or, for a scalar reduction
# over inputs laid out alike as one dense block of B * D elements (FLAT: rows do not matter
# to a total), one per BLOCK_D block of that block (fewer address computations, and no
# masks where BLOCK_D divides B * D rather than D). Loss and gradients
# are multiplied by 1/divisor (1 for "sum" and "none", B for "batchmean", B*D for "mean"), so
# that backward only scales them by grad_output. The divisor is an int (i64 past 2**31, so
# B*D cannot overflow); its reciprocal is taken once per program.
#
# One launch for the reduction too (a two-level last-program ticket, _last_program): every
# program stores its partial sum, then takes a ticket with an atomic add on its group's
# counter, the last of a group on the top counter. Memory ordering: the barrier makes all of
# the program's threads' stores happen before thread 0's atomic, whose release (acq_rel, GPU
# scope) publishes them; the program that draws a counter's last ticket has, through the same
# atomic's acquire (and the barrier that broadcasts its result), seen every earlier release on
# it, and its own release on the top counter passes them on (the PTX memory model's causality
# order is transitive), so the last program's loads observe all partials (read with .cg, from
# L2). Each counter is reset to 0 by the program that drew its last ticket: nobody touches it
# again in this launch, and the next launch on the stream starts after this one ends, so
# every launch -- and every CUDA-graph replay, which replays the resets too -- starts from 0.
# Groups: atomics on one address are served one after another, and on an H200 one counter
# for 49,152 programs cost about a clock each (see _GROUPS). Under the interpreter programs
# run one after another, so the last ticket is the last program.
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
    scale = 1.0 / _acc(divisor, F64)
    if FLAT:  # (EVEN_D: BLOCK_D divides B * D)
        cols = tl.arange(0, BLOCK_D)
        at = pid.to(tl.int64) * BLOCK_D
        mask = cols < tl.minimum(n_rows.to(tl.int64) * D - at, BLOCK_D).to(tl.int32)
        loss, dr, dv = _terms(
            r_ptr + at + cols, x_ptr + at + cols, v_ptr + at, cols, mask, logvar_value,
            LIKELIHOOD, FULL, V_MODE, F64, EVEN_D,
        )
        _store_grads(dr_ptr + at + cols, dv_ptr + at + cols, dv_ptr, dr * scale, dv * scale,
                     mask, WRITE_DR, DV_MODE, EVEN_D)
    else:
        row64, start, cols, mask = _row_tile(pid, n_chunks, D, BLOCK_D)
        loss, dr, dv = _terms(
            r_ptr + row64 * r_row_stride + start + cols,
            x_ptr + row64 * x_row_stride + start + cols,
            v_ptr + row64 * v_row_stride, start + cols, mask, logvar_value, LIKELIHOOD, FULL,
            V_MODE, F64, EVEN_D,
        )
        _store_grads(
            dr_ptr + row64 * dr_row_stride + start + cols,
            dv_ptr + row64 * dv_row_stride + start + cols,
            dv_ptr + pid, dr * scale, dv * scale, mask, WRITE_DR, DV_MODE, EVEN_D,
        )
    if not EVEN_D:
        loss = tl.where(mask, loss, 0.0)
    total = tl.sum(loss, axis=0) * scale
    if OUT == OUT_ROWS_DIRECT:  # one chunk a row: program pid is row pid
        _store_losses(out_ptr, elbo_ptr, kl_ptr, pid.to(tl.int64), total, kl_stride, beta, None,
                      ADD_KL)
    else:
        slot = pid
        if OUT == OUT_ROWS:  # chunk-major (see _add_partials)
            slot = (pid % n_chunks) * n_rows + pid // n_chunks
        tl.store(partial_ptr + slot, total)
        if _last_program(counters_ptr, partial_ptr, pid, n_programs, GROUP, OUT == OUT_TOTAL):
            _add_partials(
                partial_ptr, out_ptr, elbo_ptr, kl_ptr, n_programs, n_chunks, n_rows, kl_stride,
                beta, OUT, ADD_KL, RBLOCK, GROUP, SBLOCK,
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
    row64, start, cols, mask = _row_tile(pid, n_chunks, D, BLOCK_D)
    _, dr, dv = _terms(  # FULL: the loss is unused
        r_ptr + row64 * r_row_stride + start + cols, x_ptr + row64 * x_row_stride + start + cols,
        v_ptr + row64 * v_row_stride, start + cols, mask, logvar_value, LIKELIHOOD, True, V_MODE,
        F64, EVEN_D,
    )
    g = _acc(tl.load(g_ptr + row64 * g_stride), F64)
    _store_grads(
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


# ------------------------------------------------------------------ host side


@functools.lru_cache(maxsize=512)
def _layout(batch: int, features: int) -> tuple[int, int, int, int]:
    """(BLOCK_D, num_warps, n_chunks, RBLOCK) for rows of ``features`` elements.

    Launch heuristic: 16 elements per thread (128-bit accesses, few registers), as many warps
    as a row needs up to 8 (BLOCK_D <= 4096); a longer row is split over several programs.
    """
    block_d = min(pow2_at_least(features), _ELEMS_PER_THREAD * 32 * _MAX_WARPS)
    num_warps = max(1, block_d // (_ELEMS_PER_THREAD * 32))
    n_chunks = -(-features // block_d)
    if batch * n_chunks > _MAX_GRID:
        raise ValueError(
            f"recon with {batch} rows of {features} elements needs {batch * n_chunks} programs "
            f"of {block_d} elements, more than one launch can have ({_MAX_GRID}); split the batch"
        )
    return block_d, num_warps, n_chunks, max(block_d, 32 * num_warps * 4)


class _FwdPlan(NamedTuple):
    """What a forward launch's shapes, strides and modes decide (:func:`_fwd_plan`)."""

    n_programs: int
    num_warps: int
    n_chunks: int
    n_partials: int  # 0: no partials (the per-row losses are written directly)
    values: tuple  # the integer arguments, in the kernel's order
    constexprs: tuple  # the constexpr arguments, in the kernel's order
    key_values: tuple  # values + constexprs: with the pointers' dtypes, the launch's key


@functools.lru_cache(maxsize=512)
def _fwd_plan(
    B: int, D: int, r_row_stride: int, x_row_stride: int, v_mode: int, v_row_stride: int,
    dv_mode: int, kl_stride: int, divisor: int, likelihood: str, full: bool, write_dr: bool,
    per_row: bool, add_kl: bool, f64: bool,
) -> _FwdPlan:
    """The forward launch for rows of D elements (row strides of recon, x and the
    log-variance as given, the gradients' D), cached: the layout, the output mode, whether
    the rows may be read as flat blocks (a scalar reduction over tensors that are each one
    dense block of B * D elements in the same order), the ticket groups and the partials."""
    block_d, num_warps, n_chunks, rblock = _layout(B, D)
    mode = (
        OUT_ROWS_DIRECT.value if per_row and n_chunks == 1
        else OUT_ROWS.value if per_row else OUT_TOTAL.value
    )
    flat = (
        mode == OUT_TOTAL.value and r_row_stride == D and x_row_stride == D
        and v_mode != V_ROW.value and (v_mode != V_ELEMENTS.value or v_row_stride == D)
        and dv_mode != DV_PARTIALS.value
    )
    n_programs = -(-B * D // block_d) if flat else B * n_chunks
    group = _ticket_group(n_programs)
    # A partial per program, then (OUT_TOTAL) a sum per ticket group.
    n_partials = 0
    if mode != OUT_ROWS_DIRECT.value:
        n_partials = n_programs + (-(-n_programs // group) if mode == OUT_TOTAL.value else 0)
    values = (
        D,
        n_chunks,
        B,  # n_rows
        n_programs,
        r_row_stride,
        x_row_stride,
        v_row_stride,
        D,  # dr_row_stride
        D if dv_mode == DV_ELEMENTS.value else 0,  # dv_row_stride
        kl_stride,
        divisor,
    )
    constexprs = (
        LIKELIHOOD_CODES[likelihood],  # LIKELIHOOD
        full,  # FULL
        v_mode,  # V_MODE
        dv_mode,  # DV_MODE
        write_dr,  # WRITE_DR
        mode,  # OUT
        add_kl,  # ADD_KL
        f64,  # F64
        block_d,  # BLOCK_D
        (B * D if flat else D) % block_d == 0,  # EVEN_D
        rblock,  # RBLOCK
        flat,  # FLAT
        group,  # GROUP
        4 * 32 * num_warps,  # SBLOCK
    )
    return _FwdPlan(
        n_programs, num_warps, n_chunks, n_partials, values, constexprs, values + constexprs
    )


# Ticket groups (see the forward kernel). Every program of the forward takes a ticket, and
# atomics on one address are served one after another: on an H200 the forward at B x D =
# 4096 x 49152 (49,152 programs on one counter) ran about 27 us (fp32 MSE) and 30 us (bf16
# MSE) longer than torch.compile's two-kernel reduction, about one L2 clock per program
# (benchmarks/results/h200-2026-12-04/gpu_check_recon_loss_head.log). Groups of at least 64
# programs, at most _MAX_GROUPS groups, each counter on its own 32-byte sector: the top
# counter takes one ticket per group.
_COUNTER_STRIDE = tl.constexpr(8)  # int32 counters 32 bytes apart
_MAX_GROUPS = 4096
_MIN_GROUP = 64


@functools.lru_cache(maxsize=512)
def _ticket_group(n_programs: int) -> int:
    """Programs per ticket group: a power of two >= _MIN_GROUP, large enough that at most
    _MAX_GROUPS groups cover ``n_programs``."""
    return max(_MIN_GROUP, pow2_at_least(-(-n_programs // _MAX_GROUPS)))


def _dense_rows_impl(shape: tuple, strides: tuple) -> bool:
    """True when each row's features are one dense block of prod(shape[1:]) elements (any
    order of the feature dims: contiguous, channels_last, a ``chunk`` of a wider tensor)."""
    expected = 1
    for size, stride in sorted((p for p in zip(shape[1:], strides[1:]) if p[0] != 1),
                               key=lambda p: p[1]):
        if stride != expected:
            return False
        expected *= size
    return True


_dense_rows = functools.lru_cache(maxsize=512)(_dense_rows_impl)


def _feature_key(shape: tuple, strides: tuple) -> tuple:
    return tuple(s if n != 1 else None for n, s in zip(shape[1:], strides[1:]))


def _grad_strides(shape: tuple, strides: tuple) -> tuple:
    if not _dense_rows_impl(shape, strides):
        return torch.empty(shape, device="meta").stride()
    return (math.prod(shape[1:]),) + tuple(strides[1:])


_grad_strides_cached = functools.lru_cache(maxsize=512)(_grad_strides)


def grad_strides(shape: tuple, strides: tuple) -> tuple:
    """Strides of the gradient the kernels write for a ``recon`` of this shape and strides:
    recon's own feature strides when its rows are dense (so channels_last stays
    channels_last), else contiguous; row stride D. The fake implementations use this too
    (with symbolic sizes under torch.compile, which are not cached)."""
    if all(type(v) is int for v in (*shape, *strides)):
        return _grad_strides_cached(tuple(shape), tuple(strides))
    return _grad_strides(tuple(shape), tuple(strides))


def _same_rows(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` (recon's shape) with its features in ``like``'s memory order: ``t`` itself when it
    already is, else a copy laid out like the kernels' gradient for ``like``."""
    if _dense_rows(t.shape, t.stride()) and (
        _feature_key(t.shape, t.stride()) == _feature_key(like.shape, like.stride())
    ):
        return t
    out = torch.empty_strided(
        like.shape, grad_strides(like.shape, like.stride()), dtype=t.dtype, device=t.device
    )
    return out.copy_(t)


class _LogVar:
    """How recon_logvar (None, or a tensor broadcastable to recon) reaches the kernels:
    ``tensor`` is None (the kernel reads no log-variance tensor) unless it is a Gaussian's."""

    def __init__(self, recon: torch.Tensor | None, logvar: torch.Tensor | None, gaussian: bool):
        self.source, self.full = logvar, False
        self.tensor, self.row_stride, self.mode = None, 0, V_SCALAR.value
        if not gaussian or logvar is None:
            return
        B = recon.shape[0]
        lv = logvar.reshape((1,) * (recon.dim() - logvar.dim()) + tuple(logvar.shape))
        per_batch = lv.shape[0] == B and B != 1
        if math.prod(lv.shape[1:]) == 1:  # one value per row, or for everything: stride 0
            self.tensor, self.mode = lv, V_ROW.value
        else:
            rows = lv.expand((lv.shape[0],) + tuple(recon.shape[1:]))
            self.tensor, self.mode = (
                _same_rows(rows, recon[:1] if not per_batch else recon), V_ELEMENTS.value
            )
        self.row_stride = self.tensor.stride(0) if per_batch else 0
        # recon_logvar of recon's shape: its gradient is written per element in its dtype;
        # anything broadcast is reduced to its own shape (per row in-kernel, else by a sum).
        self.full = tuple(logvar.shape) == tuple(recon.shape)

    def grad_buffer(self, recon, n_tiles):
        """A new buffer for d loss / d logvar: a sum per tile (V_ROW: DV_PARTIALS), else one
        value per element laid out as recon's gradient (row stride D: DV_ELEMENTS)."""
        acc = loss_dtype(recon.dtype)
        if self.mode == V_ROW.value:
            return torch.empty(n_tiles, dtype=acc, device=recon.device)
        dtype = self.source.dtype if self.full else acc  # summed later: accumulate in acc
        return torch.empty_strided(
            recon.shape, grad_strides(recon.shape, recon.stride()), dtype=dtype, device=recon.device
        )

    def reduce_grad(self, buf, recon, n_chunks):
        """d loss / d logvar in logvar's shape and dtype from the kernel's buffer."""
        B = recon.shape[0]
        if self.mode == V_ROW.value:
            buf = buf.view(B, n_chunks).sum(1).view((B,) + (1,) * (recon.dim() - 1))
        elif self.full:
            return buf
        return buf.sum_to_size(
            (1,) * (recon.dim() - self.source.dim()) + tuple(self.source.shape)
        ).reshape(self.source.shape).to(self.source.dtype)


_COUNTERS = TicketCounters(1 + _MAX_GROUPS * _COUNTER_STRIDE.value)  # this kernel's own


_NO_LOGVAR = _LogVar(None, None, False)  # shared by every call without a log-variance tensor


def _prepare(recon, x, recon_logvar, likelihood):
    check_launchable("recon", recon)
    if recon.is_contiguous():
        if not x.is_contiguous():  # both contiguous (one shape): the same layout, nothing to check
            x = _same_rows(x, recon)
    else:
        if not _dense_rows(recon.shape, recon.stride()):
            recon = recon.contiguous()
        x = _same_rows(x, recon)
    gaussian = likelihood == "gaussian" and recon_logvar is not None
    logvar = _LogVar(recon, recon_logvar, True) if gaussian else _NO_LOGVAR
    B = recon.shape[0]
    D = recon.numel() // B if B else 0
    f64 = torch.float64 in (recon.dtype, x.dtype) or (
        recon_logvar is not None and recon_logvar.dtype == torch.float64
    )
    return recon, x, logvar, B, D, f64


def _new_grad(recon: torch.Tensor) -> torch.Tensor:
    """An uninitialized d_recon: recon's dtype and shape, :func:`grad_strides` strides. For a
    contiguous recon of B > 1 rows (row stride D) those are recon's own strides, which
    ``empty_like`` copies at a third of the host cost of ``new_empty_strided``. (The same
    holds for ``new_empty``, which costs about 0.8 us with the size as a keyword but 1.2-1.4
    us with a positional tuple.)"""
    if recon.shape[0] > 1 and recon.is_contiguous():
        return torch.empty_like(recon)
    return recon.new_empty_strided(recon.shape, _grad_strides_cached(recon.shape, recon.stride()))


def _empty_grads(recon, logvar, grad_recon, grad_logvar):
    dr = _new_grad(recon) if grad_recon else None
    dv = None
    if grad_logvar and logvar.source is not None:
        full = logvar.full and logvar.mode == V_ELEMENTS.value
        dv = (
            torch.zeros_like(logvar.source, memory_format=torch.contiguous_format) if not full
            else torch.empty_strided(recon.shape, grad_strides(recon.shape, recon.stride()),
                                     dtype=logvar.source.dtype, device=recon.device)
        )
    return dr, dv


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
    recon, x, logvar, B, D, f64 = _prepare(recon, x, recon_logvar, likelihood)
    acc = torch.float64 if f64 else loss_dtype(recon.dtype)
    out = recon.new_empty(size=(B,) if per_row else (), dtype=acc)  # size= : see _new_grad
    elbo = None if kl is None else torch.empty_like(out)
    if B * D == 0:
        dr, dv = _empty_grads(recon, logvar, grad_recon, grad_logvar)
        out.zero_()
        return ReconOutputs(out, None if kl is None else torch.add(out, kl, alpha=beta), dr, dv)
    dv_mode = DV_NONE.value
    if grad_logvar and logvar.source is not None:
        dv_mode = DV_PARTIALS.value if logvar.mode == V_ROW.value else DV_ELEMENTS.value
    plan = _fwd_plan(
        B, D, recon.stride(0), x.stride(0), logvar.mode, logvar.row_stride, dv_mode,
        kl.stride(0) if kl is not None and kl.dim() else 0, divisor, likelihood, full,
        grad_recon, per_row, kl is not None, f64,
    )
    dr = _new_grad(recon) if grad_recon else None
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
        # Positional arguments, in the kernel's order (named in _fwd_plan): keywords would
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
    recon, x, logvar, B, D, f64 = _prepare(recon, x, recon_logvar, likelihood)
    if B * D == 0 or not (grad_recon or (grad_logvar and logvar.source is not None)):
        return _empty_grads(recon, logvar, grad_recon, grad_logvar)
    block_d, num_warps, n_chunks, _ = _layout(B, D)
    n_programs = B * n_chunks
    dr = _new_grad(recon) if grad_recon else None
    dv_buf, dv_mode, dv_row_stride = (recon, DV_NONE.value, 0)
    if grad_logvar and logvar.source is not None:
        dv_buf = logvar.grad_buffer(recon, n_programs)
        dv_mode = DV_PARTIALS.value if logvar.mode == V_ROW.value else DV_ELEMENTS.value
        dv_row_stride = 0 if logvar.mode == V_ROW.value else D
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
        dv_row_stride,
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


_SCALE_BLOCK = _ELEMS_PER_THREAD * 32 * _MAX_WARPS


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
                pointers + (n, _SCALE_BLOCK), _MAX_WARPS,  # n, BLOCK
            )
    return grad
