"""Regularized MLP with a Gaussian decoder, and generation with and without sampling from the
decoder (``fastvae experiment decoder-sampling``).

A regularized setting on MNIST: an MLP VAE with 3 hidden layers of 200,
latent size 4, batch 100, dropout 0.3 after every hidden layer, weight decay 1e-5 (Adam's L2
term), and a Gaussian decoder with a learned per-pixel log-variance, floored at
:data:`fastvae.train.GAUSSIAN_LOGVAR_FLOOR` (a standard deviation of at least 0.05) so that the
negative ELBO is bounded below and the training is well posed; the same setting with the
convolutional model (:class:`fastvae.ConvVAE`, its conv encoder and decoder) beside it.

Figure: for each model, 64 codes z ~ N(0, I) decoded to the decoder's mean (what ``fastvae
sample`` shows by default) beside one draw x ~ p(x | z) from the same z (``fastvae sample
--decoder-sample``). Table: the test losses of both models, the loss's lower bound that the
floor sets, the decoder's average standard deviation and the share of pixels at the floor;
and, for contrast, the MLP trained without the floor.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from fastvae.studies.experiments import figures
from fastvae.studies.experiments.common import Options, Report, first_test_images, train_or_load

SETTING = {
    "hidden_dims": (200, 200, 200), "latent_dim": 4, "batch_size": 100, "dropout": 0.3,
    "weight_decay": 1e-5, "optimizer": "adam", "likelihood": "gaussian",
}
ARCHS = (("mlp", "MLP 784-200-200-200-4"), ("conv", "conv"))
N_SAMPLES = 64
AT_FLOOR = 0.1  # a pixel counts as "at the floor" when its log-variance is within this of it


@torch.no_grad()
def _decoder_spread(model, x: torch.Tensor) -> tuple[float, float]:
    """Average decoder standard deviation over the pixels of the reconstructions of ``x`` (the
    decoded posterior means), and the share of those pixels whose log-variance is within
    ``AT_FLOOR`` of the floor (0 without a floor)."""
    mu, _ = model.encode(x)
    _, logvar = model.decode_params(mu)
    floor = -math.inf if model.logvar_floor is None else model.logvar_floor
    at_floor = float((logvar < floor + AT_FLOOR).double().mean())
    return float(torch.exp(0.5 * logvar).double().mean()), at_floor


@torch.no_grad()
def _mean_and_draw(model, seed: int) -> list[torch.Tensor]:
    """``N_SAMPLES`` codes z ~ N(0, I) decoded to the decoder's mean, and one draw
    x ~ p(x | z) from the same codes."""
    device = next(model.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    z = torch.randn(N_SAMPLES, model.latent_dim, generator=gen, device=device)
    recon, logvar = model.decode_params(z)
    return [model.to_data_space(recon), model.draw_data(recon, logvar, generator=gen)]


def _trend(metrics, split: str) -> str:
    """The ``split`` ("train" or "test") negative ELBO of every epoch, comma-separated."""
    return ", ".join(f"{r[f'{split}_loss']:.1f}" for r in metrics)


def decoder_sampling(options: Options) -> Path:
    """Train the MLP and the conv model of :data:`SETTING` (run folders ``mlp`` and ``conv``),
    and the MLP without the log-variance floor for contrast (``mlp-no-floor``); write
    ``samples.png`` (decoder means and decoder draws from the same z, per floored model) and
    report.md with the table. Returns the report's path."""
    Path(options.out).mkdir(parents=True, exist_ok=True)
    grids, titles, rows = [], [], []
    x = None
    for arch, name in ARCHS:
        fields = {k: v for k, v in SETTING.items() if arch == "mlp" or k != "hidden_dims"}
        model, cfg, metrics = train_or_load(options.train_config(arch, model=arch, **fields),
                                            overwrite=options.overwrite)
        device = next(model.parameters()).device
        grids += _mean_and_draw(model, options.seed)
        titles += [f"{arch}: decoder mean", f"{arch}: x ~ p(x|z)"]
        if x is None:  # the same test images for every model
            x, _, _ = first_test_images(cfg, 1000, device)
        std, at_floor = _decoder_spread(model, x)
        last = metrics[-1]
        if arch == "mlp":
            mlp_metrics = metrics
        rows.append((name, last["test_loss"], last["test_recon"], last["test_kl"],
                     model.recon_lower_bound(), std, f"{100 * at_floor:.1f}%"))
    epochs, floor = int(metrics[-1]["epoch"]), model.logvar_floor
    # The contrast: the MLP without the floor (the ill-posed model).
    free, _, free_metrics = train_or_load(options.train_config(
        "mlp-no-floor", model="mlp", **SETTING, logvar_floor=None), overwrite=options.overwrite)
    last = free_metrics[-1]
    rows.append((f"{ARCHS[0][1]}, no floor", last["test_loss"], last["test_recon"],
                 last["test_kl"], "-inf", _decoder_spread(free, x)[0], "n/a"))
    fig = figures.image_panels(
        grids, titles, Path(options.out) / "samples.png",
        suptitle=f"Gaussian decoder, latent size 4, {epochs} epochs: mean vs sample, same z")
    return _report(options, fig, rows, floor, epochs, model.input_dim, x.shape[0],
                   (_trend(free_metrics, "train"), _trend(free_metrics, "test"),
                    _trend(mlp_metrics, "train"), _trend(mlp_metrics, "test")))


def _report(options, fig, rows, floor, epochs, pixels, n_test, trends) -> Path:
    """report.md of the study: the setting, the figure, why the floor, the table."""
    report = Report(
        "Gaussian decoder: generation with and without sampling from the decoder", options,
        f"MNIST (continuous), {epochs} epochs per model, batch 100, Adam 1e-3 with weight decay "
        f"1e-5 (an L2 term added to the gradient, `--optimizer adam`), dropout 0.3 after every "
        f"hidden layer, latent size 4, a Gaussian decoder with a learned per-pixel log-variance "
        f"floored at f = 2 log 0.05 = {floor:.4f} (`f + softplus(raw - f)`: standard deviation "
        f">= 0.05). One run folder per model next to this report.")
    report.figure(fig, f"{N_SAMPLES} codes z ~ N(0, I) per floored model: the decoder mean, and "
                       f"one draw x ~ p(x|z) = N(mean, exp(logvar)) from the same codes (clamped "
                       f"to [0, 1] for display)")
    report.text(
        "Without the floor the problem is ill-posed on MNIST: its background pixels are exactly "
        "0, so -log p(x|z) is unbounded below as their variances shrink, and nothing in the "
        "objective stops them from shrinking; a test pixel that then deviates even slightly "
        "from the mean costs a large (x - mean)^2 / variance. The last row is the same MLP "
        "trained without the floor. Train / test NELBO per epoch without the floor: "
        f"{trends[0]} / {trends[1]}; with it: {trends[2]} / {trends[3]}. "
        f"With the floor each pixel's -log p(x|z) is at "
        f"least 0.5 (log 2 pi + f) = {0.5 * (math.log(2 * math.pi) + floor):.4f} nats, so the "
        f"reconstruction term is bounded below by the 'recon bound' column ({pixels} "
        f"pixels); the measured test values are "
        f"{'finite' if all(math.isfinite(r[2]) for r in rows[:2]) else 'NOT all finite'} and "
        f"{'above' if all(r[2] > r[4] for r in rows[:2]) else 'NOT all above'} it. Negative values "
        f"are legitimate for a density on continuous pixels. Test losses in nats per image "
        f"(last epoch of each run's metrics.csv); decoder std and the share of pixels within "
        f"{AT_FLOOR} of the floor are over the reconstructions (decoded posterior means) of the "
        f"first {n_test} test images.")
    report.table(("model", "test NELBO", "test recon", "test KL", "recon bound",
                  "mean decoder std", "pixels at floor"), rows)
    mlp, conv = rows[0][1], rows[1][1]
    report.text(f"The conv model's test NELBO is {conv:.2f} nats against the MLP's {mlp:.2f} "
                f"({'lower' if conv < mlp else 'higher'} by {abs(mlp - conv):.2f}).")
    return report.write()
