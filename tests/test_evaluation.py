"""Evaluation: the importance-weighted NLL against an exact marginal likelihood, its bound
ordering, and `fastvae evaluate` on a tiny real MNIST checkpoint."""

import json
import math

import pytest
import torch
from test_data import HAVE_MNIST, NO_MNIST
from torch import nn
from torch.distributions import MultivariateNormal

from fastvae import cli
from fastvae.models import VAE
from fastvae.studies.evaluation import importance_weighted_nll, log_importance_weights


class LinearGaussian(VAE):
    """p(z) = N(0, I), p(x | z) = N(W z + b, s2 I) with orthogonal columns of W, so that the
    exact posterior is diagonal: var_j = 1 / (1 + |W_j|^2 / s2), mean = var * W^T (x - b) / s2,
    and log p(x) = log N(x; b, W W^T + s2 I). ``shift`` moves the encoder off the posterior."""

    def __init__(self, d=6, latent=3, s2=0.3, shift=0.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(d, latent, generator=g, dtype=torch.float64))
        self.W = nn.Parameter(q * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64))
        self.s2, self.shift = s2, shift
        self._set_spec((d,), latent, "gaussian", "torch")

    def encode(self, x):
        var = 1.0 / (1.0 + self.W.square().sum(0) / self.s2)
        mu = (x - self.b) @ self.W * var / self.s2
        return mu + self.shift, var.log().expand_as(mu) + self.shift

    def decode_params(self, z):
        mean = z @ self.W.T + self.b
        return mean, torch.full_like(mean, math.log(self.s2))

    @torch.no_grad()
    def exact_nll(self, x):
        cov = self.W @ self.W.T + self.s2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        return -MultivariateNormal(self.b, cov).log_prob(x)


def data(n=5, d=6):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_exact_posterior_gives_the_exact_likelihood_for_every_draw():
    m, x = LinearGaussian(), data()
    logw = log_importance_weights(m, x, 7, generator=torch.Generator().manual_seed(0))
    assert logw.shape == (7, 5) and logw.dtype == torch.float64
    # With q(z|x) = p(z|x), every weight is p(x): no variance at all.
    torch.testing.assert_close(-logw, m.exact_nll(x).expand(7, 5), rtol=1e-10, atol=1e-10)
    out = importance_weighted_nll(m, [(x, None)], k=10, k_chunk=3, progress=False)
    assert out["nll"] == pytest.approx(float(m.exact_nll(x).mean()), abs=1e-9)
    assert out["images"] == 5 and out["k"] == 10


def test_iwae_tightens_towards_the_exact_nll_and_never_passes_the_elbo():
    m, x = LinearGaussian(shift=0.4), data()
    exact = float(m.exact_nll(x).mean())
    batches = [(x[:2], None), (x[2:], None)]
    results = {k: importance_weighted_nll(m, batches, k=k, k_chunk=64, seed=3, progress=False)
               for k in (1, 10, 2000)}
    for k, r in results.items():
        assert r["nll"] <= r["elbo"] + 1e-12, k  # Jensen on the same draws
    assert results[1]["nll"] == pytest.approx(results[1]["elbo"], abs=1e-12)  # L_1 = ELBO
    gap = results[1]["elbo"] - exact
    assert gap > 0.5, "the shifted encoder leaves a real ELBO gap"
    assert results[10]["nll"] < results[1]["nll"]
    assert abs(results[2000]["nll"] - exact) < 0.05 * gap


def test_bad_k():
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        importance_weighted_nll(LinearGaussian(), [(data(), None)], k=0)


@pytest.mark.skipif(not HAVE_MNIST, reason=NO_MNIST)
@pytest.mark.slow
def test_evaluate_command_on_a_tiny_mnist_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main([
        "train", "--epochs", "2", "--limit-train", "1024", "--limit-test", "200",
        "--binarize", "dynamic", "--device", "cpu", "--out", str(run),
    ]) == 0
    from fastvae.studies.fid import train_mnist_classifier

    clf = tmp_path / "clf.pt"
    train_mnist_classifier(1, out=clf, limit_train=512, limit_test=200)
    capsys.readouterr()
    report = tmp_path / "eval.json"
    assert cli.main([
        "evaluate", str(run / "checkpoint.pt"), "--k", "64", "--limit", "100", "--batch-size",
        "50", "--fid", "mnist-classifier", "--classifier", str(clf), "--fid-samples", "200",
        "--device", "cpu", "--json", str(report),
    ]) == 0
    printed = capsys.readouterr().out
    assert "NLL (IWAE, k=64)" in printed and "FID (mnist-classifier" in printed
    r = json.loads(report.read_text())
    assert r["images"] == 100 and r["epoch"] == 2
    elbo, iwae = r["elbo"], r["iwae"]
    assert elbo["loss"] == pytest.approx(elbo["recon"] + elbo["kl"])
    assert iwae["nll"] <= iwae["elbo"]
    # The k = 64 estimate is tighter than the ELBO by more than the Monte Carlo noise.
    assert iwae["nll"] < elbo["loss"] - 1.0 and iwae["nll"] < iwae["elbo"] - 1.0
    assert 60 < iwae["nll"] < 300
    assert r["fid"]["value"] > 0 and r["fid"]["samples"] == 200
    assert r["fid"]["real"] == 100  # the first 200 test images of the 100 that --limit keeps


def test_evaluate_missing_checkpoint(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_iwae_loss_is_the_bound_and_trains():
    from fastvae.models.iwae import iwae_loss

    m, x = LinearGaussian(), data()
    out = iwae_loss(m, x, 4, reduction="none")
    torch.testing.assert_close(out.loss.double(), m.exact_nll(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.loss, out.recon + out.kl)
    # A shifted encoder: gradients reach the encoder through the reparameterized draws, and
    # IWAE training pulls the bound towards the exact NLL.
    m = LinearGaussian(shift=0.4)
    m.enc_shift = nn.Parameter(torch.zeros((), dtype=torch.float64))
    encode = m.encode
    m.encode = lambda x: tuple(t + m.enc_shift for t in encode(x))
    opt = torch.optim.Adam([m.enc_shift], lr=0.05)
    gen = torch.Generator().manual_seed(0)
    first = float(iwae_loss(m, x, 8, generator=gen).loss.detach())
    for _ in range(60):
        loss = iwae_loss(m, x, 8, generator=gen).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first
    assert m.enc_shift.item() < -0.1  # moved towards cancelling the +0.4 shift


@pytest.mark.skipif(not HAVE_MNIST, reason=NO_MNIST)
@pytest.mark.slow
def test_train_with_the_iwae_objective(tmp_path, capsys):
    assert cli.main(["train", "--iwae-k", "5", "--epochs", "1", "--limit-train", "256",
                     "--limit-test", "100", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert "final test NELBO" in capsys.readouterr().out
    assert cli.main(["train", "--iwae-k", "5", "--beta", "4"]) == 2
    assert "no KL weight" in capsys.readouterr().err
