"""The conventions every fastvae op follows, stated once: likelihood names, reductions (torch's
names and meanings), what a reduction divides by, and the dtype losses are computed in.

Reductions. Every loss is first summed over each sample's non-batch dims, then:

- "none": the per-sample values, ``(B,)``;
- "sum": their total;
- "mean": torch's per-element mean, the total divided by the number of elements (B x D for a
  reconstruction, B x L for the KL): ``F.mse_loss``'s and ``F.binary_cross_entropy``'s default;
- "batchmean": the total divided by B, nats per sample (``F.kl_div``'s name), fastvae's default.

A mean over nothing is NaN, as ``torch.mean`` of an empty tensor: "mean" of no elements,
"batchmean" of no rows. ``fastvae.reference.reduce_rows`` states the same in plain PyTorch; the
tests hold the two together.
"""

from __future__ import annotations

import math

import torch

LIKELIHOODS = ("bernoulli", "bernoulli_probs", "mse", "gaussian")
REDUCTIONS = ("none", "sum", "mean", "batchmean")


def accumulation_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any input is float64; every other mix of floating dtypes is computed and
    reduced in float32 (bf16 decoder output and fp32 targets under autocast, for instance)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def divisor(reduction: str, batch: int, numel: int) -> int:
    """What a reduced loss (and its gradient) is divided by: B for "batchmean", ``numel`` (all
    elements the loss sums over) for "mean", 1 for "none" and "sum", and 1 for an empty input,
    whose mean :func:`nan_if_empty` makes NaN."""
    if reduction == "batchmean" and batch > 0:
        return batch
    if reduction == "mean" and numel > 0:
        return numel
    return 1


def reduced_shape(reduction: str, batch: int) -> tuple[int, ...]:
    """The shape of a reduced loss: ``(B,)`` for "none", ``()`` otherwise."""
    return (batch,) if reduction == "none" else ()


def nan_if_empty(loss: torch.Tensor, reduction: str, batch: int, numel: int) -> torch.Tensor:
    """``loss`` filled with NaN, in place, when it is a mean over nothing (see the module
    docstring); ``loss`` unchanged otherwise."""
    if (reduction == "mean" and numel == 0) or (reduction == "batchmean" and batch == 0):
        return loss.fill_(math.nan)
    return loss


def constant_count(reduction: str, t: torch.Tensor) -> int:
    """How many times a per-element constant c enters each reduced value of a loss over ``t``
    ``(B, *shape)``: the reduced loss of c alone is c times this ("sum": B x D; "mean": 1;
    "batchmean" and each row of "none": D)."""
    if reduction == "sum":
        return t.numel()
    return 1 if reduction == "mean" else math.prod(t.shape[1:])
