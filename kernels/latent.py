"""Fused latent-space kernels: reparameterization sample and closed-form Gaussian KL.

One kernel does both (``sample_and_kl``); ``reparameterize`` and ``gaussian_kl`` are the same
kernel with the other half switched off at compile time. Latents arrive as ``(B, L)`` rows with
a unit last stride (the op flattens any ``(B, *latent)``). They run on a flat ``B * L`` layout
(16 elements per thread: 128-bit accesses for any L when contiguous, one Philox call per 4
elements); strided rows (``chunk`` views of one encoder output) are read in place on the same
layout; only a per-row forward KL uses a row tile. The kernels and their launchers are here,
their device helpers in ``kernels/_latent_tiles.py``.
"""

import functools

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
from ._latent_tiles import (
    block_noise,
    finish_total,
    philox_key,
    row_col,
    sample_and_kl_rows,
    strided_pointers,
)
from ._launch import CachedKernel, launch_key
from ._math import exp_acc, expm1_and_phi, to_acc

# KL modes (constexpr): no KL, one value per row, or the total over all rows.
KL_OFF: tl.constexpr = tl.constexpr(0)
KL_ROWS: tl.constexpr = tl.constexpr(1)
KL_TOTAL: tl.constexpr = tl.constexpr(2)
_KL_MODES = {"off": 0, "rows": 1, "total": 2}

_FLAT_BLOCK = 2048  # elements per program step on the flat layout: 16 per thread, 4 warps
_ROW_BLOCK_ELEMS = 512  # elements per program step on the row tile (BLOCK_B x BLOCK_L)
_MAX_BLOCK_L = 128
_MAX_PROGRAMS = 1024  # grid cap; programs stride over the blocks
_FAST_EXP = not INTERPRETED  # libdevice's fast exp when compiled for a GPU (_math.exp_acc)


# Forward, for element e = b * L + j (row b, column j) and sample k:
#   eps = N(0, 1) from Philox at key seed, counter (offset + k, e // 4), word e % 4 (_math.py)
#   z[k, b, j] = mu + eps * exp(0.5 * lv)
#   KL_ROWS:  kl[b] = 0.5 * sum_j (mu^2 + exp(lv) - 1 - lv) / div
#   KL_TOTAL: kl    = 0.5 * sum_{b, j} (mu^2 + exp(lv) - 1 - lv) / div  (last-program ticket)
# div is 1 ("none", "sum"), B ("batchmean") or B * L ("mean"). FLAT (no per-row KL): flat
# element blocks, strided rows addressed as row * stride + column; otherwise row tiles, where
# each element runs its own quad's Philox (standard_normal). Programs stride over the blocks,
# so any grid covers any size.
@triton.jit(do_not_specialize=["seed", "offset"])
def _sample_and_kl_fwd_kernel(
    mu_ptr,  # (B, L), row stride mu_stride, unit column stride
    lv_ptr,  # (B, L), row stride lv_stride
    key_ptr,  # int64[2] (seed, offset) when KEY_IN_MEMORY
    z_ptr,  # (K, B, L) contiguous
    kl_ptr,  # (B,) for KL_ROWS; the fp32/fp64 scalar for KL_TOTAL
    partials_ptr,  # (programs,) KL_TOTAL workspace
    ticket_ptr,  # int32 counter, 0 between launches (KL_TOTAL)
    seed: tl.int64,  # Philox key (host mode)
    offset: tl.int64,  # Philox counter offset (host mode)
    B, L, N, mu_stride, lv_stride, K, div,  # N = B * L
    SAMPLE: tl.constexpr, KL: tl.constexpr, FLAT: tl.constexpr, STRIDED: tl.constexpr,
    KEY_IN_MEMORY: tl.constexpr, FAST_EXP: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, P_BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    # 8 per 128-bit load; the literal first: Triton 3.2 compares a constexpr with an int only
    EIGHT: tl.constexpr = 16 == mu_ptr.dtype.element_ty.primitive_bitwidth
    if SAMPLE:
        seed, offset = philox_key(key_ptr, seed, offset, KEY_IN_MEMORY)
    acc_ty = kl_ptr.dtype.element_ty
    total = tl.zeros([BLOCK], dtype=acc_ty)
    if FLAT:
        for start in range(pid * BLOCK, N, n_programs * BLOCK):
            offs = start + tl.arange(0, BLOCK).to(tl.int64)
            mask = offs < N
            mu_at, lv_at = strided_pointers(mu_ptr, lv_ptr, start, offs, L, mu_stride,
                                            lv_stride, STRIDED, BLOCK)
            mu = to_acc(tl.load(mu_at, mask=mask, other=0.0))
            lv = to_acc(tl.load(lv_at, mask=mask, other=0.0))
            std = exp_acc(0.5 * lv, FAST_EXP)
            if KL == KL_TOTAL:  # masked lanes hold mu = lv = 0: they add exactly 0
                _, phi = expm1_and_phi(lv, std * std)
                total += mu * mu + phi
            if SAMPLE:
                z_k = z_ptr
                for k in range(K):
                    eps = block_noise(seed, offset + k, start, BLOCK, EIGHT).to(mu.dtype)
                    z = mu + eps * std
                    tl.store(z_k + offs, z.to(z_ptr.dtype.element_ty), mask=mask)
                    z_k += N
    else:  # KL_ROWS: a row tile, each row's sum in one program
        sample_and_kl_rows(
            pid, n_programs, mu_ptr, lv_ptr, z_ptr, kl_ptr, seed, offset, B, L, N, mu_stride,
            lv_stride, K, div, SAMPLE, FAST_EXP, BLOCK_B, BLOCK_L,
        )
    if KL == KL_TOTAL:
        finish_total(0.5 * tl.sum(total, axis=0), partials_ptr, ticket_ptr, kl_ptr, div, P_BLOCK)


# Backward, given dz (K, B, L) and dkl (B,) (stride 0 when the KL was reduced), the KL's
# weight w (beta, when the KL entered a loss as beta * kl) and g_b = w * dkl_b / div:
#   dmu = sum_k dz_k + g_b * mu
#   dlv = 0.5 * exp(0.5 * lv) * sum_k dz_k * eps_k + g_b * 0.5 * (exp(lv) - 1)
# eps is regenerated from the key (never stored).
@triton.jit(do_not_specialize=["seed", "offset"])
def _sample_and_kl_bwd_kernel(
    mu_ptr,  # (B, L), row stride mu_stride
    lv_ptr,  # (B, L), row stride lv_stride
    key_ptr,  # int64[2] (seed, offset) when KEY_IN_MEMORY
    dz_ptr,  # (K, B, L) contiguous, when HAS_DZ
    dkl_ptr,  # (B,) with stride dkl_stride (0 for a reduced KL), when HAS_DKL
    dmu_ptr,  # (B, L) contiguous
    dlv_ptr,  # (B, L) contiguous
    seed: tl.int64,  # Philox key (host mode)
    offset: tl.int64,  # Philox counter offset (host mode)
    B, L, N, mu_stride, lv_stride, K, dkl_stride, div,  # N = B * L
    kl_weight,  # fp32 w
    HAS_DZ: tl.constexpr, HAS_DKL: tl.constexpr, DKL_PER_ROW: tl.constexpr,
    STRIDED: tl.constexpr, KEY_IN_MEMORY: tl.constexpr, FAST_EXP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    # 8 per 128-bit load; the literal first: Triton 3.2 compares a constexpr with an int only
    EIGHT: tl.constexpr = 16 == mu_ptr.dtype.element_ty.primitive_bitwidth
    if HAS_DZ:
        seed, offset = philox_key(key_ptr, seed, offset, KEY_IN_MEMORY)
    if HAS_DKL:  # in the KL's dtype (fp32, or fp64 for fp64 inputs)
        g_scale = tl.cast(kl_weight, dkl_ptr.dtype.element_ty) / div
    for start in range(pid * BLOCK, N, n_programs * BLOCK):
        offs = start + tl.arange(0, BLOCK).to(tl.int64)
        mask = offs < N
        mu_at, lv_at = strided_pointers(mu_ptr, lv_ptr, start, offs, L, mu_stride, lv_stride,
                                        STRIDED, BLOCK)
        mu = to_acc(tl.load(mu_at, mask=mask, other=0.0))
        lv = to_acc(tl.load(lv_at, mask=mask, other=0.0))
        std = exp_acc(0.5 * lv, FAST_EXP)
        if HAS_DKL:  # the KL's terms first: dz's terms then fuse onto them (no 0 + x)
            if DKL_PER_ROW:
                row0, q, _ = row_col(start, L, BLOCK)
                dkl_at = (dkl_ptr + row0 * dkl_stride) + q * dkl_stride
                g = to_acc(tl.load(dkl_at, mask=mask, other=0.0)) * g_scale
            else:
                g = to_acc(tl.load(dkl_ptr)) * g_scale
            expm1, _ = expm1_and_phi(lv, std * std)
            dmu = g * mu
            dlv = (0.5 * g) * expm1
        else:
            dmu = tl.zeros_like(mu)
            dlv = tl.zeros_like(lv)
        if HAS_DZ:  # sample k = 0 starts the sums, so K = 1 adds no zeros
            dz = to_acc(tl.load(dz_ptr + offs, mask=mask, other=0.0))
            dz_sum = dz
            dz_eps = dz * block_noise(seed, offset, start, BLOCK, EIGHT).to(mu.dtype)
            dz_k = dz_ptr
            for k in range(1, K):
                dz_k += N
                dz = to_acc(tl.load(dz_k + offs, mask=mask, other=0.0))
                dz_sum += dz
                dz_eps += dz * block_noise(seed, offset + k, start, BLOCK, EIGHT).to(mu.dtype)
            dmu += dz_sum
            dlv += (0.5 * std) * dz_eps
        tl.store(dmu_ptr + offs, dmu.to(dmu_ptr.dtype.element_ty), mask=mask)
        tl.store(dlv_ptr + offs, dlv.to(dlv_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------ host side


@functools.lru_cache(maxsize=256)
def _layout(B: int, L: int, flat: bool, block: int) -> tuple[int, int, int, int]:
    """(programs, BLOCK_B, BLOCK_L, P_BLOCK) for a launch, by integer math, cached per shape.

    Flat: one program per ``block`` elements up to ``_MAX_PROGRAMS`` (MNIST's 128 x 20 gets
    2 programs, 16 elements per thread), striding beyond. Rows: BLOCK_L the next power
    of two >= L (at most 128), BLOCK_B rows to make _ROW_BLOCK_ELEMS (512) elements."""
    if flat:
        programs = min(max(-(-(B * L) // block), 1), _MAX_PROGRAMS)
        block_b, block_l = 1, 1
    else:
        block_l = min(pow2_at_least(L), _MAX_BLOCK_L)
        block_b = max(_ROW_BLOCK_ELEMS // block_l, 1)
        programs = min(max(-(-B // block_b), 1), _MAX_PROGRAMS)
    return programs, block_b, block_l, min(pow2_at_least(programs), 128)


_TICKETS = TicketCounters()  # this kernel's own (recon.py keeps its own)
_FWD = CachedKernel(_sample_and_kl_fwd_kernel)
_BWD = CachedKernel(_sample_and_kl_bwd_kernel)


def _flat_readable(
    mu: torch.Tensor, logvar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(mu, logvar, both contiguous) for the flat layout: as they are when contiguous, or read
    in place (strided rows) when L + BLOCK < 2**24, the exact range of the kernel's fp32 row
    split (row_col), else contiguous copies."""
    if mu.is_contiguous() and logvar.is_contiguous():
        return mu, logvar, True
    if mu.shape[1] + _FLAT_BLOCK < 1 << 24:
        return mu, logvar, False
    return mu.contiguous(), logvar.contiguous(), True


def _new_outputs(
    mu: torch.Tensor, n_samples: int, sample: bool, mode: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Uninitialized z (contiguous, ``(K, B, L)`` for K > 1) and KL (``(B,)`` per row, ``()``
    total), None where not asked for. empty_like, or new_empty with the size as a keyword:
    about 0.8 us of host time each, against 1.2-1.4 us with a positional size (torch's
    argument parser)."""
    B, L = mu.shape
    z = kl = None
    if sample:
        z = (torch.empty_like(mu, memory_format=torch.contiguous_format) if n_samples == 1
             else mu.new_empty(size=(n_samples, B, L)))
    if mode:
        kl = mu.new_empty(size=(B,) if mode == 1 else (), dtype=loss_dtype(mu.dtype))
    return z, kl


def sample_and_kl_fwd(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    key: torch.Tensor | tuple[int, int] | None,
    n_samples: int,
    sample: bool,
    kl: str,
    div: int = 1,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Launch the fused forward kernel (one launch, whatever the KL reduction).

    Args:
        mu, logvar: ``(B, L)``, same floating dtype and device, unit last stride (any row
            stride: ``chunk`` views are read in place).
        key: the Philox key: ``(seed, offset)`` Python ints (a host draw), or an int64 device
            tensor holding them (drawn on the device); None when not sampling.
        n_samples: K >= 1 samples per element; z is ``(B, L)`` for K = 1, else ``(K, B, L)``,
            contiguous; sample k reads Philox counter ``offset + k``.
        sample: compute z.
        kl: "off", "rows" (per row, ``(B,)``) or "total" (a 0-dim tensor).
        div: the KL (each row's, or the total) is divided by this.

    Returns:
        ``(z or None, kl or None)``: z in the input dtype; the KL in float32 (float64 for
        float64 inputs), in nats. An empty input launches nothing (its KL, per row or total, is 0).
    """
    check_launchable("mu", mu)
    B, L = mu.shape
    mode = _KL_MODES[kl]
    flat = mode != 1  # per-row KLs need the row tile (which takes any row stride)
    contiguous = True  # STRIDED: read by the flat tiles only
    if flat:
        mu, logvar, contiguous = _flat_readable(mu, logvar)
    z, kl_out = _new_outputs(mu, n_samples, sample, mode)
    if B * L == 0:  # every row's KL is an empty sum (B rows of L = 0: B zeros)
        return z, kl_out.zero_() if mode else None
    programs, block_b, block_l, p_block = _layout(B, L, flat, _FLAT_BLOCK)
    # "total": a partial per program; a lone program's partial is the total's own slot.
    partials = (mu if mode != 2 else kl_out if programs == 1
                else mu.new_empty(size=(programs,), dtype=kl_out.dtype))
    in_memory = isinstance(key, torch.Tensor)
    seed, offset = (0, 0) if in_memory or key is None else key
    pointers = (
        mu,  # mu_ptr
        logvar,  # lv_ptr
        key if in_memory else mu,  # key_ptr
        z if sample else mu,  # z_ptr
        kl_out if mode else partials,  # kl_ptr
        partials,  # partials_ptr
        _TICKETS[mu.device] if mode == 2 else mu,  # ticket_ptr
    )
    values = (
        B,
        L,
        B * L,  # N
        mu.stride(0),  # mu_stride
        logvar.stride(0),  # lv_stride
        n_samples,  # K
        div,
        sample,  # SAMPLE
        mode,  # KL
        flat,  # FLAT
        not contiguous,  # STRIDED
        in_memory,  # KEY_IN_MEMORY
        _FAST_EXP,  # FAST_EXP
        _FLAT_BLOCK,  # BLOCK
        block_b,  # BLOCK_B
        block_l,  # BLOCK_L
        p_block,  # P_BLOCK
    )
    with device_guard(mu):
        # Positional, in the kernel's order (keywords cost more host time than the rest of
        # the launcher); seed and offset (int64, never specialized) are not in the key.
        _FWD.launch(launch_key(pointers, values), programs, pointers + (seed, offset) + values)
    return z, kl_out


def sample_and_kl_bwd(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    key: torch.Tensor | tuple[int, int] | None,
    n_samples: int,
    grad_z: torch.Tensor | None,
    grad_kl: torch.Tensor | None,
    div: int = 1,
    kl_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused backward kernel; returns contiguous ``(dmu, dlogvar)`` ``(B, L)`` in
    the input dtype.

    ``grad_z`` holds ``(K, B, L)`` elements in any shape (copied only when not contiguous),
    or is None when z was unused; ``grad_kl`` is ``(B,)`` (any stride: an expanded view of a
    scalar has stride 0), a 0-dim tensor (read once for every row), or None when the KL was
    unused; it is multiplied by ``kl_weight`` (passed as float32; the KL's weight beta when
    the forward added ``beta * kl``) and divided by ``div`` (as in :func:`sample_and_kl_fwd`).
    eps is regenerated from ``key``.
    """
    check_launchable("mu", mu)
    B, L = mu.shape
    if grad_kl is not None and grad_kl.dim() and grad_kl.shape[0] != B:  # it would be read past
        raise ValueError(f"grad_kl must be a scalar or have B = {B} rows, got shape "
                         f"{tuple(grad_kl.shape)}")
    dmu = torch.empty_like(mu, memory_format=torch.contiguous_format)
    dlv = torch.empty_like(logvar, memory_format=torch.contiguous_format)
    if B * L == 0:
        return dmu, dlv
    if grad_z is not None and not grad_z.is_contiguous():
        grad_z = grad_z.contiguous()
    mu, logvar, contiguous = _flat_readable(mu, logvar)
    programs = _layout(B, L, True, _FLAT_BLOCK)[0]
    in_memory = isinstance(key, torch.Tensor)
    seed, offset = (0, 0) if in_memory or key is None else key
    dkl_stride = grad_kl.stride(0) if grad_kl is not None and grad_kl.dim() else 0
    pointers = (
        mu,  # mu_ptr
        logvar,  # lv_ptr
        key if in_memory else mu,  # key_ptr
        mu if grad_z is None else grad_z,  # dz_ptr
        mu if grad_kl is None else grad_kl,  # dkl_ptr
        dmu,  # dmu_ptr
        dlv,  # dlv_ptr
    )
    values = (
        B,
        L,
        B * L,  # N
        mu.stride(0),  # mu_stride
        logvar.stride(0),  # lv_stride
        n_samples,  # K
        dkl_stride,
        div,
    )
    constexprs = (
        grad_z is not None,  # HAS_DZ
        grad_kl is not None,  # HAS_DKL
        dkl_stride != 0,  # DKL_PER_ROW
        not contiguous,  # STRIDED
        in_memory,  # KEY_IN_MEMORY
        _FAST_EXP,  # FAST_EXP
        _FLAT_BLOCK,  # BLOCK
    )
    with device_guard(mu):
        _BWD.launch(
            launch_key(pointers, values + constexprs), programs,
            pointers + (seed, offset) + values + (float(kl_weight),) + constexprs,
        )
    return dmu, dlv
