"""Helpers shared by the kernel launchers: where a kernel may run, and launch-size arithmetic."""

import contextlib
import os

import torch

# Triton decides at decoration time whether @triton.jit builds GPU kernels or numpy-backed
# interpreted ones; TRITON_INTERPRET=1 must therefore be set before this package is imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_launchable(name: str, t: torch.Tensor) -> None:
    """Raise if ``t`` cannot be passed to a Triton kernel in this process.

    Raises:
        ValueError: CPU tensor without the interpreter, a tensor on any other device than
            CUDA or the CPU (meta, mps, ...), or bfloat16 under the interpreter (numpy has no
            bfloat16).
    """
    if t.is_cuda:
        return
    if t.device.type != "cpu":
        raise ValueError(
            f"{name} is on device {t.device}, but the Triton kernels need CUDA tensors (or CPU "
            "tensors under TRITON_INTERPRET=1); use backend='torch' for this device."
        )
    if not INTERPRETED:
        raise ValueError(
            f"{name} is on device {t.device}, but the Triton kernels need CUDA tensors (or "
            "TRITON_INTERPRET=1 set before importing fastvae, to run them on the CPU through "
            "Triton's interpreter). Use backend='torch' for CPU tensors."
        )
    if t.dtype == torch.bfloat16:
        raise ValueError(
            f"{name} has dtype torch.bfloat16, which Triton's CPU interpreter does not support; "
            "use a CUDA device, another dtype, or backend='torch'."
        )


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of losses and reductions: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pow2_at_least(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1): block sizes must be powers of two."""
    return 1 << max(n - 1, 0).bit_length()


class TicketCounters(dict):
    """Per-device int32 ticket counters of a last-program reduction, ``counters[device]``: a
    buffer of ``size`` counters allocated at first use (zeros) and kept (a captured CUDA
    graph holds its address). Every launch leaves its counters at 0; launches that share
    them must not run concurrently on two streams of that device."""

    def __init__(self, size: int = 1):
        super().__init__()
        self.size = size

    def __missing__(self, device: torch.device) -> torch.Tensor:
        counters = self[device] = torch.zeros(self.size, dtype=torch.int32, device=device)
        return counters


_NO_GUARD = contextlib.nullcontext()  # reusable: entering it does nothing


def device_guard(t: torch.Tensor):
    """A context that makes ``t``'s CUDA device current for a launch (Triton launches on the
    current device, whatever device the pointers live on): a no-op context for CPU tensors,
    with a single visible GPU (every CUDA tensor is on the current device), and when ``t``'s
    device already is current."""
    if t.is_cuda and torch.cuda.device_count() > 1:
        index = t.get_device()
        if index != torch.cuda.current_device():
            return torch.cuda.device(index)
    return _NO_GUARD
