"""Checks of plain arguments (sizes, names, weights) shared by the data, model and training
layers; each failure is a ValueError naming the argument, the expected and the actual value."""

from __future__ import annotations

import math
import numbers


def positive_int(name: str, value) -> None:
    """``value`` must be an int >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def choice(name: str, value, choices: tuple[str, ...]) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


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
