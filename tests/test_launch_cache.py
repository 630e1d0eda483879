"""The launch cache (``kernels/_launch.py``) launches a cached compiled kernel only for keys
that determine Triton's specialization: checked on the whole compile matrix, without a GPU;
and every launch of a cached kernel takes its own grid."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import launch_cache
import pytest
import triton
from triton.compiler import CompiledKernel

from fastvae.kernels import _launch


def test_equal_keys_get_equal_specializations():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(Path(launch_cache.__file__))], env=env, capture_output=True,
        text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert lines[-1] == "ok", result.stdout[-2000:]
    n_launches, n_keys, uncached = (int(w) for w in lines[-2].split()[1::2])
    # every call ran twice on new tensors: each key was met at least twice
    assert n_keys > 20 and n_keys * 2 <= n_launches - uncached, lines[-2]


class _CompiledStub:
    """What ``JITFunction[grid](...)`` returns on a GPU: a compiled kernel whose launcher and
    runner record the grids they are given."""

    function, packed_metadata = 7, None
    src = SimpleNamespace(signature={"x": "i32"})

    def __init__(self):
        self.grids = []

    def run(self, gx, gy, gz, stream, function, metadata, *rest):
        self.grids.append(("launcher", (gx, gy, gz)))

    def __getitem__(self, grid):
        return lambda *args: self.grids.append(("runner", tuple(grid)))


class _JitStub:
    params = [SimpleNamespace(name="x")]

    def __init__(self):
        self.compiled = _CompiledStub()

    def __getitem__(self, grid):
        def run(*args, num_warps):
            self.compiled.grids.append(("triton", tuple(grid)))
            return self.compiled
        return run


@pytest.mark.parametrize("hooked", [False, True], ids=["launcher", "runner"])
def test_a_cached_launch_takes_its_own_grid(hooked, monkeypatch):
    """The grid is no part of a key (the recon backward's key holds D, not B): a second launch
    with the same key and another grid must launch that grid, on the direct launcher and on
    the runner that launch hooks get."""
    hooks = SimpleNamespace(launch_enter_hook=(lambda *a: None) if hooked else None,
                            launch_exit_hook=None)
    monkeypatch.setattr(_launch, "_HOOKS", hooks)
    monkeypatch.setattr(_launch, "triton", SimpleNamespace(
        runtime=SimpleNamespace(driver=SimpleNamespace(
            active=SimpleNamespace(get_current_stream=lambda device: 0))),
    ))
    fn = _JitStub()
    kernel = _launch.CachedKernel(fn)
    for n_programs in (3, 5, 2):
        kernel.launch((0, "same key"), n_programs, (1,))
    path = "runner" if hooked else "launcher"
    # the first launch takes Triton's path (compiling); the later ones the cached kernel
    assert fn.compiled.grids == [("triton", (3,)), (path, (5, 1, 1)), (path, (2, 1, 1))]


def test_launch_hooks_are_read_where_triton_keeps_them(monkeypatch):
    """A hook a profiler sets where the installed Triton reads it (``knobs.runtime``, or the
    ``CompiledKernel`` class before Triton 3.4) sends launches to the hooked runner."""
    holder = triton.knobs.runtime if hasattr(triton, "knobs") else CompiledKernel
    assert not _launch._launch_hooks_set()
    monkeypatch.setattr(holder, "launch_enter_hook", lambda *a: None)
    assert _launch._launch_hooks_set()
