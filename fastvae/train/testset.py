"""The test negative ELBO of a model, the number every epoch of a training ends with."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, *, beta: float = 1.0, seed: int = 0
             ) -> dict[str, float]:
    """Single-sample test objective over all of ``batches`` (``(x, y)`` pairs on the model's
    device), in nats per image.

    The posterior sample's noise comes from a generator seeded with ``seed`` afresh on every
    call, so the estimate is reproducible and comparable across epochs. Returns
    ``{"loss", "recon", "kl"}`` with loss = recon + beta * kl (the negative ELBO for beta = 1).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    n = 0
    for x, _ in batches:
        out = model.loss(x, beta=beta, reduction="sum", generator=gen)
        totals += torch.stack([out.recon, out.kl]).to(torch.float64)
        n += x.shape[0]
    model.train(was_training)
    recon, kl = (totals / n).tolist()
    return {"loss": recon + beta * kl, "recon": recon, "kl": kl}
