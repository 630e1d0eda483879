"""Experiments on one trained model (MNIST, the canonical MLP VAE unless ``run`` names a run
folder of ``fastvae train``): reconstructions, interpolations, the latent scatter, loss curves.
Without ``run`` each trains its model into ``<out>/run``."""

from __future__ import annotations

from pathlib import Path

import torch

from fastvae.studies.experiments import figures
from fastvae.studies.experiments.common import (
    Options,
    Report,
    first_test_images,
    loss_row,
    train_or_load,
)
from fastvae.train.figures import paired_rows

LOSS_HEADER = ("test NELBO", "test recon", "test KL")


def _model(options: Options, run: str | None, latent_dim: int):
    model, cfg, metrics = train_or_load(options.train_config("run", latent_dim=latent_dim), run,
                                        overwrite=options.overwrite)
    Path(options.out).mkdir(parents=True, exist_ok=True)  # once the model (and data) are there
    device = next(model.parameters()).device
    label = (f"{type(model).__name__}, latent {cfg.latent_dim}, beta {cfg.beta:g}, "
             f"{int(metrics[-1]['epoch'])} epochs")
    return model, cfg, metrics, device, label


def reconstructions(
    options: Options, run: str | None = None, latent_dim: int = 20, n: int = 32,
) -> Path:
    """``reconstructions.png``: ``n`` test images (top half) above their reconstructions (the
    decoded posterior means, bottom half), 8 per row, each in its original's column
    (:func:`fastvae.train.figures.paired_rows`); report.md with the test losses."""
    model, cfg, metrics, device, label = _model(options, run, latent_dim)
    x, _, _ = first_test_images(cfg, n, device)
    recon = model.reconstruct(x).reshape(x.shape)
    fig = figures.image_panels([paired_rows(x, recon, 8)], [label],
                               Path(options.out) / "reconstructions.png")
    report = Report("Reconstructions", options, f"Model: {label}.")
    report.figure(fig, f"{x.shape[0]} test images (top half) and their reconstructions from "
                       f"the posterior means (bottom half)")
    report.table(LOSS_HEADER, [loss_row(metrics)])
    return report.write()


def interpolation(
    options: Options, run: str | None = None, latent_dim: int = 20, pairs: int = 8,
    steps: int = 10,
) -> Path:
    """``interpolation.png``: for ``pairs`` pairs of test images (image 2i to image 2i + 1),
    ``steps`` decoded points on the line between their posterior means, one row per pair.
    A test split of fewer than ``2 * pairs`` images (the 13-image AFHQ sample's val split)
    gives as many whole pairs as it holds.

    Raises:
        ValueError: the test split holds fewer than 2 images.
    """
    model, cfg, metrics, device, label = _model(options, run, latent_dim)
    x, _, _ = first_test_images(cfg, 2 * pairs, device)
    pairs = x.shape[0] // 2
    if pairs < 1:
        raise ValueError(f"interpolation needs 2 test images; the run's test split holds "
                         f"{x.shape[0]}")
    x = x[:2 * pairs]
    images = figures.interpolations(model, x[0::2], x[1::2], steps)
    fig = figures.image_panels([images], [label], Path(options.out) / "interpolation.png",
                               nrow=steps)
    report = Report("Interpolation through the posterior means", options,
                    f"Model: {label}. Row i decodes (1 - t) mu(x_a) + t mu(x_b) for t in "
                    f"linspace(0, 1, {steps}), x_a and x_b the test images 0 and 1, 2 and "
                    f"3, ... (the first and last columns are the two reconstructions).")
    report.figure(fig, f"{pairs} interpolations, {steps} steps each")
    report.table(LOSS_HEADER, [loss_row(metrics)])
    return report.write()


def latent_scatter(
    options: Options, run: str | None = None, latent_dim: int = 2, n: int = 5000,
) -> Path:
    """``latent_scatter.png``: the posterior means of ``n`` test images coloured by label; the
    first two principal components when the latent size is above 2."""
    model, cfg, metrics, device, label = _model(options, run, latent_dim)
    x, y, names = first_test_images(cfg, n, device)
    with torch.no_grad():
        mu = torch.cat([model.encode(x[i:i + 1000])[0] for i in range(0, x.shape[0], 1000)])
    points, explained = figures.pca_2d(mu)
    if mu.shape[1] > 2:
        axes = tuple(f"PC{i + 1} ({100 * e:.0f}% of the variance)" for i, e in enumerate(explained))
        how = f"first two principal components of the {mu.shape[1]}-D posterior means"
    else:
        axes, how = ("z1", "z2"), "posterior means"
    fig = figures.latent_scatter(points, y, names, Path(options.out) / "latent_scatter.png",
                                 title=f"{label}: {how}", axis_labels=axes)
    report = Report("Latent space coloured by label", options,
                    f"Model: {label}. {x.shape[0]} test images, {how}.")
    report.figure(fig, "test-set posterior means, coloured by label")
    report.table(LOSS_HEADER, [loss_row(metrics)])
    return report.write()


def loss_curves(options: Options, run: str | None = None, latent_dim: int = 20) -> Path:
    """``loss_curves.png``: train and test negative ELBO, reconstruction and KL per epoch, and
    report.md with the per-epoch table."""
    _, _, metrics, _, label = _model(options, run, latent_dim)
    fig = figures.loss_curves(metrics, Path(options.out) / "loss_curves.png", title=label)
    report = Report("Loss curves", options,
                    f"Model: {label}. Train values are averages over each epoch's batches; "
                    f"test values are single-sample estimates at the end of the epoch; nats "
                    f"per image.")
    report.figure(fig, "negative ELBO and its reconstruction and KL parts, per epoch")
    report.table(
        ("epoch", "train NELBO", "train KL", "test NELBO", "test recon", "test KL"),
        [(int(r["epoch"]), r["train_loss"], r["train_kl"], r["test_loss"], r["test_recon"],
          r["test_kl"]) for r in metrics],
    )
    return report.write()
