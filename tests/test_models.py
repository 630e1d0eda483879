"""MLPVAE: shapes, the loss against an independent oracle, gradients, generation, backends."""

import math

import pytest
import torch
import torch.nn.functional as F

import fastvae
from fastvae.models import MLPVAE

LIKELIHOODS = ("bernoulli", "mse", "gaussian")
SMALL = dict(input_shape=(1, 6, 5), hidden_dims=(16, 8), latent_dim=3)


def small_model(likelihood="bernoulli", backend="torch", seed=0, **kw):
    torch.manual_seed(seed)
    return MLPVAE(**{**SMALL, **kw}, likelihood=likelihood, backend=backend)


def data(b=4, shape=(1, 6, 5), seed=1):
    return torch.rand((b, *shape), generator=torch.Generator().manual_seed(seed))


def test_default_is_the_canonical_mnist_vae():
    m = MLPVAE()
    # pytorch/examples vae/main.py: fc1 784x400, fc21/fc22 400x20, fc3 20x400, fc4 400x784.
    canonical = (784 * 400 + 400) + 2 * (400 * 20 + 20) + (20 * 400 + 400) + (400 * 784 + 784)
    assert sum(p.numel() for p in m.parameters()) == canonical == 652824
    assert [type(layer).__name__ for layer in m.encoder] == ["Linear", "ReLU"]
    assert [type(layer).__name__ for layer in m.decoder] == ["Linear", "ReLU", "Linear"]
    assert m.config == {
        "input_shape": (1, 28, 28), "hidden_dims": (400,), "latent_dim": 20,
        "likelihood": "bernoulli", "backend": None, "dropout": 0.0, "logvar_floor": None,
    }


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_shapes(likelihood):
    m = small_model(likelihood)
    x = data(4)
    mu, logvar = m.encode(x)
    assert mu.shape == logvar.shape == (4, 3) and mu.dtype == torch.float32
    # A flattened (B, D) input is accepted too and gives the same code.
    torch.testing.assert_close(m.encode(x.reshape(4, -1))[0], mu, rtol=0, atol=0)
    out = m.decode(mu)
    recon, recon_logvar = m.decode_params(mu)
    assert recon.shape == x.shape
    if likelihood == "gaussian":
        assert isinstance(out, tuple) and len(out) == 2
        assert out[0].shape == out[1].shape == x.shape
        assert recon_logvar.shape == x.shape
        assert m.decoder[-1].out_features == 2 * 30
    else:
        assert isinstance(out, torch.Tensor) and out.shape == x.shape
        assert recon_logvar is None
        assert m.decoder[-1].out_features == 30
    fwd, mu2, lv2 = m(x)
    assert mu2.shape == lv2.shape == (4, 3)
    assert (fwd[0] if likelihood == "gaussian" else fwd).shape == x.shape
    elbo = m.loss(x)
    assert isinstance(elbo, fastvae.ELBO)
    assert all(t.shape == () and t.dtype == torch.float32 for t in elbo)
    per = m.loss(x, reduction="none")
    assert all(t.shape == (4,) for t in per)


def _oracle_loss(m, x, eps, beta):
    """The negative ELBO written out with torch.nn.functional only (independent of fastvae)."""
    mu, logvar = m.encode(x)
    z = mu + eps * torch.exp(0.5 * logvar)
    b = x.shape[0]
    if m.likelihood == "gaussian":
        mean, lv = m.decode(z)
        var = lv.exp()
        rec = F.gaussian_nll_loss(mean, x, var, full=True, reduction="sum", eps=0.0) / b
    else:
        out = m.decode(z)
        if m.likelihood == "bernoulli":
            rec = F.binary_cross_entropy_with_logits(out, x, reduction="sum") / b
        else:
            rec = F.mse_loss(out, x, reduction="sum") / b
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / b
    return rec + beta * kl, rec, kl


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_loss_matches_oracle_and_backprops(likelihood, beta):
    m = small_model(likelihood)
    x = data(5)
    # The reference backend draws eps with torch.randn from the generator: replay that draw.
    eps = torch.randn((5, 3), generator=torch.Generator().manual_seed(7))
    loss, rec, kl = m.loss(x, beta=beta, generator=torch.Generator().manual_seed(7))
    o_loss, o_rec, o_kl = _oracle_loss(m, x, eps, beta)
    torch.testing.assert_close(rec, o_rec, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(kl, o_kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, rec + beta * kl, rtol=1e-6, atol=0)
    torch.testing.assert_close(loss, o_loss, rtol=1e-5, atol=1e-4)

    loss.backward()
    ours = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    o_loss.backward()
    for n, p in m.named_parameters():
        assert torch.isfinite(ours[n]).all(), n
        assert ours[n].abs().sum() > 0, f"no gradient reached {n}"
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-4, atol=1e-5, msg=lambda s: f"{n}: {s}")


def test_reductions_agree():
    m = small_model()
    x = data(6)
    per = m.loss(x, reduction="none", generator=torch.Generator().manual_seed(3))
    tot = m.loss(x, reduction="sum", generator=torch.Generator().manual_seed(3))
    batchmean = m.loss(x, generator=torch.Generator().manual_seed(3))  # the default
    mean = m.loss(x, reduction="mean", generator=torch.Generator().manual_seed(3))
    for p, s, a in zip(per, tot, batchmean):
        torch.testing.assert_close(p.sum(), s)
        torch.testing.assert_close(p.mean(), a)
    # "mean" is per element: the reconstruction over B x input_dim, the KL over B x latent_dim
    rec_mean, kl_mean = per.recon.sum() / (6 * m.input_dim), per.kl.sum() / (6 * m.latent_dim)
    torch.testing.assert_close(mean.recon, rec_mean)
    torch.testing.assert_close(mean.kl, kl_mean)
    torch.testing.assert_close(mean.loss, rec_mean + kl_mean)


def test_loss_rejects_bad_arguments():
    m = small_model()
    with pytest.raises(ValueError, match="beta"):
        m.loss(data(2), beta=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        m.loss(data(2), reduction="avg")
    with pytest.raises(ValueError, match="x must have shape"):
        m.encode(torch.rand(2, 1, 5, 5))
    with pytest.raises(ValueError, match="likelihood"):
        MLPVAE(likelihood="poisson")
    with pytest.raises(ValueError, match="latent_dim"):
        MLPVAE(latent_dim=0)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_sample_and_reconstruct(likelihood):
    m = small_model(likelihood)
    s = m.sample(7, generator=torch.Generator().manual_seed(0))
    assert s.shape == (7, 1, 6, 5) and not s.requires_grad
    s2 = m.sample(7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s, s2, rtol=0, atol=0)
    x = data(3)
    r = m.reconstruct(x)
    assert r.shape == x.shape and not r.requires_grad
    torch.testing.assert_close(r, m.reconstruct(x), rtol=0, atol=0)  # posterior mean: no noise
    mu, _ = m.encode(x)
    recon, _ = m.decode_params(mu)
    if likelihood == "bernoulli":
        assert s.min() >= 0 and s.max() <= 1 and r.min() >= 0 and r.max() <= 1
        torch.testing.assert_close(r, torch.sigmoid(recon))
    else:
        torch.testing.assert_close(r, recon)


def test_config_rebuilds_the_model():
    m = small_model("gaussian")
    m2 = MLPVAE(**m.config)
    m2.load_state_dict(m.state_dict())
    x = data(2)
    torch.testing.assert_close(m2.reconstruct(x), m.reconstruct(x), rtol=0, atol=0)


@pytest.mark.slow
def test_training_steps_reduce_the_loss():
    m = small_model()
    # Four binary prototypes, eight copies each: learnable (random pixels would not be).
    x = (data(4) > 0.5).float().repeat(8, 1, 1, 1)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    first = m.loss(x, generator=gen).loss.item()
    for _ in range(60):
        out = m.loss(x, generator=gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.loss.item() < 0.5 * first, (first, out.loss.item())


def _near_deterministic(m):
    """Force logvar = -60 (std ~ 1e-13) so z equals mu to fp32 precision: both backends then
    compute the same function although their noise generators differ."""
    L = m.latent_dim
    with torch.no_grad():
        m.head.weight[L:] = 0.0
        m.head.bias[L:] = -60.0
    return m


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_triton_backend_matches_torch(likelihood):
    x = data(3)
    mt = _near_deterministic(small_model(likelihood, backend="torch"))
    mk = _near_deterministic(small_model(likelihood, backend="triton"))
    out_t, out_k = mt.loss(x), mk.loss(x)
    for a, b, name in zip(out_k, out_t, ("loss", "recon", "kl")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4, msg=lambda s: f"{name}: {s}")
    # KL = 0.5 * L * (exp(-60) - 1 + 60) per sample, independent of mu only through mu^2.
    assert out_k.kl.item() > 0.5 * 3 * 58
    out_t.loss.backward()
    out_k.loss.backward()
    for (n, pt), (_, pk) in zip(mt.named_parameters(), mk.named_parameters()):
        torch.testing.assert_close(pk.grad, pt.grad, rtol=1e-4, atol=1e-5,
                                   msg=lambda s: f"{n}: {s}")


def test_triton_backend_training_step_runs():
    m = small_model(backend="triton")
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x = (data(4) > 0.5).float()
    before = [p.detach().clone() for p in m.parameters()]
    out = m.loss(x, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    opt.step()
    assert math.isfinite(out.loss.item())
    assert all(not torch.equal(a, p) for a, p in zip(before, m.parameters()))
