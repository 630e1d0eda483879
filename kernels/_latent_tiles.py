"""Device helpers of the latent kernels (``kernels/latent.py``): the Philox key, flat indices
split into rows and columns, strided rows read in place, the noise of a flat block in the
layout of its loads, the last-program sum of the total KL, and the forward on row tiles.
"""

import triton
import triton.language as tl

from ._math import exp_acc, expm1_and_phi, standard_normal, standard_normal4, to_acc


@triton.jit
def philox_key(key_ptr, seed, offset, KEY_IN_MEMORY: tl.constexpr):
    """The Philox key: (seed, counter offset) from device memory (int64[2], drawn on the
    device: CUDA-graph replays and compiled graphs draw fresh noise) or from host scalars."""
    if KEY_IN_MEMORY:
        seed = tl.load(key_ptr)
        offset = tl.load(key_ptr + 1)
    return seed.to(tl.int64), offset.to(tl.int64)


@triton.jit
def row_col(start, L, BLOCK: tl.constexpr):
    """(row0, q, col) of the flat indices start + arange(BLOCK): element i is in row
    row0 + q[i] (row0 an int64 scalar, q int32), column col[i]. One scalar division per block,
    then per element an fp32 reciprocal estimate (c < L + BLOCK < 2**24 is exact in fp32, so
    the estimate is off by at most 1) and one integer correction."""
    row0 = start // L
    c = (start - row0 * L).to(tl.int32) + tl.arange(0, BLOCK)
    q = (c.to(tl.float32) * (1.0 / L)).to(tl.int32)
    r = c - q * L
    q = tl.where(r < 0, q - 1, tl.where(r >= L, q + 1, q))
    return row0, q, c - q * L


@triton.jit
def strided_pointers(mu_ptr, lv_ptr, start, offs, L, mu_stride, lv_stride,
                     STRIDED: tl.constexpr, BLOCK: tl.constexpr):
    """Pointers to the flat elements ``offs = start + arange(BLOCK)``: base + offs for
    contiguous inputs, row * row_stride + column for strided rows (``chunk`` views, read in
    place; 64-bit math once per block, 32-bit per element)."""
    if STRIDED:
        row0, q, col = row_col(start, L, BLOCK)
        return ((mu_ptr + row0 * mu_stride) + (q * mu_stride + col),
                (lv_ptr + row0 * lv_stride) + (q * lv_stride + col))
    return mu_ptr + offs, lv_ptr + offs


@triton.jit
def block_noise(seed, offset, start, BLOCK: tl.constexpr, EIGHT: tl.constexpr):
    """N(0, 1) noise of the flat elements start + arange(BLOCK) (start a multiple of 8), in
    element order: quad q's four values (standard_normal4) go to elements 4q + 0..3. The
    joins leave whole groups in one thread: groups of 4 (EIGHT false) match a 128-bit access of
    32-bit elements, groups of 8 (two quads, EIGHT true) one of 16-bit elements, so the noise
    is already where the load put mu and needs no shared-memory layout conversion.

    A join appends its new size-2 dim last (fastest), so within a group the outermost join
    selects the lowest bit of the position and the innermost join the highest."""
    if EIGHT:  # position 4h + 2u + v of group i: word 2u + v of quad 2i + h
        quads = start // 4 + 2 * tl.arange(0, BLOCK // 8).to(tl.int64)
        a0, a1, a2, a3 = standard_normal4(seed, offset, quads)
        b0, b1, b2, b3 = standard_normal4(seed, offset, quads + 1)
        v0 = tl.join(tl.join(a0, b0), tl.join(a2, b2))
        v1 = tl.join(tl.join(a1, b1), tl.join(a3, b3))
        return tl.reshape(tl.join(v0, v1), [BLOCK])
    quads = start // 4 + tl.arange(0, BLOCK // 4).to(tl.int64)
    n0, n1, n2, n3 = standard_normal4(seed, offset, quads)  # position 2u + v: word 2u + v of quad i
    return tl.reshape(tl.join(tl.join(n0, n2), tl.join(n1, n3)), [BLOCK])


@triton.jit
def finish_total(partial, partials_ptr, ticket_ptr, out_ptr, div, P_BLOCK: tl.constexpr):
    """Last-program ticket: every program stores its partial, then takes a ticket from an
    int32 counter with one acq_rel atomic; the program that draws the last ticket sums all
    partials in a fixed order (chunks of P_BLOCK program ids, then one tl.sum: deterministic),
    writes the total
    and resets the counter to 0 for the next launch (the counter lives in a per-device
    workspace; CUDA-graph replays and the interpreter see it at 0 at every launch).

    Memory ordering: each program's partial store precedes (barrier, then program order)
    its release on the counter; the atomics on one address form a single modification order,
    so the last ticket's acquire synchronizes with every earlier release, and its loads of
    the partials see every stored value (PTX memory model, gpu scope)."""
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    tl.store(partials_ptr + pid, partial)
    tl.debug_barrier()
    ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel")
    if ticket == n_programs - 1:
        ids = tl.arange(0, P_BLOCK)
        acc = tl.zeros([P_BLOCK], dtype=partials_ptr.dtype.element_ty)
        for first in range(0, n_programs, P_BLOCK):
            acc += tl.load(partials_ptr + first + ids, mask=first + ids < n_programs, other=0.0)
        tl.store(out_ptr, tl.sum(acc, axis=0) / div)
        tl.atomic_xchg(ticket_ptr, 0, sem="relaxed")


@triton.jit
def sample_and_kl_rows(
    pid, n_programs, mu_ptr, lv_ptr, z_ptr, kl_ptr, seed, offset,  # as in the forward kernel
    B, L, N, mu_stride, lv_stride, K, div,
    SAMPLE: tl.constexpr, FAST_EXP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """The forward on row tiles (KL_ROWS): BLOCK_B rows by BLOCK_L columns a step, each row's
    KL summed in one program and stored divided by ``div``; z (SAMPLE) from each element's own
    quad of Philox (standard_normal)."""
    acc_ty = kl_ptr.dtype.element_ty
    for row0 in range(pid * BLOCK_B, B, n_programs * BLOCK_B):
        rows = row0 + tl.arange(0, BLOCK_B).to(tl.int64)
        row_mask = rows < B
        kl_rows = tl.zeros([BLOCK_B], dtype=acc_ty)
        for col0 in range(0, L, BLOCK_L):
            cols = col0 + tl.arange(0, BLOCK_L)
            mask = row_mask[:, None] & (cols < L)[None, :]
            mu = to_acc(tl.load(mu_ptr + rows[:, None] * mu_stride + cols[None, :],
                                mask=mask, other=0.0))
            lv = to_acc(tl.load(lv_ptr + rows[:, None] * lv_stride + cols[None, :],
                                mask=mask, other=0.0))
            std = exp_acc(0.5 * lv, FAST_EXP)
            _, phi = expm1_and_phi(lv, std * std)  # masked lanes (mu = lv = 0) add 0
            kl_rows += tl.sum(mu * mu + phi, axis=1)
            if SAMPLE:
                idx = rows[:, None] * L + cols[None, :]
                z_k = z_ptr
                for k in range(K):
                    eps = standard_normal(seed, offset + k, idx).to(mu.dtype)
                    z = mu + eps * std
                    tl.store(z_k + idx, z.to(z_ptr.dtype.element_ty), mask=mask)
                    z_k += N
        tl.store(kl_ptr + rows, 0.5 * kl_rows / div, mask=row_mask)
