"""Launching a ``@triton.jit`` kernel at the cost of its compiled launcher.

``kernel[grid](*args)`` goes through ``JITFunction.run``: it binds every argument, specializes
each one (pointer dtype and 16-byte alignment; integer width, divisibility by 16 and equality
to 1), hashes the result into a cache key, asks the driver for the device and stream and only
then calls the compiled kernel's launcher. On an H200 host that is 19 us for a kernel with no
arguments and most of the 98 us a fastvae loss call cost (measured in
``benchmarks/results/h200-2026-12-04/``).

A launcher of this package already knows, from the shapes, strides and dtypes it was handed,
everything that specialization can depend on. It names those values as a ``key``; the first
launch for a key takes Triton's own path (compiling if needed) and keeps the compiled kernel
it returns; every later launch with the same key calls that kernel's launcher (Triton's
``CudaLauncher`` and its C launch function) directly, with the current stream: what
``JITFunction.run`` ends with. While a launch hook is set (a profiler such as Triton's proton)
the compiled kernel's own runner (``CompiledKernel[grid]``) is called instead: it computes the
launch metadata the hook receives. The grid is not part of the specialization: every launch
passes its own (a cached kernel launched with the grid of the launch that compiled it would
leave programs out, or run past the data, when only the grid differs).

The key must determine Triton's specialization. The launchers build it from the device, the
16-byte alignment of every pointer, every pointer's dtype, every integer argument and every
constexpr: all that Triton specializes on. Left out are only floats (Triton passes them as
fp32, never specialized) and integers annotated ``tl.int64`` and listed in
``do_not_specialize`` (the Philox seed and offset). A key of None (some pointer not 16-byte
aligned, an uncommon view) always takes Triton's path. ``tests/test_launch_cache.py`` holds
the rule: launches with equal keys get equal specializations from Triton's binder.

Under ``TRITON_INTERPRET=1`` there is no compiled kernel (Triton's path returns None): every
launch takes Triton's path.
"""

from __future__ import annotations

from typing import Any, Hashable, NamedTuple

import triton
from triton.compiler import CompiledKernel

from ._common import INTERPRETED

# Distinct keys kept per kernel (shapes a program uses are few; a program that cycles through
# more only pays Triton's own path again after the cache is cleared).
_MAX_KEYS = 512


def launch_key(pointers: tuple, values: tuple) -> tuple | None:
    """The key of a launch (see above): the device, every pointer's dtype and ``values`` (every
    integer and constexpr argument), or None when a pointer is not 16-byte aligned (Triton
    would specialize on that: such launches are not cached) or the kernels are interpreted."""
    if INTERPRETED:
        return None
    bits = 0
    for p in pointers:
        bits |= p.data_ptr()
    if bits & 15:
        return None
    return (pointers[0].get_device(), *[p.dtype for p in pointers], *values)


# Where Triton keeps its launch hooks, fixed by the installed version: ``knobs.runtime`` (a
# chain of hooks since Triton 3.5); before 3.4, the ``CompiledKernel`` class attributes.
_HOOKS = triton.knobs.runtime if hasattr(triton, "knobs") else CompiledKernel


def _launch_hooks_set() -> bool:
    """Whether Triton calls a hook around each launch."""
    return _set(_HOOKS.launch_enter_hook) or _set(_HOOKS.launch_exit_hook)


def _set(hook) -> bool:
    return hook is not None and bool(getattr(hook, "calls", True))  # an empty chain calls nothing


class _Compiled(NamedTuple):
    """One specialization's compiled kernel, its launcher and where it runs."""

    kernel: CompiledKernel  # kernel[grid] is its runner
    launcher: Any  # CompiledKernel.run
    function: int  # CompiledKernel.function, the loaded CUfunction
    packed_metadata: Any
    device: int
    taken: tuple[int, ...] | None  # the arguments the launcher takes; None: all of them


def _taken(fn, kernel) -> tuple[int, ...] | None:
    """The indices of the arguments a compiled kernel's launcher takes: one per entry of its
    compiled signature, which holds every parameter (constexprs included, None is returned)
    or, in Triton 3.2, the non-constexpr parameters only."""
    names = kernel.src.signature
    if len(names) == len(fn.params):
        return None
    return tuple(i for i, p in enumerate(fn.params) if p.name in names)


class CachedKernel:
    """A ``@triton.jit`` function launched through per-key compiled kernels (see above).

    ``launch(key, n_programs, args, num_warps)`` launches ``n_programs`` programs (a 1-D grid)
    with the positional ``args`` (every kernel parameter, constexprs included, in order) on
    the current device, which must be the device of the key's tensors.
    """

    def __init__(self, fn):
        self.fn = fn
        self._compiled: dict[Hashable, _Compiled] = {}

    def launch(
        self, key: Hashable | None, n_programs: int, args: tuple, num_warps: int = 4
    ) -> None:
        c = self._compiled.get(key) if key is not None else None
        if c is None:
            self._first_launch(key, n_programs, args, num_warps)
            return
        if c.taken is not None:
            args = tuple(args[i] for i in c.taken)
        if _launch_hooks_set():
            c.kernel[(n_programs, 1, 1)](*args)
        else:
            stream = triton.runtime.driver.active.get_current_stream(c.device)
            c.launcher(n_programs, 1, 1, stream, c.function, c.packed_metadata, None, None, None,
                       *args)

    def _first_launch(self, key, n_programs: int, args: tuple, num_warps: int) -> None:
        kernel = self.fn[(n_programs,)](*args, num_warps=num_warps)
        if key is None or kernel is None:  # None: interpreted (or a benchmark's stub)
            return
        if len(self._compiled) >= _MAX_KEYS:
            self._compiled.clear()
        kernel[(n_programs, 1, 1)]  # loads the module and makes the launcher first
        self._compiled[key] = _Compiled(
            kernel, kernel.run, kernel.function, kernel.packed_metadata, key[0],
            _taken(self.fn, kernel),
        )
