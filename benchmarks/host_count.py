"""Count, for one call of a step, the host events a CUDA run pays for and a CPU run cannot show.

:func:`count` runs the step once under ``torch.profiler`` (CPU activity, memory profiling),
counting wrappers of the backward entry points and, for Triton launches, the fake driver's
launch counter (:mod:`benchmarks.fake_cuda`), and returns :class:`Events`:

- ``allocations``: allocator calls of a positive size made inside an op (the profiler's
  memory records; those outside every op are Python scalars wrapped into CPU tensors, CPU
  memory on CUDA too). On CUDA each is a call into the caching allocator.
- ``torch_ops``: the aten ops that run a kernel: an op counts when it may launch one (not a
  view, not in :data:`NO_KERNEL`) and no op it called counts (``sum`` calling a view counts;
  ``binary_cross_entropy_with_logits`` calling ``log_sigmoid_forward``, ``sub_``, ... does
  not, they do). Left out, with what they allocate: CPU-only work inside an op (the cast of a
  wrapped Python scalar to the common dtype, which a CUDA kernel takes as an argument; the
  ``fill_`` a CPU reduction runs on its output). On CUDA each is one kernel launch.
- ``backwards``: backward passes (``Tensor.backward``, ``torch.autograd.backward``,
  ``torch.autograd.grad``). On CUDA each hands the graph to the device's autograd worker
  thread and waits for it; on the CPU the calling thread runs it.
- ``launches``: Triton launches that reached the driver's ``cuLaunchKernelEx``.

The allocation records are read from the profiler's Kineto results
(``profile.profiler.kineto_results``, a torch internal; the benchmark's own use). The step
runs on CPU tensors, so the op tree is the CPU one: where a CPU kernel is built from
other ops than the CUDA kernel is, the counts differ (e.g. the CPU ``log_sigmoid_forward``
allocates a buffer that the CUDA one leaves empty).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import fake_cuda

# aten ops that allocate, re-view or query memory without launching a kernel on CUDA.
NO_KERNEL = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "resize_",
    "set_", "lift_fresh", "detach", "alias", "is_nonzero", "result_type",
})
# Reductions whose CPU kernels fill their output before reducing (a CUDA reduction does not).
_CPU_REDUCTIONS = frozenset({"aten::sum", "aten::mean", "aten::prod", "aten::amax", "aten::amin"})


@dataclass(frozen=True)
class Events:
    """Host events of one call (see the module docstring); ``ops`` names the counted ops."""

    allocations: int
    torch_ops: int
    backwards: int
    launches: int
    ops: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"allocations": self.allocations, "torch_ops": self.torch_ops,
                "backwards": self.backwards, "launches": self.launches, "ops": list(self.ops)}


@contextlib.contextmanager
def _counting_backwards() -> Iterator[list[int]]:
    """Within the context, ``torch.autograd.backward`` and ``torch.autograd.grad`` (which
    ``Tensor.backward`` and every backward pass call) count their calls into the list's one
    item. Wrapped, not seen through a ``TorchFunctionMode``: torch 2.6's
    ``torch.autograd.backward`` does not dispatch to one."""
    calls = [0]
    originals = torch.autograd.backward, torch.autograd.grad

    def counted(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            calls[0] += 1
            return fn(*args, **kwargs)
        return call

    torch.autograd.backward, torch.autograd.grad = (counted(f) for f in originals)
    try:
        yield calls
    finally:
        torch.autograd.backward, torch.autograd.grad = originals


@dataclass
class _Op:
    """One profiled op with the ops it called and the allocations made directly in it."""

    name: str
    start: int
    end: int
    shapes: list
    parent: "_Op | None" = None
    children: list = field(default_factory=list)
    allocations: int = 0


def _tree(events) -> list[_Op]:
    """The profiler's op records nested by time per thread; each positive memory record is
    attached to the innermost op that was running (records outside every op are dropped:
    Python scalars wrapped into CPU tensors before an op starts, CPU memory on CUDA too)."""
    roots: list[_Op] = []
    stacks: dict[int, list[_Op]] = {}
    for e in sorted(events, key=lambda e: (e.start_ns(), -e.end_ns())):
        stack = stacks.setdefault(e.start_thread_id(), [])
        while stack and stack[-1].end < e.start_ns():
            stack.pop()
        if e.name() == "[memory]":
            if stack and e.nbytes() > 0:
                stack[-1].allocations += 1
            continue
        op = _Op(e.name(), e.start_ns(), e.end_ns(), e.shapes(), stack[-1] if stack else None)
        (stack[-1].children if stack else roots).append(op)
        stack.append(op)
    return roots


def _is_view(name: str) -> bool:
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return False
    overloads = [getattr(packet, o) for o in packet.overloads()]
    return bool(overloads) and all(o.is_view for o in overloads)


def _cpu_only(op: _Op) -> bool:
    """Work a CPU kernel does that the CUDA one does not: the cast of a 0-dim operand (a
    wrapped Python scalar) to the common dtype inside a TensorIterator op (a CUDA kernel takes
    the CPU scalar as an argument), and the fill of a reduction's output before reducing."""
    parent = op.parent
    if parent is None or not parent.name.startswith("aten::"):
        return False
    if op.name == "aten::to":
        return bool(op.shapes) and op.shapes[0] == []
    return op.name == "aten::fill_" and parent.name in _CPU_REDUCTIONS


def _kernel_ops(op: _Op, out: list[str]) -> tuple[int, bool]:
    """(allocations, whether a kernel was counted) in ``op``'s subtree, appending the counted
    ops to ``out``: an aten op counts as one kernel when it may launch one and nothing it
    called did (``sum`` calling only a view does; ``log_sigmoid`` calling
    ``log_sigmoid_forward`` does not)."""
    if _cpu_only(op):
        return 0, False
    allocations, below = op.allocations, False
    for child in op.children:
        a, k = _kernel_ops(child, out)
        allocations, below = allocations + a, below or k
    short = op.name[len("aten::"):] if op.name.startswith("aten::") else None
    if below or short is None or short in NO_KERNEL or _is_view(short):
        return allocations, below
    out.append(short)
    return allocations, True


def count(step: Callable[[], object], driver: fake_cuda.FakeDriver | None = None) -> Events:
    """The events of one ``step()`` (run once before, so that first-call work is not counted).
    ``driver``: the active fake driver, whose launch counter counts Triton launches (0
    without one)."""
    step()
    launched = driver.launches if driver is not None else 0
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                 record_shapes=True) as prof, _counting_backwards() as backwards:
        step()
    launched = (driver.launches if driver is not None else 0) - launched
    ops: list[str] = []
    roots = _tree(prof.profiler.kineto_results.events())
    allocations = sum(_kernel_ops(root, ops)[0] for root in roots)
    return Events(allocations, len(ops), backwards[0], launched, tuple(ops))
