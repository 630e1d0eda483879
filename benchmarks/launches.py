"""Record the Triton launches a call makes, and compile each one for sm_90 as Triton would.

Used by the static roofline report (:mod:`benchmarks.static`) and by ``tests/cuda_compile.py``,
in a process WITHOUT ``TRITON_INTERPRET`` (the interpreter replaces ``@triton.jit`` functions
by plain Python, so there would be nothing to compile) and without a GPU:

- :func:`recording` makes every ``kernel[grid](...)`` launch record ``(kernel, args, kwargs,
  grid)`` instead of running (``JITFunction.run`` is patched), and lets the launchers take CPU
  tensors (fastvae's ``check_launchable`` is bypassed in every ``fastvae`` module that
  imported it). The launchers' host code runs for real, so the recorded grid, block sizes and
  arguments are exactly what they compute for the given shapes; the kernels themselves do not
  run, and tensors allocated with ``torch.empty`` at benchmark sizes stay untouched.
- :func:`compile_sm90` compiles one recorded launch for ``GPUTarget("cuda", 90, 32)`` through
  Triton's own binder (``create_function_from_signature``) and ``JITFunction._pack_args``: the
  same runtime specialization a launch on an H100 gives those arguments (pointers 16-byte
  aligned, integers divisible by 16, integers equal to 1 made constants), the same options
  (``num_warps`` etc. from the launch's keywords) and the same ``triton.compile`` call as
  ``JITFunction._do_compile``. CPU allocations are 64-byte aligned and CUDA's 256-byte aligned,
  so a pointer's 16-byte divisibility is the same on both.

Autotuned kernels are refused (the config would come from timing on a GPU).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction, create_function_from_signature

SM90 = GPUTarget("cuda", 90, 32)


@dataclass
class Launch:
    """One intercepted ``kernel[grid](*args, **kwargs)``; ``phase`` is the label that was
    current when it was launched (see :meth:`Recorder.phase`)."""

    kernel: JITFunction
    args: tuple
    kwargs: dict
    grid: Any
    phase: str = ""

    @property
    def name(self) -> str:
        return self.kernel.__name__


@dataclass
class Recorder:
    """The launches recorded so far and the current phase label."""

    launches: list[Launch] = field(default_factory=list)
    current: str = ""

    @contextlib.contextmanager
    def phase(self, label: str) -> Iterator[None]:
        """Launches made inside get ``label`` as their phase."""
        previous, self.current = self.current, label
        try:
            yield
        finally:
            self.current = previous


def _accept_any_device(*_args, **_kwargs) -> None:
    return None


def _add_run_options(kernel: JITFunction, kwargs: dict) -> dict:
    """Add to a launch's keywords the options ``JITFunction.run`` adds before binding
    (``debug``, ``instrumentation_mode``; Triton 3.2, without ``triton.knobs``: ``debug`` from
    ``TRITON_DEBUG``); returns ``kwargs``, changed in place."""
    knobs = getattr(triton, "knobs", None)
    if knobs is None:
        kwargs["debug"] = kwargs.get("debug", False) or os.environ.get("TRITON_DEBUG", "0") == "1"
        return kwargs
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    return kwargs


@contextlib.contextmanager
def launchable_on_cpu() -> Iterator[None]:
    """Within the context, fastvae's launchers accept CPU tensors: ``check_launchable`` is
    replaced by a no-op in every ``fastvae`` module that imported it (restored on exit)."""
    import fastvae.kernels._common as common

    original = common.check_launchable
    patched = [m for name, m in list(sys.modules.items())
               if name.startswith("fastvae") and getattr(m, "check_launchable", None) is original]
    for m in patched:
        m.check_launchable = _accept_any_device
    try:
        yield
    finally:
        for m in patched:
            m.check_launchable = original


@contextlib.contextmanager
def recording() -> Iterator[Recorder]:
    """Within the context, Triton launches are recorded (not run) and fastvae's launchers
    accept CPU tensors; both are restored on exit."""
    recorder = Recorder()

    def run(kernel, *args, grid, warmup, **kwargs):
        recorder.launches.append(Launch(kernel, args, dict(kwargs), grid, recorder.current))

    def refuse(tuner, *args, **kwargs):
        raise NotImplementedError(
            f"{tuner.fn.__name__} is autotuned: its config comes from timing on a GPU, so it "
            "cannot be compiled statically"
        )

    saved_run, saved_tuner = JITFunction.run, Autotuner.run
    JITFunction.run, Autotuner.run = run, refuse
    try:
        with launchable_on_cpu():
            yield recorder
    finally:
        JITFunction.run, Autotuner.run = saved_run, saved_tuner


@dataclass
class Compiled:
    """A launch compiled for sm_90: Triton's CompiledKernel, the specialized signature
    (``{"r_ptr": "*fp32", "D": "i32", "grad_div": "constexpr", ...}``), the constexpr values
    and divisibility attributes, and the grid as launched (a tuple of up to 3 ints)."""

    launch: Launch
    kernel: Any
    signature: dict
    constexprs: dict
    attrs: dict
    grid: tuple

    @property
    def num_warps(self) -> int:
        return self.kernel.metadata.num_warps

    def asm(self, stage: str) -> Any:
        return self.kernel.asm[stage]


def bind(launch: Launch, target: GPUTarget = SM90):
    """Triton's own binding of the launch's arguments for ``target``: returns
    ``(bound_args, options, signature, constexprs, attrs)`` exactly as ``JITFunction.run``
    computes them before compiling."""
    kernel = launch.kernel
    backend = make_backend(target)
    kwargs = _add_run_options(kernel, dict(launch.kwargs))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    if not hasattr(kernel, "_pack_args"):
        return _bind_triton_3_2(kernel, backend, binder(*launch.args, **kwargs), kwargs)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args,
                                                              specialization, options)
    return bound_args, options, signature, constexprs, attrs


def _bind_triton_3_2(kernel: JITFunction, backend, bound: tuple, kwargs: dict):
    """Triton 3.2's ``JITFunction.run`` binding (it has no ``_pack_args``): the signature of the
    non-constexpr parameters, the constants (constexprs, integers equal to 1, None) keyed by
    name, and the ``AttrsDescriptor``."""
    bound_args, sig_and_spec = bound[:2]
    values = tuple(bound_args.values())
    names = [p.name for p in kernel.params if not p.is_constexpr]
    signature = {k: "*i8" if v == "none" else v for k, v in zip(names, sig_and_spec)}
    attrs = backend.get_attrs_descriptor(kernel.params, values)
    constant = attrs.get_constants()
    constexprs = {p.name: v for v, p in zip(values, kernel.params)
                  if p.is_constexpr or p.num in constant or v is None}
    return bound_args, backend.parse_options(kwargs), signature, constexprs, attrs


def compile_sm90(launch: Launch, target: GPUTarget = SM90) -> Compiled:
    """Compile ``launch`` for ``target`` with its runtime specialization (see the module
    docstring). Uses Triton's on-disk cache, so a repeated variant is fast."""
    bound_args, options, signature, constexprs, attrs = bind(launch, target)
    src = ASTSource(launch.kernel, signature, constexprs, attrs)
    compiled = triton.compile(src, target=target, options=options.__dict__)
    grid = launch.grid(bound_args) if callable(launch.grid) else launch.grid
    grid = tuple(int(g) for g in grid)
    names = [p.name for p in launch.kernel.params]
    if isinstance(attrs, dict):  # keyed by argument paths
        constexprs = {names[k[0]]: v for k, v in constexprs.items()}
        attrs = {names[k[0]]: v for k, v in attrs.items() if v}
    else:  # Triton 3.2: constexprs keyed by name, an AttrsDescriptor of argument indices
        descriptor, attrs = attrs, {}
        for prop, indices in descriptor.arg_properties.items():
            for i in indices:
                attrs.setdefault(names[i], []).append([prop, descriptor.property_values[prop]])
    return Compiled(launch, compiled, signature, constexprs, attrs, grid)


def tensor_args(launch: Launch) -> list[torch.Tensor]:
    """The distinct tensors passed to the launch (a tensor passed twice, e.g. as a dummy
    pointer for an output that is switched off, counts once)."""
    seen, out = set(), []
    for a in list(launch.args) + list(launch.kwargs.values()):
        if isinstance(a, torch.Tensor):
            key = (a.data_ptr(), a.numel() * a.element_size())
            if key not in seen:
                seen.add(key)
                out.append(a)
    return out
