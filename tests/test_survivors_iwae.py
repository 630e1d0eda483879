"""The IWAE objective's parts that single-point mutants once changed without failing a test
(tests/mutation/mutants.py names them): its generator, its reductions and its ``recon``."""

import torch
from helpers import assert_close
from test_evaluation import LinearGaussian, data

import fastvae
from fastvae.models.iwae import iwae_loss

K = 6


def _loss(model, x, reduction="none", seed=3):
    generator = torch.Generator().manual_seed(seed)
    return iwae_loss(model, x, K, reduction=reduction, generator=generator)


def test_iwae_draws_come_from_the_generator():
    m, x = LinearGaussian(shift=0.4), data()
    torch.manual_seed(0)
    first = _loss(m, x).loss
    torch.manual_seed(1)  # the global generator must not matter
    assert torch.equal(first, _loss(m, x).loss)
    assert not torch.equal(first, _loss(m, x, seed=4).loss)


def test_iwae_reductions():
    """"sum" adds the per-image values, "batchmean" divides by B, "mean" by B x input_dim."""
    m, x = LinearGaussian(shift=0.4), data()
    rows = _loss(m, x)
    B, D = x.shape
    for reduction, div in (("sum", 1), ("batchmean", B), ("mean", B * D)):
        for got, per_image in zip(_loss(m, x, reduction), rows):
            assert_close(got, per_image.sum() / div, name=reduction)


def test_iwae_recon_is_the_mean_nll_over_the_draws():
    """``recon`` is the mean over the K draws of -log p(x | z_k), the draws being those of
    ``fastvae.reparameterize`` with the same generator."""
    m, x = LinearGaussian(shift=0.4), data()
    rows = _loss(m, x)
    mu, logvar = m.encode(x)
    z = fastvae.reparameterize(mu, logvar, n_samples=K, generator=torch.Generator().manual_seed(3),
                               backend=m.backend)
    mean, recon_logvar = m.decode_params(z.reshape(K * x.shape[0], -1))
    nll = fastvae.reconstruction_loss(mean, x.repeat(K, 1), "gaussian", recon_logvar=recon_logvar,
                                      reduction="none", backend=m.backend)
    assert_close(rows.recon, nll.view(K, -1).mean(0))
    assert_close(rows.kl, rows.loss - rows.recon)
