"""Figures of a run: sample grids, reconstructions, loss curves (PNG files); the primitives
the experiments' figures (:mod:`fastvae.studies.experiments.figures`) are drawn with.

Image grids are laid out as ``torchvision.utils.make_grid`` lays them out (:func:`tile`, tested
against it); titles and curves go through matplotlib's Agg canvas directly (a ``Figure`` with
``FigureCanvasAgg``), so no pyplot state and no global backend switch in the caller's process.
Every title is fitted to the width it has (:func:`fit_title`): wrapped on spaces, and shrunk only
when a single word is wider than the figure.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Mapping, Sequence

import torch

DPI = 100
MIN_FONT_POINTS = 6.0


def preload() -> threading.Thread:
    """Import matplotlib's figure, Agg canvas and font manager in a background thread (about
    1 s of one-time work on a CPU, mostly Python), so that a run's figures at its end need
    not wait for it: the training runs in torch's kernels meanwhile. Returns the thread."""
    def load():
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
        import matplotlib.font_manager  # noqa: F401

    thread = threading.Thread(target=load, name="fastvae-figures-preload", daemon=True)
    thread.start()
    return thread


def figure(width: float, height: float):
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches at :data:`DPI`, on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def fit_title(fig, text: str, width_fraction: float = 1.0, size: str | float = "large"):
    """``text`` fitted to ``width_fraction`` of ``fig``'s width (minus a margin): returns
    ``(wrapped, points)``, the text with newlines between words where a line would be too wide,
    and the font size in points (``size`` unless one word alone is too wide, then smaller).
    Widths are measured with the figure's renderer, so the fit is exact for its font."""
    from matplotlib.font_manager import FontProperties

    renderer = fig.canvas.get_renderer()
    width_px = 0.94 * width_fraction * fig.get_figwidth() * fig.dpi
    points = FontProperties(size=size).get_size_in_points()

    def width(s: str, pts: float) -> float:
        prop = FontProperties(size=pts)
        return renderer.get_text_width_height_descent(s, prop, ismath=False)[0]

    widest_word = max(width(w, points) for w in text.split())
    if widest_word > width_px:
        points = max(MIN_FONT_POINTS, points * width_px / widest_word)
    lines: list[str] = []
    for word in text.split():
        if lines and width(f"{lines[-1]} {word}", points) <= width_px:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return "\n".join(lines), points


def save_figure(fig, path) -> Path:
    """``fig`` laid out tight and written to ``path`` (PNG); returns the path."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(str(path))
    return path


def tile(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """The images ``(N, C, H, W)`` as one ``(3, rows * (H + p) + p, cols * (W + p) + p)`` grid
    of ``nrow`` columns with ``padding`` p zero pixels between and around them, one channel
    repeated to three: the layout of ``torchvision.utils.make_grid`` (tested against it),
    without importing torchvision (2 s of a CPU run's start-up)."""
    n, c, h, w = images.shape
    if c == 1:
        images = images.expand(-1, 3, -1, -1)
    if n == 1:  # make_grid's one image: itself, unpadded
        return images[0]
    cols = min(nrow, n)
    rows = -(-n // cols)
    cells = images.new_zeros(rows * cols, images.shape[1], h + padding, w + padding)
    cells[:n, :, padding:, padding:] = images
    grid = cells.reshape(rows, cols, -1, h + padding, w + padding).permute(2, 0, 3, 1, 4)
    grid = grid.reshape(-1, rows * (h + padding), cols * (w + padding))
    return torch.nn.functional.pad(grid, (0, padding, 0, padding))


def save_grid(
    images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, title: str | None = None
) -> Path:
    """Save ``(N, C, H, W)`` images in data space (values clamped to [0, 1]) as a PNG grid of
    ``nrow`` columns (:func:`tile`). Without ``title``: the bare grid, one file pixel per image
    pixel. With it: the grid drawn under the title (wrapped to fit), at least 4 inches wide."""
    path = Path(path)
    grid = tile(images.detach().float().clamp(0, 1).cpu(), nrow=nrow)
    if title is None:
        from PIL import Image

        pixels = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
        Image.fromarray(pixels.numpy()).save(path)
        return path
    scale = max(1.0, 400 / grid.shape[2])
    width, height = grid.shape[2] * scale / DPI, grid.shape[1] * scale / DPI
    fig = figure(width + 0.2, height + 0.2)
    text, points = fit_title(fig, title, size="medium")
    fig.set_figheight(height + 0.35 + text.count("\n") * points / 72 * 1.3 + points / 72 * 1.3)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_title(text, fontsize=points)
    ax.axis("off")
    return save_figure(fig, path)


@torch.no_grad()
def save_samples(
    model, path: str | os.PathLike, n: int = 64, nrow: int = 8,
    generator: torch.Generator | None = None, decoder_sample: bool = False,
    title: str | None = None,
) -> Path:
    """``n`` samples of ``model`` (z ~ N(0, I), decoded to data space; with
    ``decoder_sample``, x ~ p(x | z)) as a grid of ``nrow`` columns (64 -> 8x8), under
    ``title`` if given (see :func:`save_grid`)."""
    images = model.sample(n, generator=generator, decoder_sample=decoder_sample)
    return save_grid(images, path, nrow=nrow, title=title)


def paired_rows(x: torch.Tensor, recon: torch.Tensor, nrow: int) -> torch.Tensor:
    """Originals above their reconstructions, aligned for a grid of ``nrow`` columns: ``x``
    and ``recon`` (both ``(N, C, H, W)``) each padded with blank (zero) images to a multiple of
    ``nrow``, then stacked, so image i and its reconstruction sit in the same column, the
    reconstruction ``ceil(N / nrow)`` rows lower, whatever N is."""
    if x.shape != recon.shape:
        raise ValueError(
            f"recon must have the shape of x {tuple(x.shape)}, got {tuple(recon.shape)}")
    pad = -x.shape[0] % nrow
    blank = x.new_zeros((pad, *x.shape[1:]))
    return torch.cat([x, blank, recon.to(x.dtype), blank])


@torch.no_grad()
def save_reconstructions(
    model, x: torch.Tensor, path: str | os.PathLike, nrow: int = 8, title: str | None = None
) -> Path:
    """Originals ``x`` in the top rows, their reconstructions (decoded posterior means) in the
    same positions of the bottom rows (:func:`paired_rows`: aligned for any number of images),
    under ``title`` if given."""
    recon = model.reconstruct(x).reshape(x.shape)
    return save_grid(paired_rows(x, recon, nrow), path, nrow=nrow, title=title)


LOSS_PANELS = (("loss", "negative ELBO (nats / image)"),
               ("kl", "KL(q(z|x) || p(z)) (nats / image)"))
RECON_PANEL = (("recon", "reconstruction -log p(x|z) (nats / image)"),)


def plot_loss_curves(
    metrics: Sequence[Mapping[str, float]], path: str | os.PathLike, title: str | None = None,
    panels: Sequence[tuple[str, str]] = LOSS_PANELS,
) -> Path:
    """One panel per ``(key, label)`` of ``panels``, over epochs, train and test; by default
    negative ELBO and KL, nats per image. ``metrics`` are rows with keys epoch and
    ``train_<key>``, ``test_<key>`` (the rows of metrics.csv)."""
    epochs = [int(r["epoch"]) for r in metrics]
    fig = figure(4.5 * len(panels), 3.6)
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
        text, points = fit_title(fig, title)
        fig.suptitle(text, fontsize=points)
    return save_figure(fig, path)


def save_run_figures(model, x_test: torch.Tensor, metrics: Sequence[Mapping[str, float]],
                     out: Path, label: str, seed: int) -> None:
    """A run's ``samples.png`` (64 samples, 8x8, z from a generator seeded with ``seed``),
    ``reconstructions.png`` (``x_test`` above its reconstructions) and ``loss_curve.png``
    (negative ELBO and KL per epoch; the reconstruction loss alone for a model without a
    posterior), titled with ``label`` and the last epoch."""
    model.eval()
    epoch = int(metrics[-1]["epoch"])
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    save_samples(model, out / "samples.png", n=64, nrow=8, generator=gen,
                 title=f"{label}, epoch {epoch}: 64 samples, z ~ N(0, I)")
    save_reconstructions(
        model, x_test, out / "reconstructions.png", nrow=8,
        title=f"{label}, epoch {epoch}: {x_test.shape[0]} test images (top) and their "
        "reconstructions (bottom)")
    panels = LOSS_PANELS if model.has_posterior else RECON_PANEL
    plot_loss_curves(metrics, out / "loss_curve.png", title=label, panels=panels)
