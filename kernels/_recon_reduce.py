"""The recon forward's batch reduction, inside its one launch (``kernels/recon.py``): every
program stores its partial sum; the last program, found by a two-level ticket, adds them in a
fixed order (so the result is deterministic) into one loss per row or the total, and writes
the objective loss + beta * KL beside it when a KL is given.

The ticket: every program stores its partial sum, then takes a ticket with an atomic add on
its group's counter, the last of a group on the top counter. Memory ordering: the barrier
makes all of the program's threads' stores happen before thread 0's atomic, whose release
(acq_rel, GPU scope) publishes them; the program that draws a counter's last ticket has,
through the same atomic's acquire (and the barrier that broadcasts its result), seen every
earlier release on it, and its own release on the top counter passes them on (the PTX memory
model's causality order is transitive), so the last program's loads observe all partials
(read with .cg, from L2). Each counter is reset to 0 by the program that drew its last
ticket: nobody touches it again in this launch, and the next launch on the stream starts
after this one ends, so every launch -- and every CUDA-graph replay, which replays the resets
too -- starts from 0. Under the interpreter programs run one after another, so the last
ticket is the last program.
"""

import functools

import triton
import triton.language as tl

from ._common import pow2_at_least

# Where the reduced loss goes.
OUT_ROWS_DIRECT = tl.constexpr(0)  # "none", one program per row: its sum is the row's loss
OUT_ROWS = tl.constexpr(1)  # "none", several programs per row: the last program adds them
OUT_TOTAL = tl.constexpr(2)  # a scalar reduction: the last program adds all partials

# Ticket groups. Every program of the forward takes a ticket, and
# atomics on one address are served one after another: on an H200 the forward at B x D =
# 4096 x 49152 (49,152 programs on one counter) ran about 27 us (fp32 MSE) and 30 us (bf16
# MSE) longer than torch.compile's two-kernel reduction, about one L2 clock per program
# (benchmarks/results/h200-2026-12-04/gpu_check_recon_loss_head.log). Groups of at least 64
# programs, at most MAX_GROUPS groups, each counter on its own 32-byte sector: the top
# counter takes one ticket per group.
_COUNTER_STRIDE = tl.constexpr(8)  # int32 counters 32 bytes apart
MAX_GROUPS = 4096
MIN_GROUP = 64
N_COUNTERS = 1 + MAX_GROUPS * _COUNTER_STRIDE.value  # the int32 counters a launch may use


@functools.lru_cache(maxsize=512)
def ticket_group(n_programs: int) -> int:
    """Programs per ticket group: a power of two >= MIN_GROUP, large enough that at most
    MAX_GROUPS groups cover ``n_programs``."""
    return max(MIN_GROUP, pow2_at_least(-(-n_programs // MAX_GROUPS)))


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
    """Run by the last program only, in a fixed order: the group sums into the total
    (OUT_TOTAL), or the per-program partials into one value per row."""
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



@triton.jit
def reduce_losses(
    total,  # () this program's loss sum, divided by the divisor
    pid,  # this program
    partial_ptr,  # per-program loss sums: by program (OUT_TOTAL), chunk-major (OUT_ROWS)
    counters_ptr,  # int32 ticket counters (top, then one per group), 0 between launches
    out_ptr,  # (B,) per-row losses or () the total
    kl_ptr,  # (B,) or () KL values added to the losses (ADD_KL), element stride kl_stride
    elbo_ptr,  # out's shape: out + beta * kl (ADD_KL)
    n_programs,
    n_chunks,  # programs per row (OUT_ROWS)
    n_rows,
    kl_stride,
    beta,
    OUT: tl.constexpr,
    ADD_KL: tl.constexpr,
    RBLOCK: tl.constexpr,  # rows the last program adds per step (OUT_ROWS)
    GROUP: tl.constexpr,  # programs per ticket group
    SBLOCK: tl.constexpr,  # group sums the last program adds per step (OUT_TOTAL)
):
    """Bring the programs' loss sums to ``out`` (and ``elbo``): directly when a row is one
    program, else through the partials and the last program."""
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
