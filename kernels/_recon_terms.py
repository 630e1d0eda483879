"""Per-element terms of the reconstruction losses and the tile helpers the recon kernels share
(``kernels/recon.py``): the loss and its gradients for one tile of elements, the tile of a
program, the gradients' stores.
"""

import triton
import triton.language as tl

from ._common import INTERPRETED
from ._math import log1p_unit

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
def to_compute(t, F64: tl.constexpr):
    """The computation dtype: fp64 when any input is fp64, fp32 otherwise."""
    if F64:
        return tl.cast(t, tl.float64)
    else:
        return tl.cast(t, tl.float32)


@triton.jit
def _load(ptr, mask, F64: tl.constexpr, EVEN_D: tl.constexpr):
    if EVEN_D:
        return to_compute(tl.load(ptr), F64)
    else:
        return to_compute(tl.load(ptr, mask=mask, other=0.0), F64)


@triton.jit
def _store(ptr, value, mask, EVEN_D: tl.constexpr):
    if EVEN_D:
        tl.store(ptr, value.to(ptr.dtype.element_ty))
    else:
        tl.store(ptr, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def tile_terms(
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
            v = to_compute(tl.load(v_base), F64)
        else:
            v = to_compute(logvar_value, F64)
        if FAST:
            inv_var = _ex2_ftz(v * -1.4426950408889634)
        else:
            inv_var = tl.exp(-v)
    return _recon_terms(r, x, v, inv_var, LIKELIHOOD, FULL, FAST)


@triton.jit
def row_tile(tile, n_chunks, D, BLOCK_D: tl.constexpr):
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
def store_grads(
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
def forward_tile(
    pid,  # this program
    r_ptr, x_ptr, v_ptr, dr_ptr, dv_ptr,  # as in the forward kernel
    D, n_chunks, n_rows,
    r_row_stride, x_row_stride, v_row_stride, dr_row_stride, dv_row_stride,
    scale,  # 1 / divisor, in the computation dtype
    logvar_value,
    LIKELIHOOD: tl.constexpr, FULL: tl.constexpr, V_MODE: tl.constexpr,
    DV_MODE: tl.constexpr, WRITE_DR: tl.constexpr, F64: tl.constexpr,
    BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, FLAT: tl.constexpr,
):
    """The forward's work on the tile of program ``pid``: its gradients, times ``scale``,
    stored; its loss sum times ``scale`` returned. FLAT: the tile is block ``pid`` of the dense
    B * D elements (EVEN_D: BLOCK_D divides B * D); else tile ``pid`` of the row tiles."""
    if FLAT:
        cols = tl.arange(0, BLOCK_D)
        at = pid.to(tl.int64) * BLOCK_D
        mask = cols < tl.minimum(n_rows.to(tl.int64) * D - at, BLOCK_D).to(tl.int32)
        loss, dr, dv = tile_terms(
            r_ptr + at + cols, x_ptr + at + cols, v_ptr + at, cols, mask, logvar_value,
            LIKELIHOOD, FULL, V_MODE, F64, EVEN_D,
        )
        store_grads(dr_ptr + at + cols, dv_ptr + at + cols, dv_ptr, dr * scale, dv * scale,
                    mask, WRITE_DR, DV_MODE, EVEN_D)
    else:
        row64, start, cols, mask = row_tile(pid, n_chunks, D, BLOCK_D)
        loss, dr, dv = tile_terms(
            r_ptr + row64 * r_row_stride + start + cols,
            x_ptr + row64 * x_row_stride + start + cols,
            v_ptr + row64 * v_row_stride, start + cols, mask, logvar_value, LIKELIHOOD, FULL,
            V_MODE, F64, EVEN_D,
        )
        store_grads(
            dr_ptr + row64 * dr_row_stride + start + cols,
            dv_ptr + row64 * dv_row_stride + start + cols,
            dv_ptr + pid, dr * scale, dv * scale, mask, WRITE_DR, DV_MODE, EVEN_D,
        )
    if not EVEN_D:
        loss = tl.where(mask, loss, 0.0)
    return tl.sum(loss, axis=0) * scale
