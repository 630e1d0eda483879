"""Fused latent-space kernels: reparameterization sample and closed-form Gaussian KL.

One kernel does both (``sample_and_kl``); ``reparameterize`` and ``gaussian_kl`` are the same
kernel with the other half switched off at compile time.
"""

import torch
import triton
import triton.language as tl

from ._common import check_launchable, loss_dtype, pow2_at_most
from ._math import expm1_and_phi, standard_normal, to_acc

_MAX_BLOCK_L = 128
_BLOCK_ELEMS = 2048  # elements per program: BLOCK_B rows x BLOCK_L columns
# A reduced KL of at most this many elements (B * L) runs as ONE program, which writes the
# reduced value itself: at such sizes a launch costs more than the lost parallelism (MNIST's
# B = 128, L = 20 is 2,560). Larger inputs use one program per row block plus a sum.
_SINGLE_PROGRAM_ELEMS = 8192


@triton.jit
def _load_tile(mu_ptr, lv_ptr, rows, row_mask, col0, L, BLOCK_L: tl.constexpr):
    """The (rows, col0 : col0 + BLOCK_L) tile: mask, int64 element indices, mu and logvar."""
    cols = col0 + tl.arange(0, BLOCK_L)
    mask = row_mask[:, None] & (cols < L)[None, :]
    idx = rows[:, None] * L + cols[None, :]
    mu = to_acc(tl.load(mu_ptr + idx, mask=mask, other=0.0))
    lv = to_acc(tl.load(lv_ptr + idx, mask=mask, other=0.0))
    return mask, idx, mu, lv


# Forward, for row b, column j and sample k (counter c = k*B*L + b*L + j):
#   eps = Philox-normal(seed, c);  z[k, b, j] = mu + eps * exp(0.5 * lv)
#   kl[b] = 0.5 * sum_j (mu^2 + exp(lv) - 1 - lv) / kl_div
# With REDUCE, each program writes the sum of its rows' kl[b] instead (kl_ptr[pid]): one
# program over a small batch gives the "sum"/"mean" KL itself, with no second launch. Programs
# walk row blocks with a grid stride, so one grid covers any B.
# Backward, given dz (K, B, L) and dkl (B,) (stride 0 when the KL was summed or averaged):
#   dmu = sum_k dz_k + g_b * mu
#   dlv = 0.5 * exp(0.5 * lv) * sum_k dz_k * eps_k + g_b * 0.5 * (exp(lv) - 1),  g_b = dkl_b / kl_div
# kl_div is B for a batch mean and 1 otherwise, so that "mean" needs no separate division in
# forward or backward. eps is regenerated from (seed, c) in backward: it is never stored.
@triton.jit
def _sample_and_kl_fwd_kernel(
    mu_ptr, lv_ptr, seed_ptr, z_ptr, kl_ptr,
    B, L, K, sample_stride, kl_div,
    SAMPLE: tl.constexpr, KL: tl.constexpr, REDUCE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid = tl.program_id(0)
    if SAMPLE:
        seed = tl.load(seed_ptr)
    kl_total = tl.zeros([BLOCK_B], dtype=kl_ptr.dtype.element_ty)
    for row0 in range(pid * BLOCK_B, B, tl.num_programs(0) * BLOCK_B):
        rows = tl.arange(0, BLOCK_B).to(tl.int64) + row0
        row_mask = rows < B
        kl_acc = tl.zeros([BLOCK_B], dtype=kl_ptr.dtype.element_ty)
        for col0 in range(0, L, BLOCK_L):
            mask, idx, mu, lv = _load_tile(mu_ptr, lv_ptr, rows, row_mask, col0, L, BLOCK_L)
            if KL:
                _, phi = expm1_and_phi(lv)
                kl_acc += tl.sum(tl.where(mask, mu * mu + phi, 0.0), axis=1)
            if SAMPLE:
                std = tl.exp(0.5 * lv)
                off = idx
                for _k in range(K):
                    eps = standard_normal(seed, off)
                    z = mu + eps.to(mu.dtype) * std
                    tl.store(z_ptr + off, z.to(z_ptr.dtype.element_ty), mask=mask)
                    off += sample_stride
        if KL:
            kl_rows = 0.5 * kl_acc / kl_div
            if REDUCE:
                kl_total += tl.where(row_mask, kl_rows, 0.0)
            else:
                tl.store(kl_ptr + rows, kl_rows, mask=row_mask)
    if KL and REDUCE:
        tl.store(kl_ptr + pid, tl.sum(kl_total, axis=0))


@triton.jit
def _sample_and_kl_bwd_kernel(
    mu_ptr, lv_ptr, seed_ptr, dz_ptr, dkl_ptr, dmu_ptr, dlv_ptr,
    B, L, K, sample_stride, dkl_stride, kl_div,
    HAS_DZ: tl.constexpr, HAS_DKL: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    if HAS_DZ:
        seed = tl.load(seed_ptr)
    if HAS_DKL:
        g = to_acc(tl.load(dkl_ptr + rows * dkl_stride, mask=row_mask, other=0.0))[:, None] / kl_div
    for col0 in range(0, L, BLOCK_L):
        mask, idx, mu, lv = _load_tile(mu_ptr, lv_ptr, rows, row_mask, col0, L, BLOCK_L)
        dmu = tl.zeros_like(mu)
        dlv = tl.zeros_like(lv)
        if HAS_DZ:
            dz_eps = tl.zeros_like(mu)
            off = idx
            for _k in range(K):
                dz = to_acc(tl.load(dz_ptr + off, mask=mask, other=0.0))
                eps = standard_normal(seed, off)
                dmu += dz
                dz_eps += dz * eps.to(mu.dtype)
                off += sample_stride
            dlv += 0.5 * tl.exp(0.5 * lv) * dz_eps
        if HAS_DKL:
            expm1, _ = expm1_and_phi(lv)
            dmu += g * mu
            dlv += g * 0.5 * expm1
        tl.store(dmu_ptr + idx, dmu.to(dmu_ptr.dtype.element_ty), mask=mask)
        tl.store(dlv_ptr + idx, dlv.to(dlv_ptr.dtype.element_ty), mask=mask)


def _blocks(L: int) -> tuple[int, int]:
    block_l = pow2_at_most(L, _MAX_BLOCK_L)
    return max(1, _BLOCK_ELEMS // block_l), block_l


def sample_and_kl_fwd(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    seed: torch.Tensor,
    n_samples: int,
    sample: bool,
    kl: bool,
    kl_div: int = 1,
    reduce: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Launch the fused forward kernel.

    Args:
        mu, logvar: ``(B, L)``, same floating dtype and device (made contiguous here).
        seed: int64 tensor of one element on the same device (the Philox key); read only
            when sampling.
        n_samples: K >= 1 samples per row; z is ``(B, L)`` for K == 1, else ``(K, B, L)``.
        sample, kl: which outputs to compute.
        kl_div: each row's KL is divided by this (B for a batch mean, else 1).
        reduce: return per-program sums of the rows' KL instead of the rows: their sum is
            the "sum" (kl_div 1) or "mean" (kl_div B) KL, and a batch of at most
            ``_SINGLE_PROGRAM_ELEMS`` elements gives a single value (one program).

    Returns:
        ``(z or None, kl or None)``: z in the input dtype; the KL in float32 (float64 for
        float64 inputs), in nats: per row ``(B,)`` divided by ``kl_div``, or with ``reduce``
        per-program partial sums ``(P,)`` with P >= 1 (zeros for an empty input).
    """
    check_launchable("mu", mu)
    mu, logvar = mu.contiguous(), logvar.contiguous()
    B, L = mu.shape
    z_shape = (B, L) if n_samples == 1 else (n_samples, B, L)
    z = torch.empty(z_shape, dtype=mu.dtype, device=mu.device) if sample else None
    block_b, block_l = _blocks(L)
    single = reduce and B * L <= _SINGLE_PROGRAM_ELEMS
    programs = 1 if single else max(1, triton.cdiv(B, block_b))
    kl_shape = programs if reduce else B
    kl_out = torch.empty(kl_shape, dtype=loss_dtype(mu.dtype), device=mu.device) if kl else None
    if B * L > 0:
        _sample_and_kl_fwd_kernel[(programs,)](
            mu, logvar, seed, z if sample else mu, kl_out if kl else mu,
            B, L, n_samples, B * L, kl_div,
            SAMPLE=sample, KL=kl, REDUCE=reduce, BLOCK_B=block_b, BLOCK_L=block_l,
        )
    elif kl:
        kl_out.zero_()
    return z, kl_out


def sample_and_kl_bwd(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    seed: torch.Tensor,
    n_samples: int,
    grad_z: torch.Tensor | None,
    grad_kl: torch.Tensor | None,
    kl_div: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused backward kernel; returns ``(dmu, dlogvar)`` in the input dtype.

    ``grad_z`` has z's shape (or is None when z was unused); ``grad_kl`` is ``(B,)`` and may be
    an expanded (stride 0) view, or None when the KL was unused; it is divided by ``kl_div``
    (as in :func:`sample_and_kl_fwd`). eps is regenerated from seed.
    """
    check_launchable("mu", mu)
    mu, logvar = mu.contiguous(), logvar.contiguous()
    B, L = mu.shape
    dmu, dlv = torch.empty_like(mu), torch.empty_like(logvar)
    if B * L > 0:
        if grad_z is not None:
            grad_z = grad_z.contiguous()
        block_b, block_l = _blocks(L)
        _sample_and_kl_bwd_kernel[(triton.cdiv(B, block_b),)](
            mu, logvar, seed, mu if grad_z is None else grad_z, mu if grad_kl is None else grad_kl,
            dmu, dlv, B, L, n_samples, B * L, 0 if grad_kl is None else grad_kl.stride(0), kl_div,
            HAS_DZ=grad_z is not None, HAS_DKL=grad_kl is not None,
            BLOCK_B=block_b, BLOCK_L=block_l,
        )
    return dmu, dlv
