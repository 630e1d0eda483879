"""What the benchmarks measure, one function per quantity.

Every function works on CUDA and on the CPU, except :func:`count_bytes`, which needs Triton's
CPU interpreter. Quantities that only mean something on a GPU (GPU kernel launches from the
profiler, host syncs from CUDA's sync debug mode, peak device memory) return None on the CPU;
the dispatch-level counts (:func:`count_dispatched`) work on both and are what the CPU tests
check.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import triton
from torch._library.custom_ops import OPDEFS
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from fastvae.kernels import INTERPRETED, latent, recon
from fastvae.kernels._launch import CachedKernel

# aten ops that allocate or re-view memory without launching a kernel.
_NO_KERNEL = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh",
    "_unsafe_view",
}
# aten ops that make the host wait for the device (a device-to-host read of a value).
_SYNCING = {"_local_scalar_dense", "nonzero", "equal", "is_nonzero", "unique", "masked_select"}
# The launched kernels: every launch, cached or not, goes through one of these.
_KERNELS = tuple(k for mod in (latent, recon) for k in vars(mod).values()
                 if isinstance(k, CachedKernel))


# ------------------------------------------------------------------ timing


def bench(fn: Callable[[], object], device: torch.device, *, quick: bool = False) -> float:
    """Median time of ``fn()`` in milliseconds.

    CUDA: ``triton.testing.do_bench`` (warm-up, L2 flushed between calls, CUDA events, median).
    CPU: ``time.perf_counter`` around each call after warm-up calls, median. ``quick`` shortens
    both (smoke runs).
    """
    if device.type == "cuda":
        warmup, rep = (5, 20) if quick else (25, 100)
        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    n_warm, n_rep = (1, 3) if quick else (3, 15)
    for _ in range(n_warm):
        fn()
    times = []
    for _ in range(n_rep):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbps(device: torch.device, nbytes: int, *, quick: bool = False) -> float:
    """Achieved bandwidth of one large device-to-device copy: 2 * nbytes (read + write) / time,
    in GB/s (1e9 bytes). The roof the fused losses are compared with."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), device, quick=quick)
    return 2 * n * 4 / (ms * 1e-3) / 1e9


# ------------------------------------------------------------------ memory


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak device memory allocated while ``fn()`` runs, beyond what was allocated before it
    (``torch.cuda.max_memory_allocated``); None off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


@dataclass
class Saved:
    """Tensors autograd kept for backward (``torch.autograd.graph.saved_tensors_hooks``),
    counted once per storage: all of them, and those that are not storage of the inputs."""

    bytes: int
    bytes_beyond_inputs: int


def saved_for_backward(fn: Callable[[], object], inputs: Sequence[torch.Tensor]) -> Saved:
    """Bytes saved for backward while ``fn()`` builds its graph. ``fn`` must return its
    outputs (kept alive until counted)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    input_ptrs = {t.untyped_storage().data_ptr() for t in inputs}
    del out
    total = sum(seen.values())
    return Saved(total, total - sum(n for p, n in seen.items() if p in input_ptrs))


# ------------------------------------------------------------------ launches and syncs


@dataclass
class Dispatched:
    """What one call dispatched below autograd: ``launches`` counts Triton kernel launches and
    aten ops that run a kernel (allocations and views excluded, fastvae's custom ops opened
    up), ``syncs`` the aten ops that read a device value back to the host. ``ops`` lists
    them in order."""

    launches: int
    syncs: int
    ops: list[str]


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.syncs = 0
        self.bytes: list[int] = []  # per entry of ops: bytes its tensor arguments and outputs hold

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        body = getattr(OPDEFS.get(name), "_init_fn", None) if name.startswith("fastvae::") else None
        if body is not None:
            # Open the custom op: run its Python body under this mode to see what it launches.
            # (OPDEFS and _init_fn are torch.library internals; without them the op counts as
            # one launch, below.)
            with self:
                return body(*args, **kwargs)
        if func.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd):
            # A composite op (e.g. aten::contiguous, alias-annotated like a view) reaches the
            # mode as a whole when called below autograd, as in a custom op's body: run its
            # decomposition under this mode, so the copy it makes (clone) is counted, and
            # nothing when it only returns its input.
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        short = name.split("::", 1)[1]
        if short in _SYNCING:
            self.syncs += 1
        out = func(*args, **kwargs)
        if not (func.is_view or short in _NO_KERNEL):
            self.ops.append(short)
            self.bytes.append(_tensor_bytes((args, kwargs)) + _tensor_bytes(out))
        return out


def _tensor_bytes(tree) -> int:
    leaves = [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in leaves)


@contextlib.contextmanager
def _counting(counter: _Counter):
    """Under ``counter``, with each fastvae kernel launch appended to its ops (and the mode
    off while the launch runs: Triton's CPU interpreter moves data with tensor ops of its own)."""

    def wrap(kernel):
        launch = kernel.launch

        def counted_launch(*args, **kwargs):
            counter.ops.append(f"triton:{kernel.fn.__name__}")
            counter.bytes.append(0)  # filled in by count_bytes under the interpreter
            with _disable_current_modes():
                return launch(*args, **kwargs)

        return counted_launch

    for k in _KERNELS:
        k.launch = wrap(k)
    try:
        with counter:
            yield counter
    finally:
        for k in _KERNELS:
            del k.launch  # back to the class's method


def count_dispatched(fn: Callable[[], object]) -> Dispatched:
    """Count the launches and host syncs of ``fn()`` at the dispatcher (works on the CPU).

    On CUDA each counted entry is one kernel launch; on the CPU it is the launch the same
    call would make on CUDA, as long as the ops take the same paths (the fastvae backend must
    be "triton" for its kernels to be counted). Triton launches are seen through each
    fastvae kernel's run method.
    """
    with _counting(_Counter()) as counter:
        fn()
    return Dispatched(len(counter.ops), counter.syncs, counter.ops)


@dataclass
class Traffic:
    """Bytes ``fn()`` moves, per launch in order (``ops`` as :class:`Dispatched`'s): for a
    Triton kernel the bytes its loads and stores move (masked-off lanes excluded), for any
    other op that runs a kernel the bytes of its tensor arguments and outputs (a read or
    write of each; an in-place op's tensor counts twice: read and written)."""

    ops: list[str]
    bytes: list[int]

    @property
    def total(self) -> int:
        return sum(self.bytes)


def count_bytes(fn: Callable[[], object]) -> Traffic:
    """Count the bytes ``fn()`` moves through memory (see :class:`Traffic`). Needs Triton's
    interpreter (``TRITON_INTERPRET=1`` before import): the kernels' loads and stores are
    counted in its builder, element by element of each unmasked lane."""
    from triton.runtime import interpreter

    if not INTERPRETED:
        raise RuntimeError("count_bytes needs TRITON_INTERPRET=1 set before triton is imported")
    builder = interpreter.InterpreterBuilder
    load, store = builder.create_masked_load, builder.create_masked_store
    counter = _Counter()

    def counted_load(self, ptrs, mask, *args, **kwargs):
        out = load(self, ptrs, mask, *args, **kwargs)
        counter.bytes[-1] += int(mask.data.sum()) * out.data.itemsize
        return out

    def counted_store(self, ptrs, value, mask, *args, **kwargs):
        counter.bytes[-1] += int(mask.data.sum()) * value.data.itemsize
        return store(self, ptrs, value, mask, *args, **kwargs)

    builder.create_masked_load, builder.create_masked_store = counted_load, counted_store
    try:
        with _counting(counter):
            fn()
    finally:
        builder.create_masked_load, builder.create_masked_store = load, store
    return Traffic(counter.ops, counter.bytes)


def profiled_launches(fn: Callable[[], object], device: torch.device) -> int | None:
    """GPU activities (kernels, memsets, copies) that ``fn()`` puts on the device, from
    ``torch.profiler``; None off CUDA."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def cuda_host_syncs(fn: Callable[[], object], device: torch.device) -> int | None:
    """Synchronizing CUDA calls ``fn()`` makes, counted by ``torch.cuda.set_sync_debug_mode``
    ("warn" emits one warning per sync); None off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum(1 for w in caught if "synchroniz" in str(w.message).lower())
