"""Figures of a run: sample grids, reconstructions, loss curves (PNG files).

Image grids go through ``torchvision.utils.save_image``; curves through matplotlib's Agg
canvas directly (a ``Figure`` with ``FigureCanvasAgg``), so no pyplot state and no global
backend switch in the caller's process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> Path:
    """Save ``(N, C, H, W)`` images in data space (values clamped to [0, 1]) as a PNG grid."""
    from torchvision.utils import save_image

    path = Path(path)
    save_image(images.detach().float().clamp(0, 1).cpu(), str(path), nrow=nrow, padding=2)
    return path


@torch.no_grad()
def save_samples(
    model, path: str | os.PathLike, n: int = 64, nrow: int = 8,
    generator: torch.Generator | None = None, decoder_sample: bool = False,
) -> Path:
    """``n`` samples of ``model`` (z ~ N(0, I), decoded to data space; with
    ``decoder_sample``, x ~ p(x | z)) as a grid of ``nrow`` columns (64 -> 8x8)."""
    images = model.sample(n, generator=generator, decoder_sample=decoder_sample)
    return save_grid(images, path, nrow=nrow)


@torch.no_grad()
def save_reconstructions(model, x: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> Path:
    """Originals ``x`` in the top rows, their reconstructions (decoded posterior means) in the
    same positions of the bottom rows. Use a multiple of ``nrow`` images (e.g. 32 -> 4 + 4 rows)."""
    recon = model.reconstruct(x).reshape(x.shape)
    return save_grid(torch.cat([x, recon.to(x.dtype)]), path, nrow=nrow)


LOSS_PANELS = (("loss", "negative ELBO (nats / image)"), ("kl", "KL(q(z|x) || p(z)) (nats / image)"))


def plot_loss_curves(
    metrics: Sequence[Mapping[str, float]], path: str | os.PathLike, title: str | None = None,
    panels: Sequence[tuple[str, str]] = LOSS_PANELS,
) -> Path:
    """One panel per ``(key, label)`` of ``panels``, over epochs, train and test; by default
    negative ELBO and KL, nats per image. ``metrics`` are rows with keys epoch and
    ``train_<key>``, ``test_<key>`` (the rows of metrics.csv)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [int(r["epoch"]) for r in metrics]
    fig = Figure(figsize=(4.5 * len(panels), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for split, style in (("train", "o-"), ("test", "s--")):
            values = [float(r[f"{split}_{key}"]) for r in metrics]
            ax.plot(epochs, values, style, label=split, markersize=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
        if 0 < len(epochs) <= 12:
            ax.set_xticks(epochs)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(str(path))
    return path
