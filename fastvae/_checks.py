"""Argument checks for the public API and the layers above it (data, models, training,
studies): every failure names the argument, what was expected and what was given."""

from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FLOAT_SET = frozenset(FLOAT_DTYPES)
_DIMS = {1: "the batch", 2: "the batch and at least one latent dim"}


def plain_pair(a, b, *, min_ndim: int, same_dtype: bool = True) -> bool:
    """True when ``a`` and ``b`` are plain float tensors that pass :func:`tensor` and
    :func:`same`: one cheap test for the common case (the hot path calls it every step); on
    False the detailed checks run and raise with their messages."""
    if type(a) is not torch.Tensor or type(b) is not torch.Tensor:
        return False
    dtype_a, dtype_b = a.dtype, b.dtype  # dtypes are singletons: ``is`` compares them
    return (
        dtype_a in _FLOAT_SET
        and (dtype_b is dtype_a or (not same_dtype and dtype_b in _FLOAT_SET))
        and a.dim() >= min_ndim
        and a.shape == b.shape
        and a.device == b.device
    )


def tensor(name: str, t, *, min_ndim: int = 1) -> None:
    """``t`` must be a floating-point tensor with at least ``min_ndim`` dims."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {t.dtype}"
        )
    if t.dim() < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dim{'s' if min_ndim > 1 else ''} "
            f"({_DIMS[min_ndim]}), got shape {tuple(t.shape)}"
        )


def same(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor, *, dtype: bool = True) -> None:
    """``a`` and ``b`` must agree in shape, device and (unless ``dtype`` is False) dtype."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b} must have the same shape as {name_a}: expected {tuple(a.shape)}, "
            f"got {tuple(b.shape)}"
        )
    if dtype and a.dtype != b.dtype:
        raise TypeError(
            f"{name_b} must have the same dtype as {name_a}: expected {a.dtype}, got {b.dtype}"
        )
    if a.device != b.device:
        raise ValueError(
            f"{name_b} must be on the same device as {name_a}: expected {a.device}, "
            f"got {b.device}"
        )


def broadcastable(name: str, t: torch.Tensor, name_to: str, to: torch.Tensor) -> None:
    """``t`` must broadcast to ``to``'s shape (without enlarging it) and be on its device."""
    try:
        ok = torch.broadcast_shapes(t.shape, to.shape) == to.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name} must be broadcastable to the shape of {name_to} {tuple(to.shape)}, got "
            f"shape {tuple(t.shape)}"
        )
    if t.device != to.device:
        raise ValueError(
            f"{name} must be on the same device as {name_to}: expected {to.device}, got {t.device}"
        )


def real(name: str, value) -> None:
    """``value`` must be a real Python number (not a bool, not a tensor)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a float tensor or a real number, got {type(value).__name__}"
        )


def choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def finite_nonnegative(name: str, value) -> None:
    """``value`` must be a finite real number >= 0 (not a bool)."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not real or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def probability(name: str, value) -> None:
    """``value`` must be a number in [0, 1) (a dropout probability)."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not real or not 0 <= value < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")


def generator(gen, device: torch.device) -> None:
    if gen is None:
        return
    if not isinstance(gen, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(gen).__name__}")
    if gen.device.type != device.type:
        raise ValueError(
            f"generator must be on the device type of mu ({device.type}), got a generator on "
            f"{gen.device}"
        )
