"""Autoencoder against VAE (``fastvae experiment ae-vs-vae``): the same networks trained as a
plain deterministic autoencoder (:mod:`fastvae.models.autoencoder`: no sampling, no KL) and as
a VAE, MLP and convolutional, on MNIST (or Animal Faces with ``--dataset animal-faces``).

What it shows: the autoencoder reconstructs better (nothing pulls its codes together and no
noise is added to them), but its codes are not distributed like N(0, I), so decoding
z ~ N(0, I) gives images unlike the data, while the VAE, trained to decode codes near N(0, I),
generates from the prior. The numbers (report.md):

- test reconstruction: ``-log p(x | z)`` from each run's metrics.csv (the VAE's for one
  z ~ q(z | x), the autoencoder's for its code) and the squared error of the decoded mean
  (the VAE decoding its posterior mean), summed over pixels, averaged over test images;
- how far the codes the decoder was trained on are from the prior the generator samples:
  KL(N(m, diag(s^2)) || N(0, I)) of a diagonal Gaussian fitted to the codes of the training
  images (the autoencoder's codes; for the VAE one z ~ q(z | x) per image, its aggregate
  posterior), m and s^2 their mean and variance per dimension, in nats. Near 0 means
  z ~ N(0, I) lands where the decoder was trained;
- with ``fid``: the FID of prior samples against as many test images
  (:mod:`fastvae.studies.fid`; "mnist-classifier" features on MNIST), lower is better.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from fastvae.data import ImageBatches
from fastvae.functional import reparameterize
from fastvae.studies.experiments import figures
from fastvae.studies.experiments.common import Options, Report, first_test_images, train_or_load
from fastvae.train import build

ARCHS = ("mlp", "conv")
KINDS = (("vae", "VAE"), ("ae", "AE"))
N_IMAGES = 16  # test images reconstructed and prior samples drawn per model
CHUNK = 1000


@torch.no_grad()
def _codes(model, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(means, draws)``, each ``(N, L)``: the posterior means and one z ~ q(z | x) per image
    for a VAE; the codes twice for an autoencoder."""
    gen = torch.Generator(x.device).manual_seed(seed)
    means, draws = [], []
    for xb in x.split(CHUNK):
        mu, logvar = model.encode(xb)
        means.append(mu)
        draws.append(mu if logvar is None else reparameterize(mu, logvar, generator=gen))
    return torch.cat(means), torch.cat(draws)


@torch.no_grad()
def _fid(model, x_test: torch.Tensor, n: int, metric, seed: int) -> float:
    """FID of ``n`` prior samples against the first ``n`` test images."""
    from fastvae.studies.fid import frechet_distance

    gen = torch.Generator(x_test.device).manual_seed(seed)
    fakes = (model.sample(min(CHUNK, n - i), generator=gen).clamp(0, 1)
             for i in range(0, n, CHUNK))
    return frechet_distance(x_test[:n].split(CHUNK), fakes, metric)


@torch.no_grad()
def _squared_error(model, x: torch.Tensor) -> float:
    """Mean over images of sum over pixels of (reconstruct(x) - x)^2."""
    total = sum(
        float((model.reconstruct(xb).reshape(xb.shape) - xb).square().sum())
        for xb in x.split(CHUNK)
    )
    return total / x.shape[0]


def prior_mismatch(codes: torch.Tensor) -> float:
    """KL(N(m, diag(s^2)) || N(0, I)) in nats for ``codes`` ``(N, L)``: m and s^2 their mean
    and (biased) variance per dimension; 0.5 * sum_j (s_j^2 + m_j^2 - 1 - log s_j^2)."""
    c = codes.double()
    m, v = c.mean(0), c.var(0, unbiased=False)
    return float(0.5 * (v + m.square() - 1 - v.log()).sum())


def _train_images(cfg, device) -> torch.Tensor:
    """All training images of ``cfg`` (its limit applied) as the model saw them."""
    split, _, _ = build.load_split(cfg, True, device)
    batches = ImageBatches(*split, split.images.shape[0], shuffle=False,
                           binarize=cfg.binarize, seed=cfg.seed)
    return next(iter(batches))[0]


class _Results:
    """What the study collects per model: reconstructions, prior samples, decoded mean code,
    the table row and the numbers the trade-off sentences quote."""

    def __init__(self):
        self.names, self.recons, self.samples, self.means, self.rows = [], [], [], [], []
        self.stats, self.metric = {}, None
        self.x_test = self.x_show = self.x_train = None

    def add(self, model, cfg, metrics, name, key, seed, *, fid, fid_samples, inception_weights):
        device = next(model.parameters()).device
        if self.x_test is None:  # the same data for every model: loaded once
            self.x_test, _, _ = first_test_images(cfg, 10_000, device)
            self.x_show = self.x_test[:N_IMAGES]
            self.x_train = _train_images(cfg, device)
        x_show = self.x_show
        self.names.append(name)
        self.recons.append(model.reconstruct(x_show).reshape(x_show.shape))
        self.samples.append(model.sample(N_IMAGES, generator=torch.Generator(device)
                                         .manual_seed(seed)))
        code_means, code_draws = _codes(model, self.x_train, seed)
        recon, _ = model.decode_params(code_means.mean(0, keepdim=True))
        self.means.append(model.to_data_space(recon).reshape(1, *x_show.shape[1:]))
        last = metrics[-1]
        st = {"recon": last["test_recon"], "sq": _squared_error(model, self.x_test),
              "mismatch": prior_mismatch(code_draws)}
        if fid is not None:
            if self.metric is None:
                from fastvae.studies.fid import fid_metric

                self.metric = fid_metric(fid, inception_weights=inception_weights,
                                         device=device)
            st["fid"] = _fid(model, self.x_test, min(fid_samples, self.x_test.shape[0]),
                             self.metric, seed)
        self.stats[key] = st
        vae = key[1] == "vae"
        self.rows.append((name, last["test_recon"], last["test_kl"] if vae else "0 (none)",
                          last["test_loss"] if vae else "n/a", st["sq"], st["mismatch"],
                          *([st["fid"]] if fid is not None else [])))


def _tradeoff(arch: str, ae: dict, vae: dict, fid: str | None) -> str:
    """The trade-off of one architecture in a sentence, from the two models' numbers."""
    text = (f"**{arch}:** the AE reconstructs {'better' if ae['sq'] < vae['sq'] else 'worse'} "
            f"than the VAE (squared error {ae['sq']:.2f} vs {vae['sq']:.2f}; test recon "
            f"{ae['recon']:.2f} vs {vae['recon']:.2f} nats). Its codes lie "
            f"{'further from' if ae['mismatch'] > vae['mismatch'] else 'closer to'} N(0, I) "
            f"(code KL {ae['mismatch']:.2f} vs {vae['mismatch']:.2f} nats)")
    if fid is not None:
        text += (f", and its samples from N(0, I) are "
                 f"{'worse' if ae['fid'] > vae['fid'] else 'better'} (FID {ae['fid']:.1f} "
                 f"vs {vae['fid']:.1f})")
    return text + "."


def ae_vs_vae(
    options: Options, latent_dim: int = 20, archs: Sequence[str] = ARCHS,
    fid: str | None = None, fid_samples: int = 2000, inception_weights: str | None = None,
    likelihood: str = "bernoulli",
) -> Path:
    """Train a VAE and an autoencoder per architecture with the ``likelihood`` decoder ("mse":
    the squared error) (run folders ``vae-mlp``, ``ae-mlp``, ``vae-conv``, ``ae-conv``);
    write ``reconstructions.png``, ``generation.png``,
    ``mean_codes.png`` and report.md with the table of test reconstruction error, the codes'
    distance to N(0, I), with ``fid`` the FID of ``fid_samples`` prior samples against as many
    test images, and the trade-off in numbers. Returns the report's path."""
    Path(options.out).mkdir(parents=True, exist_ok=True)
    r = _Results()
    for arch in archs:
        for kind, title in KINDS:
            cfg = options.train_config(f"{kind}-{arch}", model=arch, latent_dim=latent_dim,
                                       autoencoder=kind == "ae", likelihood=likelihood)
            model, cfg, metrics = train_or_load(cfg, overwrite=options.overwrite)
            r.add(model, cfg, metrics, f"{title} ({arch})", (arch, kind), options.seed,
                  fid=fid, fid_samples=fid_samples, inception_weights=inception_weights)
    x_test, x_show, x_train = r.x_test, r.x_show, r.x_train
    names, recons, samples, means, rows, stats = r.names, r.recons, r.samples, r.means, \
        r.rows, r.stats
    epochs, dataset = int(metrics[-1]["epoch"]), cfg.dataset
    nrow = 4
    out = Path(options.out)
    fig_recon = figures.image_panels(
        [x_show] + recons, ["test images"] + names, out / "reconstructions.png", nrow=nrow,
        suptitle=f"Reconstructions, latent size {latent_dim}, {epochs} epochs")
    fig_gen = figures.image_panels(
        samples, names, out / "generation.png", nrow=nrow,
        suptitle="Decoding z ~ N(0, I) (the same z for every model)")
    fig_mean = figures.image_panels(
        means, names, out / "mean_codes.png", nrow=1,
        suptitle="Decoding the mean of the training codes")

    report = Report(
        f"Autoencoder vs VAE ({dataset}, latent size {latent_dim})", options,
        f"The same networks trained {epochs} epochs each as a VAE (loss: negative ELBO) and as "
        f"a plain deterministic autoencoder (AE: the encoder's code only, reconstruction loss "
        f"-log p(x|z) of the {cfg.likelihood} decoder, no KL). One run folder per model next to "
        f"this report.")
    report.figure(fig_recon, f"the first {x_show.shape[0]} test images and each model's "
                             f"reconstruction (decoded posterior mean / code)")
    report.figure(fig_gen, f"{N_IMAGES} images per model decoded from the same z ~ N(0, I)")
    report.figure(fig_mean, "each model decoding the mean of its codes of the training images")
    fid_n = min(fid_samples, x_test.shape[0])
    report.text(
        f"Test set: {x_test.shape[0]} images. test recon is -log p(x|z) in nats per image, the "
        f"last epoch of each run's metrics.csv (the VAE's for one z ~ q(z|x), the AE's for its "
        f"code); squared error is the sum over pixels of (decoded mean - x)^2, averaged over the "
        f"test images; code KL is KL(N(m, diag(s^2)) || N(0, I)) in nats for a diagonal "
        f"Gaussian fitted to the codes the decoder was trained on, over the "
        f"{x_train.shape[0]} training images (the AE's codes; one z ~ q(z|x) each for the "
        f"VAE): how far they lie from the N(0, I) the generator samples."
        + (f" FID ({fid} features): {fid_n} samples z ~ N(0, I) against the first {fid_n} "
           f"test images; lower is better." if fid is not None else ""))
    report.table(("model", "test recon", "test KL", "test NELBO", "test squared error",
                  "code KL to N(0, I)", *([f"FID ({fid})"] if fid is not None else [])), rows)
    for arch in archs:
        report.text(_tradeoff(arch, stats[(arch, "ae")], stats[(arch, "vae")], fid))
    return report.write()
