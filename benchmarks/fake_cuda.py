"""A fake CUDA driver, so that Triton's whole launch path runs (and can be timed) on a CPU.

:func:`active` builds, once per machine, a C stub ``libcuda.so.1`` (gcc, into a cache folder,
never into the repository) that exports the CUDA driver entry points Triton 3.8's NVIDIA
backend calls (``driver.c``: module loading, function and device attributes, contexts,
``cuPointerGetAttribute``, ``cuLaunchKernelEx``) and answers each with success and fixed
values (an sm_90 device, a non-null context, a pointer that is its own device pointer). It
then makes a Triton driver active whose device and stream queries return fixed values and
whose target is ``GPUTarget("cuda", 90, 32)``. Within it, ``kernel[grid](...)`` runs Triton's
real host path: ``JITFunction.run`` (argument binding and specialization, the kernel-cache
key), the real ``CompiledKernel`` compiled for sm_90 (ptxas ships with Triton; the first
launch of each variant compiles, cached on disk), ``launch_metadata``, the ``CudaLauncher``
and Triton's C launcher (argument extraction, ``data_ptr()`` of each tensor), up to
``cuLaunchKernelEx``, which only counts the call (:attr:`FakeDriver.launches`). Nothing runs
on any device: CPU tensors stand in for CUDA ones (fastvae's ``check_launchable`` is bypassed
as in :func:`benchmarks.launches.launchable_on_cpu`) and their memory is never touched.

This is a benchmark harness: it sets Triton's active driver through
``triton.runtime.driver.set_active`` and restores the previous one through the private
``DriverConfig._active`` (resetting would look for a real driver). The CUDA runtime that
torch loads finds the stub too (it is loaded under the soname ``libcuda.so.1``): the stub
answers ``cuInit`` with "no device", so ``torch.cuda.is_available()`` stays False. Use it in
a process of its own (the CLI and the tests do): kernels launched under it keep their sm_90
``CompiledKernel`` in their caches.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.driver import CudaDriver

SM90 = GPUTarget("cuda", 90, 32)

# Every driver entry point Triton 3.8's driver.c and launcher call, plus what the CUDA runtime
# probes when it finds a libcuda.so.1 (cuInit, cuDeviceGetCount, cuGetProcAddress), which
# must see no device. Handles are fixed non-null values; attributes those of a large sm_90.
STUB_SOURCE = r"""
#include <stdint.h>
#include <stddef.h>
typedef int CUresult;
#define OK 0
#define NO_DEVICE 100
#define NOT_FOUND 500

static unsigned long long launches = 0;
unsigned long long fake_cuda_launches(void) { return launches; }

CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                        unsigned bz, unsigned shared, void *stream, void **params, void **extra) {
  ++launches; /* Triton 3.2's launcher, for kernels without thread-block clusters */
  return OK;
}
CUresult cuLaunchKernelEx(const void *config, void *f, void **params, void **extra) {
  ++launches;
  return OK;
}
CUresult cuLaunchKernelEx_ptsz(const void *config, void *f, void **params, void **extra) {
  ++launches;
  return OK;
}
CUresult cuPointerGetAttribute(void *data, int attribute, uint64_t ptr) {
  *(uint64_t *)data = ptr;
  return OK;
}
CUresult cuPointerGetAttributes(unsigned n, int *attrs, void **data, uint64_t ptr) { return OK; }
CUresult cuCtxGetCurrent(void **ctx) { *ctx = (void *)0x1000; return OK; }
CUresult cuCtxSetCurrent(void *ctx) { return OK; }
CUresult cuCtxGetDevice(int *device) { *device = 0; return OK; }
CUresult cuCtxGetLimit(size_t *value, int limit) { *value = 0; return OK; }
CUresult cuCtxSetLimit(int limit, size_t value) { return OK; }
CUresult cuDeviceGet(int *device, int ordinal) { *device = ordinal; return OK; }
CUresult cuDevicePrimaryCtxRetain(void **ctx, int device) { *ctx = (void *)0x1000; return OK; }
CUresult cuDeviceGetAttribute(int *value, int attribute, int device) {
  switch (attribute) {
    case 75: *value = 9; break;        /* compute capability major */
    case 76: *value = 0; break;        /* compute capability minor */
    case 97: *value = 232448; break;   /* max shared memory per block (opt-in) */
    case 16: *value = 132; break;      /* multiprocessors */
    case 10: *value = 32; break;       /* warp size */
    default: *value = 65536;
  }
  return OK;
}
CUresult cuModuleLoadData(void **module, const void *image) { *module = (void *)0x2000; return OK; }
CUresult cuModuleUnload(void *module) { return OK; }
CUresult cuModuleGetFunction(void **f, void *module, const char *name) {
  *f = (void *)0x3000;
  return OK;
}
CUresult cuFuncGetAttribute(int *value, int attribute, void *f) {
  *value = attribute == 0 ? 1024 : 0; /* max threads per block; registers, spills: 0 */
  return OK;
}
CUresult cuFuncSetAttribute(void *f, int attribute, int value) { return OK; }
CUresult cuFuncSetCacheConfig(void *f, int config) { return OK; }
CUresult cuOccupancyMaxActiveClusters(int *n, void *f, const void *config) { *n = 1; return OK; }
CUresult cuTensorMapEncodeTiled(void) { return OK; }
CUresult cuTensorMapEncodeIm2col(void) { return OK; }
CUresult cuDriverGetVersion(int *version) { *version = 13000; return OK; }
CUresult cuGetErrorString(CUresult error, const char **str) {
  *str = "fake CUDA driver";
  return OK;
}
CUresult cuGetErrorName(CUresult error, const char **str) { *str = "FAKE"; return OK; }
CUresult cuInit(unsigned flags) { return NO_DEVICE; }
CUresult cuDeviceGetCount(int *count) { *count = 0; return NO_DEVICE; }
CUresult cuGetProcAddress(const char *s, void **p, int v, uint64_t f) { *p = 0; return NOT_FOUND; }
CUresult cuGetProcAddress_v2(const char *s, void **p, int v, uint64_t f, void *st) {
  *p = 0;
  return NOT_FOUND;
}
"""


class FakeDriverUnavailable(RuntimeError):
    """The stub cannot be built here (no C compiler)."""


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastvae" / "fake-cuda"


def compiler() -> str | None:
    """The C compiler the stub is built with ($CC, else gcc, else cc), or None."""
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def build_stub() -> Path:
    """The folder holding the built ``libcuda.so.1`` (built at most once per source version,
    written atomically).

    Raises:
        FakeDriverUnavailable: no C compiler, or the compiler failed.
    """
    folder = _cache_root() / hashlib.sha256(STUB_SOURCE.encode()).hexdigest()[:16]
    lib = folder / "libcuda.so.1"
    if lib.exists():
        return folder
    cc = compiler()
    if cc is None:
        raise FakeDriverUnavailable("no C compiler ($CC, gcc or cc) to build the fake libcuda.so.1")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src, out = Path(tmp) / "fake_cuda.c", Path(tmp) / "libcuda.so.1"
        src.write_text(STUB_SOURCE, encoding="utf-8")
        cmd = [cc, "-O2", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", str(src), "-o", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise FakeDriverUnavailable(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(out, lib)
    return folder


class FakeDriver(CudaDriver):
    """Triton's NVIDIA driver (its real ``CudaUtils`` module and ``CudaLauncher``, linked
    against the stub) with fixed answers to the queries torch would otherwise answer:
    device 0, stream 0 (the default stream), compute capability 9.0."""

    def __init__(self, stub: ctypes.CDLL):
        super().__init__()
        self._stub = stub
        self._stub.fake_cuda_launches.restype = ctypes.c_ulonglong
        self.get_current_device = _device_zero
        self.get_current_stream = _stream_zero
        self.set_current_device = _ignore
        self.get_device_capability = _capability_90

    def get_current_target(self) -> GPUTarget:
        return SM90

    @property
    def launches(self) -> int:
        """Calls of ``cuLaunchKernelEx`` so far (every launch that reached the driver)."""
        return int(self._stub.fake_cuda_launches())


def _device_zero() -> int:
    return 0


def _stream_zero(device: int) -> int:
    return 0


def _ignore(device: int) -> None:
    return None


def _capability_90(device: int = 0) -> tuple[int, int]:
    return (9, 0)


_DRIVER: FakeDriver | None = None


def _set_libcuda_path(folder: Path) -> None:
    """Where Triton links its cuda_utils module: ``knobs.nvidia.libcuda_path`` (Triton 3.4 and
    later); before, the ``TRITON_LIBCUDA_PATH`` environment variable, and the link is made
    with ``-lcuda``, which needs the name ``libcuda.so`` beside the stub."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        knobs.nvidia.libcuda_path = str(folder)
        return
    os.environ["TRITON_LIBCUDA_PATH"] = str(folder)
    if not (folder / "libcuda.so").exists():
        tmp = folder / f"libcuda.so.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to("libcuda.so.1")
        os.replace(tmp, folder / "libcuda.so")


def _driver() -> FakeDriver:
    """The process's one fake driver (the stub is loaded once, under its soname).

    Raises:
        FakeDriverUnavailable: the stub or Triton's ``cuda_utils`` module cannot be built.
    """
    global _DRIVER
    if _DRIVER is None:
        folder = build_stub()
        stub = ctypes.CDLL(str(folder / "libcuda.so.1"), mode=ctypes.RTLD_GLOBAL)
        _set_libcuda_path(folder)
        try:
            _DRIVER = FakeDriver(stub)
        except (subprocess.CalledProcessError, RuntimeError) as e:
            raise FakeDriverUnavailable(f"Triton's CUDA utilities did not build: {e}") from e
    return _DRIVER


@contextlib.contextmanager
def active() -> Iterator[FakeDriver]:
    """Within the context, Triton launches go through :class:`FakeDriver` (see the module
    docstring). Needs ``TRITON_INTERPRET`` unset (the interpreter launches nothing).

    Raises:
        FakeDriverUnavailable: the stub cannot be built (no C compiler), or a CUDA device is
            present (the stub would shadow the real driver; time the real launch path there).
        RuntimeError: ``TRITON_INTERPRET=1`` is set.
    """
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("the fake driver times compiled launches: unset TRITON_INTERPRET")
    if _DRIVER is None and torch.cuda.is_available():
        raise FakeDriverUnavailable("a CUDA device is present: time the real launch path "
                                    "(python -m benchmarks.gpu_check), not a fake one")
    config = triton.runtime.driver
    fake = _driver()
    slot = "_active" if "_active" in vars(config) else "active"  # "active": Triton 3.2
    previous = vars(config)[slot]
    config.set_active(fake)
    try:
        yield fake
    finally:
        setattr(config, slot, previous)


@triton.jit
def noop_kernel(x_ptr):
    """Does nothing: its launches time the launch path alone."""
    pass


def direct_noop_launcher(x: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """``launch(t)``: one launch of :func:`noop_kernel` (compiled for ``x``'s specialization,
    under the active driver) through its ``CompiledKernel``'s launcher called directly, on
    the current stream: the cheapest launch path, with no ``JITFunction.run``."""
    compiled = noop_kernel.warmup(x, grid=(1,))
    run, function, metadata = compiled.run, compiled.function, compiled.packed_metadata

    def launch(t: torch.Tensor) -> None:
        stream = triton.runtime.driver.active.get_current_stream(0)
        run(1, 1, 1, stream, function, metadata, None, None, None, t)

    return launch


def _per_call_us(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) * 1e6 / reps


def launch_paths(reps: int = 2000) -> dict:
    """Microseconds per no-op launch through ``JITFunction.run`` (``kernel[grid](x)``) and
    through its cached ``CompiledKernel``'s launcher called directly, and the driver calls
    counted for each (one per launch): what a launch path costs is measured, so a shorter
    path shows as a smaller time."""
    x = torch.empty(16)
    with active() as driver:
        direct = direct_noop_launcher(x)
        out = {}
        for name, fn in (("jit_run", lambda: noop_kernel[(1,)](x)),
                         ("compiled_kernel", lambda: direct(x))):
            before = driver.launches
            out[f"{name}_us"] = _per_call_us(fn, reps)
            out[f"{name}_driver_calls"] = driver.launches - before
    out["reps"] = reps
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fake_cuda",
                                description="Time a no-op launch through the fake driver.")
    p.add_argument("--reps", type=int, default=2000)
    args = p.parse_args(argv)
    try:
        res = launch_paths(args.reps)
    except FakeDriverUnavailable as e:
        print(f"fake CUDA driver unavailable: {e}", file=sys.stderr)
        return 2
    for name in ("jit_run", "compiled_kernel"):
        print(f"{name:<16} {res[f'{name}_us']:7.2f} us per launch, "
              f"{res[f'{name}_driver_calls']} driver calls for {res['reps'] + 1} launches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
