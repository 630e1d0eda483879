"""The two sweeps of the classic VAE papers, on MNIST with the canonical MLP VAE.

- :func:`latent_sweep`: latent sizes 2, 10, 25, 50 at beta 1 (Kingma & Welling 2014, Figure 5:
  samples for several latent sizes); random-sample grids side by side, a table of test losses.
- :func:`beta_sweep`: KL weights beta 1, 5, 10, 40 at latent size 2 (Higgins et al. 2017); the
  decoded 2-D latent grid over linspace(-4, 4) for each beta, a table of test losses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from fastvae.studies.experiments import figures
from fastvae.studies.experiments.common import Options, Report, loss_row, train_or_load

LATENT_DIMS = (2, 10, 25, 50)
BETAS = (1.0, 5.0, 10.0, 40.0)
N_SAMPLES = 64


def _sweep(options: Options, values, run_name, fields, images):
    """Train one model per value (run folder ``run_name(v)``, TrainConfig ``fields(v)``);
    return each model's ``images(model)``, the table rows (value, test NELBO, recon, KL) and the
    epochs trained."""
    grids, rows = [], []
    for v in values:
        model, _, metrics = train_or_load(options.train_config(run_name(v), **fields(v)),
                                          overwrite=options.overwrite)
        grids.append(images(model))
        rows.append((f"{v:g}", *loss_row(metrics)))
    return grids, rows, int(metrics[-1]["epoch"])


def latent_sweep(options: Options, latent_dims: Sequence[int] = LATENT_DIMS) -> Path:
    """Train one model per latent size (beta 1); write ``samples.png`` (64 samples of each,
    side by side, same z seed per model) and report.md with the test losses. Returns the
    report's path."""

    def samples(model):
        device = next(model.parameters()).device
        return model.sample(N_SAMPLES, generator=torch.Generator(device).manual_seed(options.seed))

    grids, rows, epochs = _sweep(
        options, latent_dims, lambda d: f"latent-{d}", lambda d: {"latent_dim": d}, samples
    )
    fig = figures.image_panels(
        grids, [f"latent size {d}" for d in latent_dims], Path(options.out) / "samples.png",
        suptitle=f"MLP VAE 784-400-L, beta 1, {epochs} epochs: samples z ~ N(0, I)",
    )
    report = Report("Latent-size sweep (MNIST, beta = 1)", options,
                    f"MLP VAE 784-400-L (Bernoulli decoder, continuous MNIST), {epochs} epochs "
                    f"each, Adam 1e-3, batch 128. Test losses in nats per image (single-sample "
                    f"estimate; one run folder per latent size next to this report).")
    report.figure(fig, "64 random samples per latent size")
    report.table(("latent size", "test NELBO", "test recon", "test KL"), rows)
    return report.write()


def beta_sweep(options: Options, betas: Sequence[float] = BETAS, latent_dim: int = 2) -> Path:
    """Train one model per KL weight at latent size 2; write ``latent_grids.png`` (each model's
    decoder over a 15 x 15 grid of z in linspace(-4, 4)^2) and report.md with the test losses
    (negative ELBO at beta 1, so the rows are comparable)."""
    grids, rows, epochs = _sweep(
        options, betas, lambda b: f"beta-{b:g}",
        lambda b: {"beta": float(b), "latent_dim": latent_dim},
        lambda model: figures.decoded_latent_grid(model, n=15, limit=4.0),
    )
    fig = figures.image_panels(
        grids, [f"beta = {b:g}" for b in betas], Path(options.out) / "latent_grids.png",
        nrow=15, suptitle=f"MLP VAE, latent size {latent_dim}, {epochs} epochs: decoder over "
        f"z in [-4, 4]^2",
    )
    report = Report(f"KL-weight (beta) sweep (MNIST, latent size {latent_dim})", options,
                    f"MLP VAE 784-400-{latent_dim}, objective recon + beta * KL, {epochs} epochs "
                    f"each. The grids decode z1 (left to right) and z2 (bottom to top) over "
                    f"linspace(-4, 4, 15). Test NELBO is recon + KL (beta 1) for every row.")
    report.figure(fig, "decoded 2-D latent grid per beta")
    report.table(("beta", "test NELBO", "test recon", "test KL"), rows)
    return report.write()
