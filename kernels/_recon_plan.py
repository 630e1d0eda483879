"""Host side of the recon kernels (``kernels/recon.py``): the launch layout and the cached
forward plan, the row layouts the kernels read without a copy, the log-variance's modes, the
gradient buffers.
"""

import functools
import math
from typing import NamedTuple

import torch

from ._common import check_launchable, loss_dtype, pow2_at_least
from ._recon_reduce import OUT_ROWS, OUT_ROWS_DIRECT, OUT_TOTAL, ticket_group
from ._recon_terms import DV_ELEMENTS, DV_NONE, DV_PARTIALS, V_ELEMENTS, V_ROW, V_SCALAR

LIKELIHOOD_CODES = {"bernoulli": 0, "mse": 1, "gaussian": 2, "bernoulli_probs": 3}
ELEMS_PER_THREAD = 16  # four 128-bit loads per fp32 input, two per bf16/fp16 input
MAX_WARPS = 8
_MAX_GRID = 2**31 - 1  # CUDA's limit on a launch grid's x dimension


@functools.lru_cache(maxsize=512)
def layout(batch: int, features: int) -> tuple[int, int, int, int]:
    """(BLOCK_D, num_warps, n_chunks, RBLOCK) for rows of ``features`` elements.

    Launch heuristic: 16 elements per thread (128-bit accesses, few registers), as many warps
    as a row needs up to 8 (BLOCK_D <= 4096); a longer row is split over several programs.
    """
    block_d = min(pow2_at_least(features), ELEMS_PER_THREAD * 32 * MAX_WARPS)
    num_warps = max(1, block_d // (ELEMS_PER_THREAD * 32))
    n_chunks = -(-features // block_d)
    if batch * n_chunks > _MAX_GRID:
        raise ValueError(
            f"recon with {batch} rows of {features} elements needs {batch * n_chunks} programs "
            f"of {block_d} elements, more than one launch can have ({_MAX_GRID}); split the batch"
        )
    return block_d, num_warps, n_chunks, max(block_d, 32 * num_warps * 4)


class FwdPlan(NamedTuple):
    """What a forward launch's shapes, strides and modes decide (:func:`fwd_plan`)."""

    n_programs: int
    num_warps: int
    n_chunks: int
    n_partials: int  # 0: no partials (the per-row losses are written directly)
    values: tuple  # the integer arguments, in the kernel's order
    constexprs: tuple  # the constexpr arguments, in the kernel's order
    key_values: tuple  # values + constexprs: with the pointers' dtypes, the launch's key


def dv_row_stride(dv_mode: int, D: int) -> int:
    """The row stride of the d logvar buffer: D per element, 0 for partial sums (or none)."""
    return D if dv_mode == DV_ELEMENTS.value else 0


@functools.lru_cache(maxsize=512)
def fwd_plan(
    B: int, D: int, r_row_stride: int, x_row_stride: int, v_mode: int, v_row_stride: int,
    dv_mode: int, kl_stride: int, divisor: int, likelihood: str, full: bool, write_dr: bool,
    per_row: bool, add_kl: bool, f64: bool,
) -> FwdPlan:
    """The forward launch for rows of D elements (row strides of recon, x and the
    log-variance as given, the gradients' D), cached: the layout, the output mode, whether
    the rows may be read as flat blocks (a scalar reduction over tensors that are each one
    dense block of B * D elements in the same order), the ticket groups and the partials."""
    block_d, num_warps, n_chunks, rblock = layout(B, D)
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
    group = ticket_group(n_programs)
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
        dv_row_stride(dv_mode, D),
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
    return FwdPlan(
        n_programs, num_warps, n_chunks, n_partials, values, constexprs, values + constexprs
    )


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

    def dv_mode(self, grad_logvar: bool) -> int:
        """How the kernels write d loss / d logvar: not at all (no gradient asked for, or no
        log-variance tensor), as a sum per tile (V_ROW) or per element."""
        if not grad_logvar or self.source is None:
            return DV_NONE.value
        return DV_PARTIALS.value if self.mode == V_ROW.value else DV_ELEMENTS.value

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


_NO_LOGVAR = _LogVar(None, None, False)  # shared by every call without a log-variance tensor


def prepare(recon, x, recon_logvar, likelihood):
    """The launchers' common start: recon with dense rows (copied only when they are not), x
    in recon's feature order, the log-variance's mode, B, D and whether to compute in fp64."""
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


def new_grad(recon: torch.Tensor) -> torch.Tensor:
    """An uninitialized d_recon: recon's dtype and shape, :func:`grad_strides` strides. For a
    contiguous recon of B > 1 rows (row stride D) those are recon's own strides, which
    ``empty_like`` copies at a third of the host cost of ``new_empty_strided``. (The same
    holds for ``new_empty``, which costs about 0.8 us with the size as a keyword but 1.2-1.4
    us with a positional tuple.)"""
    if recon.shape[0] > 1 and recon.is_contiguous():
        return torch.empty_like(recon)
    return recon.new_empty_strided(recon.shape, _grad_strides_cached(recon.shape, recon.stride()))


def empty_grads(recon, logvar, grad_recon, grad_logvar):
    dr = new_grad(recon) if grad_recon else None
    dv = None
    if grad_logvar and logvar.source is not None:
        full = logvar.full and logvar.mode == V_ELEMENTS.value
        dv = (
            torch.zeros_like(logvar.source, memory_format=torch.contiguous_format) if not full
            else torch.empty_strided(recon.shape, grad_strides(recon.shape, recon.stride()),
                                     dtype=logvar.source.dtype, device=recon.device)
        )
    return dr, dv

