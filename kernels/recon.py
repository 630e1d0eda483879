"""Fused reconstruction losses: per-sample negative log-likelihood and its gradient in one pass."""

import torch
import triton
import triton.language as tl

from ._common import check_launchable, loss_dtype, pow2_at_most
from ._math import log1p_small, to_acc

LIKELIHOOD_CODES = {"bernoulli": 0, "mse": 1, "gaussian": 2}
_MAX_BLOCK_D = 4096
_MAX_GRID = 2**31 - 1  # CUDA's limit on a launch grid's x dimension
_HALF_LOG_2PI = tl.constexpr(0.9189385332046727)  # log(2 pi) / 2


# Per element, with r the decoder output (logits l or mean m), x the target, v the log-variance:
#   bernoulli: loss = max(l, 0) - l*x + log(1 + exp(-|l|))      dl = sigmoid(l) - x
#   mse:       loss = (r - x)^2                                   dr = 2 (r - x)
#   gaussian:  loss = 0.5 (log 2pi + v + (x - m)^2 exp(-v))       dm = (m - x) exp(-v)
#                                                                 dv = 0.5 (1 - (x - m)^2 exp(-v))
# sigmoid(l) is t/(1+t) or 1/(1+t) with t = exp(-|l|), so nothing overflows for any |l|;
# max(l, 0) - l*x is l*(1 - x) or -l*x, so a confidently wrong infinite logit gives +inf.
@triton.jit
def _recon_terms(r, x, v, LIKELIHOOD: tl.constexpr):
    if LIKELIHOOD == 0:
        t = tl.exp(-tl.abs(r))
        loss = tl.where(r >= 0, r * (1.0 - x), -r * x) + log1p_small(t)
        dr = tl.where(r >= 0, 1.0 / (1.0 + t), t / (1.0 + t)) - x
        dv = dr
    elif LIKELIHOOD == 1:
        diff = r - x
        loss = diff * diff
        dr = 2.0 * diff
        dv = dr
    else:
        diff = r - x
        inv_var = tl.exp(-v)
        scaled = diff * diff * inv_var
        loss = _HALF_LOG_2PI + 0.5 * (v + scaled)
        dr = diff * inv_var
        dv = 0.5 * (1.0 - scaled)
    return loss, dr, dv


@triton.jit
def _load_chunk(r_ptr, x_ptr, v_ptr, D, n_chunks, LIKELIHOOD: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's (row, chunk of BLOCK_D features): int64 offsets, mask and the inputs."""
    pid = tl.program_id(0)
    row = pid // n_chunks
    # int64 from here on: a row may hold more than 2**31 elements, and row * D more still.
    cols = (pid % n_chunks).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = cols < D
    off = row.to(tl.int64) * D + cols
    r = to_acc(tl.load(r_ptr + off, mask=mask, other=0.0))
    x = to_acc(tl.load(x_ptr + off, mask=mask, other=0.0))
    v = r
    if LIKELIHOOD == 2:
        v = to_acc(tl.load(v_ptr + off, mask=mask, other=0.0))
    return pid, row, off, mask, r, x, v


@triton.jit
def _store_grads(dr_ptr, dv_ptr, off, mask, dr, dv, WRITE_DR: tl.constexpr, WRITE_DV: tl.constexpr):
    if WRITE_DR:
        tl.store(dr_ptr + off, dr.to(dr_ptr.dtype.element_ty), mask=mask)
    if WRITE_DV:
        tl.store(dv_ptr + off, dv.to(dv_ptr.dtype.element_ty), mask=mask)


# One program per (row, chunk of BLOCK_D features): writes the chunk's loss sum divided by
# grad_div (1 for "sum" and "none", B for "mean") to partial[pid] -- the caller sums these
# partials in a fixed order, so results are deterministic and a batch mean needs no separate
# division -- and, when asked, the gradient divided by grad_div, so that backward only
# multiplies it by grad_output.
@triton.jit
def _recon_loss_fwd_kernel(
    r_ptr, x_ptr, v_ptr, partial_ptr, dr_ptr, dv_ptr,
    D, n_chunks, grad_div,
    LIKELIHOOD: tl.constexpr, WRITE_DR: tl.constexpr, WRITE_DV: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid, _, off, mask, r, x, v = _load_chunk(r_ptr, x_ptr, v_ptr, D, n_chunks, LIKELIHOOD, BLOCK_D)
    loss, dr, dv = _recon_terms(r, x, v, LIKELIHOOD)
    tl.store(partial_ptr + pid, tl.sum(tl.where(mask, loss, 0.0), axis=0) / grad_div)
    _store_grads(dr_ptr, dv_ptr, off, mask, dr / grad_div, dv / grad_div, WRITE_DR, WRITE_DV)


# Backward for reduction "none": grad_output g is per row, so the gradient is recomputed here,
# scaled by g[row]: dr = g * dr_elem, dv = g * dv_elem.
@triton.jit
def _recon_loss_bwd_kernel(
    r_ptr, x_ptr, v_ptr, g_ptr, dr_ptr, dv_ptr,
    D, n_chunks, g_stride,
    LIKELIHOOD: tl.constexpr, WRITE_DR: tl.constexpr, WRITE_DV: tl.constexpr, BLOCK_D: tl.constexpr,
):
    _, row, off, mask, r, x, v = _load_chunk(r_ptr, x_ptr, v_ptr, D, n_chunks, LIKELIHOOD, BLOCK_D)
    g = to_acc(tl.load(g_ptr + row.to(tl.int64) * g_stride))
    _, dr, dv = _recon_terms(r, x, v, LIKELIHOOD)
    _store_grads(dr_ptr, dv_ptr, off, mask, g * dr, g * dv, WRITE_DR, WRITE_DV)


def _layout(recon: torch.Tensor) -> tuple[int, int, int, int]:
    B = recon.shape[0]
    D = recon.numel() // B if B else 0
    block_d = pow2_at_most(D, _MAX_BLOCK_D)
    n_chunks = triton.cdiv(D, block_d)
    if B * n_chunks > _MAX_GRID:
        raise ValueError(
            f"recon of shape {tuple(recon.shape)} needs {B * n_chunks} programs of {block_d} "
            f"elements, more than one launch can have ({_MAX_GRID}); split the batch"
        )
    return B, D, block_d, n_chunks


def recon_loss_fwd(
    recon: torch.Tensor,
    x: torch.Tensor,
    recon_logvar: torch.Tensor | None,
    likelihood: str,
    grad_div: int,
    grad_recon: bool,
    grad_logvar: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-sample reconstruction loss, and optionally its gradient, in one pass.

    Args:
        recon, x, recon_logvar: ``(B, *feature_shape)``, same floating dtype and device
            (made contiguous here); recon_logvar only for "gaussian".
        likelihood: "bernoulli", "mse" or "gaussian".
        grad_div: the partial sums and the written gradients are divided by this (1 for
            "sum" and "none", B for "mean").
        grad_recon, grad_logvar: which gradients to write.

    Returns:
        ``(partials, d_recon or None, d_logvar or None)``: partials ``(B, n_chunks)`` in
        float32 (float64 for float64 inputs), in nats: ``partials.sum(1)`` is the per-sample
        loss divided by grad_div, ``partials.sum()`` the "sum" or "mean" reduction; gradients
        in the input dtype and shape.
    """
    check_launchable("recon", recon)
    recon, x = recon.contiguous(), x.contiguous()
    gaussian = likelihood == "gaussian"
    logvar = recon_logvar.contiguous() if gaussian else recon
    B, D, block_d, n_chunks = _layout(recon)
    # Every program writes its slot, so no zero-fill (and no extra launch) is needed.
    partial = torch.empty(B * n_chunks, dtype=loss_dtype(recon.dtype), device=recon.device)
    dr = torch.empty_like(recon) if grad_recon else None
    dv = torch.empty_like(logvar) if grad_logvar and gaussian else None
    if B * D > 0:
        _recon_loss_fwd_kernel[(B * n_chunks,)](
            recon, x, logvar, partial, recon if dr is None else dr, recon if dv is None else dv,
            D, n_chunks, grad_div,
            LIKELIHOOD=LIKELIHOOD_CODES[likelihood], WRITE_DR=dr is not None,
            WRITE_DV=dv is not None, BLOCK_D=block_d,
        )
    return partial.view(B, n_chunks), dr, dv


def recon_loss_bwd(
    recon: torch.Tensor,
    x: torch.Tensor,
    recon_logvar: torch.Tensor | None,
    likelihood: str,
    grad_rows: torch.Tensor,
    grad_recon: bool,
    grad_logvar: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradient of ``sum_b grad_rows[b] * loss_rows[b]`` for reduction "none".

    ``grad_rows`` is ``(B,)`` (any stride, including an expanded view). Returns
    ``(d_recon or None, d_logvar or None)`` in the input dtype.
    """
    check_launchable("recon", recon)
    recon, x = recon.contiguous(), x.contiguous()
    gaussian = likelihood == "gaussian"
    logvar = recon_logvar.contiguous() if gaussian else recon
    B, D, block_d, n_chunks = _layout(recon)
    dr = torch.empty_like(recon) if grad_recon else None
    dv = torch.empty_like(logvar) if grad_logvar and gaussian else None
    if B * D > 0 and (dr is not None or dv is not None):
        _recon_loss_bwd_kernel[(B * n_chunks,)](
            recon, x, logvar, grad_rows, recon if dr is None else dr, recon if dv is None else dv,
            D, n_chunks, grad_rows.stride(0),
            LIKELIHOOD=LIKELIHOOD_CODES[likelihood], WRITE_DR=dr is not None,
            WRITE_DV=dv is not None, BLOCK_D=block_d,
        )
    return dr, dv
