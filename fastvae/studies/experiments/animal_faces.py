"""Animal Faces per class (``fastvae experiment animal-faces``): per-class runs:
one model on the cats only, one on the wild animals only, one on all three classes.

Each run is a ``fastvae train`` run (run folders ``cat``, ``wild`` and ``all``) on AFHQ (its
``val`` split is the test set) at ``--image-size`` pixels, RGB or ``--grayscale``. Figures:
train and validation negative ELBO and KL per epoch for every run (``curves.png``), the
first validation images above their reconstructions (``reconstructions.png``) and samples
z ~ N(0, I) (``samples.png``), one panel per run; report.md with the table of final losses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from fastvae.studies.experiments import figures
from fastvae.studies.experiments.common import Options, Report, first_test_images, train_or_load

# (run name, classes kept; None: all)
RUNS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("cat", ("cat",)), ("wild", ("wild",)), ("all", None),
)
N_RECON, N_SAMPLES = 8, 16


def animal_faces(
    options: Options, model: str = "conv", latent_dim: int = 64,
    likelihood: str = "bernoulli", batch_size: int = 64,
    runs: Sequence[tuple[str, tuple[str, ...] | None]] = RUNS,
) -> Path:
    """Train one model per entry of ``runs`` on Animal Faces (``options.data`` holds the data
    fields: ``data_dir``, ``image_size``, ``grayscale``); write the three figures and
    report.md. Returns the report's path."""
    Path(options.out).mkdir(parents=True, exist_ok=True)
    data = {"dataset": "animal-faces", **options.data}
    options = Options(**{**vars(options), "data": data})
    histories, recons, samples, rows = {}, [], [], []
    for name, classes in runs:
        cfg = options.train_config(name, classes=classes, model=model, latent_dim=latent_dim,
                                   likelihood=likelihood, batch_size=batch_size)
        vae, cfg, metrics = train_or_load(cfg, overwrite=options.overwrite)
        device = next(vae.parameters()).device
        x, _, _ = first_test_images(cfg, N_RECON, device)
        recons.append((x, vae.reconstruct(x).reshape(x.shape).to(x.dtype)))
        gen = torch.Generator(device).manual_seed(options.seed)
        samples.append(vae.sample(N_SAMPLES, generator=gen))
        histories[name] = metrics
        last = metrics[-1]
        rows.append((name, ", ".join(classes or ("cat", "dog", "wild")),
                     last["test_loss"], last["test_recon"], last["test_kl"]))
    epochs = int(metrics[-1]["epoch"])
    shape = tuple(vae.input_shape)
    out = Path(options.out)
    colour = "grayscale" if shape[0] == 1 else "RGB"
    fig_curves = figures.run_curves(
        histories, out / "curves.png",
        title=f"{type(vae).__name__}, {colour} {shape[1]} px: train (solid) and val (dashed)")
    n = min(x.shape[0] for x, _ in recons)  # val images in every run (aligned columns)
    fig_recon = figures.image_panels(
        [torch.cat([x[:n], r[:n]]) for x, r in recons],
        [f"{name}: val / reconstruction" for name, _ in runs],
        out / "reconstructions.png", nrow=n)
    fig_samples = figures.image_panels(
        samples, [f"{name}: z ~ N(0, I)" for name, _ in runs], out / "samples.png", nrow=4)
    report = Report(
        f"Animal Faces per class ({colour}, {shape[1]} px)", options,
        f"{type(vae).__name__} ({model}), latent size {latent_dim}, {likelihood} decoder, batch "
        f"{batch_size}, {epochs} epochs per run, one run per class set (run folders next to "
        f"this report). The test set is AFHQ's val split of the same classes. Losses in nats "
        f"per image ({shape[0]} x {shape[1]} x {shape[2]} values), last epoch of each run's "
        f"metrics.csv.")
    report.figure(fig_curves, "negative ELBO and KL per epoch, train and validation, per run")
    report.figure(fig_recon, f"the first {n} validation images of each run's classes "
                             f"(top) and their reconstructions (bottom)")
    report.figure(fig_samples, f"{N_SAMPLES} samples z ~ N(0, I) per run")
    report.table(("run", "classes", "val NELBO", "val recon", "val KL"), rows)
    return report.write()
