"""The studies: the plain autoencoder, dropout and weight decay, the Gaussian
decoder's log-variance floor, decoder sampling, grayscale and per-class Animal Faces, and
their `fastvae experiment` commands on real MNIST (--quick, tiny slices) and the real
43-image AFHQ sample."""

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_data import HAVE_MNIST, NO_MNIST
from torch import nn

from fastvae import cli
from fastvae.models import MLPVAE
from fastvae.models import registry as builders
from fastvae.models.autoencoder import Autoencoder, ConvAutoencoder, MLPAutoencoder
from fastvae.models.conv import ConvVAE
from fastvae.reference import reconstruction_loss
from fastvae.studies.experiments.ae_vs_vae import prior_mismatch
from fastvae.studies.experiments.common import read_metrics
from fastvae.train import GAUSSIAN_LOGVAR_FLOOR, TrainConfig, load_checkpoint
from fastvae.train.build import build_optimizer as _build_optimizer

needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=NO_MNIST)
SAMPLE = Path(os.environ.get("FASTVAE_DATA") or "data") / "afhq_sample"
needs_sample = pytest.mark.skipif(not (SAMPLE / "train").is_dir(),
                                  reason="the AFHQ sample is not in $FASTVAE_DATA/afhq_sample")
TINY = ["--quick", "--limit-train", "256", "--limit-test", "100", "--device", "cpu"]
AFHQ = ["--data-dir", str(SAMPLE), "--image-size", "16", "--device", "cpu"]


def run(*args):
    assert cli.main(list(args)) == 0


def report_rows(folder):
    """report.md's text, its table rows (by first cell) and the PNGs it embeds (checked)."""
    text = (folder / "report.md").read_text()
    assert text.startswith("# ") and "fastvae experiment" in text
    for name in re.findall(r"\]\(([^)]+\.png)\)", text):
        with Image.open(folder / name) as im:
            assert im.format == "PNG" and min(im.size) > 100
    rows, lines = {}, text.splitlines()
    for line, below in zip(lines, lines[1:] + [""]):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        separator = set(line) <= set("|-: ")
        header = set(below) <= set("|-: ") and below.startswith("|")
        if line.startswith("| ") and not separator and not header:
            rows[cells[0]] = cells[1:]
    return text, rows


# ------------------------------------------------------------------ models


@pytest.mark.parametrize("cls, vae_cls, kw", [
    (MLPAutoencoder, MLPVAE, {"hidden_dims": (8,)}),
    (ConvAutoencoder, ConvVAE, {"channels": (4,)}),
])
def test_autoencoder_is_the_vae_network_without_posterior(cls, vae_cls, kw):
    torch.manual_seed(0)
    ae, vae = cls((1, 6, 6), latent_dim=3, **kw), vae_cls((1, 6, 6), latent_dim=3, **kw)
    n_head = ae.head.in_features * 3 + 3  # the VAE's head has a second such block (logvar)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(vae) - count(ae) == n_head
    x = torch.rand(5, 1, 6, 6)
    z, logvar = ae.encode(x)
    assert z.shape == (5, 3) and logvar is None
    out = ae.loss(x, reduction="sum")
    expected = reconstruction_loss(ae.decode(z), x, "bernoulli", reduction="none").sum()
    torch.testing.assert_close(out.recon, expected)
    torch.testing.assert_close(out.loss, out.recon)
    assert out.kl.item() == 0 and ae.loss(x, reduction="none").kl.shape == (5,)
    out.loss.backward()  # deterministic: the same loss twice, gradients reach the encoder
    assert ae.loss(x, reduction="sum").loss.item() == out.loss.item()
    assert ae.head.weight.grad.abs().sum() > 0
    # A checkpoint records and rebuilds the autoencoder, not its VAE base class.
    name = builders.model_name(ae)
    assert name.endswith("-ae") and builders.model_name(vae) == name[:-3]
    rebuilt = builders.rebuild_model(name, ae.config)
    rebuilt.load_state_dict(ae.state_dict())
    assert type(rebuilt) is cls and torch.equal(rebuilt.reconstruct(x), ae.reconstruct(x))


@pytest.mark.parametrize("cls, kw", [(MLPVAE, {"hidden_dims": (16, 16)}),
                                     (ConvVAE, {"channels": (4, 8)})])
def test_dropout_acts_in_training_only(cls, kw):
    torch.manual_seed(0)
    m = cls((1, 8, 8), latent_dim=2, dropout=0.5, **kw)
    n_drop = sum(isinstance(layer, nn.Dropout) for layer in m.modules())
    assert n_drop == 2 * len(next(iter(kw.values())))  # after every hidden layer, both sides
    plain = cls((1, 8, 8), latent_dim=2, **kw)
    assert not any(isinstance(layer, nn.Dropout) for layer in plain.modules())
    x = torch.rand(4, 1, 8, 8)
    m.train()
    assert not torch.equal(m.encode(x)[0], m.encode(x)[0])
    m.eval()
    assert torch.equal(m.encode(x)[0], m.encode(x)[0])
    with pytest.raises(ValueError, match="dropout must be a probability"):
        cls((1, 8, 8), latent_dim=2, dropout=1.0, **kw)


def test_logvar_floor_bounds_the_gaussian_loss():
    torch.manual_seed(0)
    floor = -3.0
    m = MLPVAE((1, 4, 4), (8,), latent_dim=2, likelihood="gaussian", logvar_floor=floor)
    with torch.no_grad():
        m.decoder[-1].weight[:16] = 0.0  # the mean: exactly 0
        m.decoder[-1].bias[:16] = 0.0
        m.decoder[-1].bias[16:] = -50.0  # the raw log-variances far below the floor
    _, logvar = m.decode_params(torch.randn(3, 2))
    assert logvar.min().item() >= floor and logvar.max().item() < floor + 1e-3
    assert m.recon_lower_bound() == pytest.approx(16 * 0.5 * (math.log(2 * math.pi) + floor))
    x = torch.zeros(3, 1, 4, 4)  # the data are the mean: the loss sits at the bound
    recon = m.loss(x, reduction="none").recon
    torch.testing.assert_close(recon, torch.full((3,), m.recon_lower_bound()), atol=0.05, rtol=0)
    free = MLPVAE((1, 4, 4), (8,), latent_dim=2, likelihood="gaussian")
    free.load_state_dict(m.state_dict())
    assert free.recon_lower_bound() == -math.inf
    # Unbounded: 0.5 * (log(2 pi) - 50) per pixel, and lower still as the raw value falls.
    assert free.loss(x, reduction="none").recon.max().item() < -380
    # Above the floor by more than 5 the bound is the identity to within 0.007.
    raw = torch.tensor([floor + 5.0, floor + 20.0])
    torch.testing.assert_close(floor + nn.functional.softplus(raw - floor), raw, atol=7e-3, rtol=0)


def test_decoder_draws_follow_p_x_given_z():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    bern = MLPVAE((1, 3, 3), (4,), latent_dim=2)
    logits = torch.randn(1, 1, 3, 3).expand(20000, 1, 3, 3)
    draws = bern.draw_data(logits, None, generator=gen)
    assert set(draws.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(draws.mean(0), torch.sigmoid(logits[0]), atol=0.015, rtol=0)
    gauss = MLPVAE((1, 3, 3), (4,), latent_dim=2, likelihood="gaussian")
    mean, logvar = torch.rand(1, 1, 3, 3).expand(20000, 1, 3, 3), torch.full((20000, 1, 3, 3), -2.0)
    draws = gauss.draw_data(mean, logvar, generator=gen)
    torch.testing.assert_close(draws.mean(0), mean[0], atol=0.01, rtol=0)
    std = torch.full((1, 3, 3), math.exp(-1.0))
    torch.testing.assert_close(draws.std(0), std, atol=0.01, rtol=0)
    # sample(): the same z for the mean and for the draw, given the same generator state.
    a = gauss.sample(4, generator=torch.Generator().manual_seed(3))
    b = gauss.sample(4, generator=torch.Generator().manual_seed(3), decoder_sample=True)
    assert a.shape == b.shape and not torch.equal(a, b)
    with torch.no_grad():
        top_std = math.exp(0.5 * gauss.decode_params(torch.zeros(1, 2))[1].max().item())
    assert (b - a).abs().mean() < 3 * top_std


def test_weight_decay_optimizers_and_config_checks():
    model = nn.Linear(2, 2)
    adam = _build_optimizer(TrainConfig(weight_decay=1e-5), model)
    adamw = _build_optimizer(TrainConfig(weight_decay=1e-5, optimizer="adamw"), model)
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 1e-5
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 1e-5
    assert type(_build_optimizer(TrainConfig(), model)) is torch.optim.Adam
    assert TrainConfig(likelihood="gaussian").logvar_floor == GAUSSIAN_LOGVAR_FLOOR
    assert GAUSSIAN_LOGVAR_FLOOR == pytest.approx(2 * math.log(0.05))
    assert TrainConfig().logvar_floor is None
    assert TrainConfig(likelihood="gaussian", logvar_floor=None).logvar_floor is None
    for bad, match in [
        ({"grayscale": True}, "grayscale is for dataset animal-faces"),
        ({"logvar_floor": -2.0}, "logvar_floor bounds the gaussian"),
        ({"autoencoder": True, "iwae_k": 5}, "no posterior"),
        ({"weight_decay": -1.0}, "weight_decay must be"),
        ({"optimizer": "sgd"}, "optimizer must be one of"),
        ({"dropout": -0.1}, "dropout must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


# ------------------------------------------------------------------ commands on real data


@needs_mnist
@pytest.mark.slow
def test_train_regularized_gaussian_then_sample_from_the_decoder(tmp_path):
    out = tmp_path / "run"
    run("train", "--likelihood", "gaussian", "--dropout", "0.3", "--weight-decay", "1e-5",
        "--hidden-dims", "32", "32", "--latent-dim", "4", "--batch-size", "100", "--epochs", "1",
        "--limit-train", "300", "--limit-test", "100", "--device", "cpu", "--out", str(out))
    config = json.loads((out / "config.json").read_text())
    assert config["logvar_floor"] == pytest.approx(2 * math.log(0.05)) and config["dropout"] == 0.3
    model, _ = load_checkpoint(out / "checkpoint.pt")
    assert model.logvar_floor == config["logvar_floor"] and model.dropout == 0.3
    last = read_metrics(out / "metrics.csv")[-1]
    assert math.isfinite(last["test_loss"]) and last["test_recon"] > model.recon_lower_bound()
    for flag, name in (([], "mean.png"), (["--decoder-sample"], "draw.png")):
        run("sample", str(out / "checkpoint.pt"), "--n", "16", "--out", str(tmp_path / name), *flag)
    with Image.open(tmp_path / "mean.png") as a, Image.open(tmp_path / "draw.png") as b:
        assert a.size == b.size and a.tobytes() != b.tobytes()


@needs_mnist
@pytest.mark.slow
def test_ae_vs_vae_on_mnist(tmp_path):
    run("experiment", "ae-vs-vae", *TINY, "--out", str(tmp_path))
    text, rows = report_rows(tmp_path)
    for png in ("reconstructions.png", "generation.png", "mean_codes.png"):
        assert f"]({png})" in text
    assert set(rows) == {"VAE (mlp)", "AE (mlp)", "VAE (conv)", "AE (conv)"}
    for arch in ("mlp", "conv"):
        ae = read_metrics(tmp_path / f"ae-{arch}" / "metrics.csv")[-1]
        vae = read_metrics(tmp_path / f"vae-{arch}" / "metrics.csv")[-1]
        assert float(rows[f"AE ({arch})"][0]) == pytest.approx(ae["test_recon"], abs=0.006)
        assert float(rows[f"VAE ({arch})"][2]) == pytest.approx(vae["test_loss"], abs=0.006)
        assert ae["test_kl"] == 0 and rows[f"AE ({arch})"][1] == "0 (none)"
        assert f"**{arch}:** the AE reconstructs" in text
    model, ckpt = load_checkpoint(tmp_path / "ae-conv" / "checkpoint.pt")
    assert isinstance(model, ConvAutoencoder) and ckpt["model_name"] == "conv-ae"


def test_prior_mismatch_is_the_diagonal_gaussian_kl():
    codes = torch.randn(100000, 3, generator=torch.Generator().manual_seed(0))
    assert prior_mismatch(codes) == pytest.approx(0.0, abs=1e-3)
    # N(1, 4) per dimension: 0.5 * (4 + 1 - 1 - log 4) each.
    assert prior_mismatch(1 + 2 * codes) == pytest.approx(3 * 0.5 * (4 - math.log(4)), rel=1e-2)


@needs_mnist
@pytest.mark.slow
def test_decoder_sampling_experiment(tmp_path):
    run("experiment", "decoder-sampling", *TINY, "--out", str(tmp_path))
    text, rows = report_rows(tmp_path)
    assert "](samples.png)" in text
    mlp = read_metrics(tmp_path / "mlp" / "metrics.csv")[-1]
    row = rows["MLP 784-200-200-200-4"]
    assert float(row[0]) == pytest.approx(mlp["test_loss"], abs=0.006)
    assert float(row[1]) > float(row[3])  # test recon above the floor's bound
    assert float(row[3]) == pytest.approx(784 * 0.5 * (math.log(2 * math.pi) + 2 * math.log(0.05)),
                                          abs=0.006)
    assert "conv" in rows and rows["MLP 784-200-200-200-4, no floor"][3] == "-inf"
    free = read_metrics(tmp_path / "mlp-no-floor" / "metrics.csv")[-1]
    assert float(rows["MLP 784-200-200-200-4, no floor"][0]) == pytest.approx(free["test_loss"],
                                                                             abs=0.006)
    config = json.loads((tmp_path / "conv" / "config.json").read_text())
    assert (config["dropout"], config["weight_decay"], config["batch_size"]) == (0.3, 1e-5, 100)


@needs_sample
@pytest.mark.slow
def test_ae_vs_vae_on_the_animal_faces_sample(tmp_path):
    run("experiment", "ae-vs-vae", *AFHQ, "--dataset", "animal-faces", "--epochs", "1",
        "--archs", "conv", "--latent-dim", "4", "--likelihood", "mse", "--out", str(tmp_path))
    text, rows = report_rows(tmp_path)
    assert set(rows) == {"VAE (conv)", "AE (conv)"} and "(animal-faces" in text
    ae = read_metrics(tmp_path / "ae-conv" / "metrics.csv")[-1]
    assert float(rows["AE (conv)"][0]) == pytest.approx(ae["test_recon"], abs=0.006)
    model, _ = load_checkpoint(tmp_path / "ae-conv" / "checkpoint.pt")
    assert model.input_shape == (3, 16, 16) and model.likelihood == "mse"
    assert "-log p(x|z) of the mse decoder" in text


@needs_sample
@pytest.mark.slow
def test_animal_faces_per_class_grayscale(tmp_path):
    run("experiment", "animal-faces", *AFHQ, "--grayscale", "--epochs", "2", "--batch-size",
        "8", "--latent-dim", "4", "--out", str(tmp_path))
    text, rows = report_rows(tmp_path)
    for png in ("curves.png", "reconstructions.png", "samples.png"):
        assert f"]({png})" in text
    assert list(rows) == ["cat", "wild", "all"] and rows["all"][0] == "cat, dog, wild"
    for name, classes in (("cat", ["cat"]), ("wild", ["wild"]), ("all", None)):
        metrics = read_metrics(tmp_path / name / "metrics.csv")
        assert len(metrics) == 2
        assert float(rows[name][1]) == pytest.approx(metrics[-1]["test_loss"], abs=0.006)
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["classes"] == classes and config["grayscale"] is True
    model, _ = load_checkpoint(tmp_path / "cat" / "checkpoint.pt")
    assert model.input_shape == (1, 16, 16)


@pytest.fixture(scope="module")
def afhq_run(tmp_path_factory):
    """A 1-epoch grayscale MLP run on the AFHQ sample (13 val images: an odd count)."""
    out = tmp_path_factory.mktemp("afhq") / "run"
    run("train", "--dataset", "animal-faces", *AFHQ, "--grayscale", "--model", "mlp",
        "--hidden-dims", "32", "--latent-dim", "3", "--epochs", "1", "--batch-size", "8",
        "--out", str(out))
    return out


@needs_sample
@pytest.mark.parametrize("name, png", [
    ("reconstructions", "reconstructions.png"), ("interpolation", "interpolation.png"),
    ("loss-curves", "loss_curves.png"), ("latent-scatter", "latent_scatter.png"),
])
def test_single_model_experiments_on_an_animal_faces_run(afhq_run, tmp_path, name, png):
    model, _ = load_checkpoint(afhq_run / "checkpoint.pt")
    assert model.input_shape == (1, 16, 16)
    run("experiment", name, "--run", str(afhq_run), "--out", str(tmp_path))
    text, _ = report_rows(tmp_path)
    assert f"]({png})" in text
    if name == "interpolation":  # 13 val images: 6 whole pairs, not a size mismatch
        assert "6 interpolations" in text


@needs_sample
@pytest.mark.slow
def test_fid_sets_the_generated_and_real_counts_on_animal_faces(afhq_run):
    from fastvae.studies.evaluation import evaluate_checkpoint

    class Pixels(nn.Module):  # a stand-in feature network: 4 pooled pixel features
        num_features = 4

        def forward(self, x):
            return nn.functional.adaptive_avg_pool2d(x.float(), 2).flatten(1).double()

    r = evaluate_checkpoint(afhq_run / "checkpoint.pt", k=0, fid=Pixels(), fid_samples=6,
                            progress=False)
    assert r["fid"]["samples"] == 6 and r["fid"]["real"] == 6 and r["fid"]["value"] > 0
    r = evaluate_checkpoint(afhq_run / "checkpoint.pt", k=0, fid=Pixels(), fid_samples=40,
                            progress=False)
    assert r["fid"]["real"] == 13  # the whole val split of the sample


def test_evaluate_refuses_an_nll_for_an_autoencoder(tmp_path):
    from fastvae.studies.evaluation import evaluate_checkpoint
    from fastvae.train import save_checkpoint

    ae = MLPAutoencoder(hidden_dims=(8,), latent_dim=2)
    save_checkpoint({"epoch": 1, "config": vars(TrainConfig(autoencoder=True)),
                     "model": ae.state_dict(), "model_name": builders.model_name(ae),
                     "model_config": ae.config}, tmp_path / "ae.pt")
    with pytest.raises(ValueError, match="pass --k 0"):
        evaluate_checkpoint(tmp_path / "ae.pt", k=10)
    assert isinstance(load_checkpoint(tmp_path / "ae.pt")[0], Autoencoder)
