"""Figures of the experiments (PNG files): image panels, decoded latent grids, interpolations,
latent scatter plots, loss curves. Image grids are :func:`fastvae.train.figures.tile`
(``torchvision.utils.make_grid``'s layout); plots use matplotlib's Agg canvas (no pyplot
state)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from fastvae.train.figures import DPI, figure, fit_title, save_figure, tile


def image_panels(
    grids: Sequence[torch.Tensor], titles: Sequence[str], path, *, nrow: int = 8,
    suptitle: str | None = None,
) -> Path:
    """One panel per image set, side by side: ``grids[i]`` is ``(N, C, H, W)`` in [0, 1],
    drawn as a ``make_grid`` of ``nrow`` columns under ``titles[i]``, about one figure pixel
    per image pixel (at least 2.5 inches a panel)."""
    grids = [tile(g.detach().float().clamp(0, 1).cpu(), nrow=nrow) for g in grids]
    width = max(2.5, max(g.shape[2] for g in grids) / DPI * 1.1)
    height = max(2.5, max(g.shape[1] for g in grids) / DPI * 1.1)
    fig = figure(width * len(grids), height)
    # Titles wrapped to their panel's (and the suptitle to the figure's) width; the figure grows
    # by the height of the longest title and of the suptitle.
    fitted = [fit_title(fig, t, 0.9 / len(grids)) for t in titles]
    top = fit_title(fig, suptitle) if suptitle else None

    def lines_height(text_points) -> float:
        text, points = text_points
        return (text.count("\n") + 1) * points / 72 * 1.35

    extra = max(lines_height(f) for f in fitted) + (lines_height(top) if top else 0.0)
    fig.set_figheight(height + extra + 0.2)
    for i, (grid, (title, points)) in enumerate(zip(grids, fitted)):
        ax = fig.add_subplot(1, len(grids), i + 1)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=points)
        ax.axis("off")
    if top:
        fig.suptitle(top[0], fontsize=top[1])
    return save_figure(fig, path)


@torch.no_grad()
def decoded_latent_grid(model, n: int = 15, limit: float = 4.0) -> torch.Tensor:
    """Images decoded from an ``n x n`` grid of 2-D codes, z1 and z2 in linspace(-limit, limit):
    ``(n * n, C, H, W)``, row-major with z2 decreasing down the rows and z1 increasing to the
    right (the orientation of Kingma & Welling's Figure 4). Needs ``model.latent_dim == 2``."""
    if model.latent_dim != 2:
        raise ValueError(f"a decoded latent grid needs latent_dim 2, got {model.latent_dim}")
    p = next(model.parameters())
    axis = torch.linspace(-limit, limit, n, device=p.device, dtype=p.dtype)
    z2, z1 = torch.meshgrid(axis.flip(0), axis, indexing="ij")
    recon, _ = model.decode_params(torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1))
    return model.to_data_space(recon)


@torch.no_grad()
def interpolations(model, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Decoded points on the straight line between the posterior means of ``x_a[i]`` and
    ``x_b[i]``: ``(P * steps, C, H, W)``, one row of ``steps`` images per pair (t = 0 .. 1)."""
    mu_a, _ = model.encode(x_a)
    mu_b, _ = model.encode(x_b)
    t = torch.linspace(0, 1, steps, device=mu_a.device, dtype=mu_a.dtype).view(1, steps, 1)
    z = (1 - t) * mu_a.unsqueeze(1) + t * mu_b.unsqueeze(1)
    recon, _ = model.decode_params(z.reshape(-1, mu_a.shape[1]))
    return model.to_data_space(recon)


def pca_2d(points: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Project ``(N, L)`` points on their first two principal components (centered SVD).

    Returns ``(N, 2)`` coordinates and the fraction of the total variance each component
    explains. For L <= 2 the points come back unchanged (explained fractions [1.0] * L)."""
    if points.shape[1] <= 2:
        return points, [1.0] * points.shape[1]
    centered = points.double() - points.double().mean(0)
    _, s, vh = torch.linalg.svd(centered, full_matrices=False)
    var = s.square()
    return (centered @ vh[:2].T).to(points.dtype), (var[:2] / var.sum()).tolist()


def latent_scatter(
    points: torch.Tensor, labels: torch.Tensor, names: Sequence[str], path, *,
    title: str, axis_labels: tuple[str, str] = ("z1", "z2"),
) -> Path:
    """Scatter of ``(N, 2)`` points coloured by integer label (legend with ``names``)."""
    from matplotlib import colormaps

    fig = figure(6.4, 5.6)
    ax = fig.add_subplot(1, 1, 1)
    cmap = colormaps["tab10"]
    pts, lab = points.detach().cpu().float(), labels.cpu()
    for c in lab.unique().tolist():
        sel = lab == c
        ax.scatter(pts[sel, 0], pts[sel, 1], s=4, alpha=0.6, color=cmap(c % 10), label=names[c])
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    text, points = fit_title(fig, title, 0.8)  # the axes, not the y label, is under the title
    ax.set_title(text, fontsize=points)
    ax.legend(markerscale=4, fontsize=8, loc="best", ncol=2)
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path)


def loss_curves(metrics: Sequence[Mapping[str, float]], path, *, title: str | None = None) -> Path:
    """Three panels over epochs, train and test: negative ELBO, its reconstruction part and its
    KL part (nats per image), from metrics.csv rows."""
    from fastvae.train.figures import plot_loss_curves

    panels = (("loss", "negative ELBO (nats / image)"),
              ("recon", "reconstruction -log p(x|z) (nats / image)"),
              ("kl", "KL(q(z|x) || p(z)) (nats / image)"))
    return plot_loss_curves(metrics, path, title=title, panels=panels)


def run_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path, *,
               title: str | None = None) -> Path:
    """Two panels over epochs, negative ELBO and KL (nats per image), one colour per run of
    ``histories`` (name -> metrics.csv rows): train solid, test (validation) dashed."""
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    fig = figure(10, 4.2)
    cmap = colormaps["tab10"]
    for i, (key, label) in enumerate((("loss", "negative ELBO (nats / image)"),
                                      ("kl", "KL(q(z|x) || p(z)) (nats / image)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for c, (name, rows) in enumerate(histories.items()):
            epochs = [int(r["epoch"]) for r in rows]
            ax.plot(epochs, [r[f"train_{key}"] for r in rows], "o-", color=cmap(c),
                    markersize=3, label=f"{name} train")
            ax.plot(epochs, [r[f"test_{key}"] for r in rows], "s--", color=cmap(c),
                    markersize=3, label=f"{name} val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    if title:
        text, points = fit_title(fig, title)
        fig.suptitle(text, fontsize=points)
    return save_figure(fig, path)
