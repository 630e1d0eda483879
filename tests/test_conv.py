"""ConvVAE: sizes derived from the input shape, the likelihood heads, the shared VAE interface."""

import pytest
import torch
from test_models import _oracle_loss

from fastvae.models import VAE
from fastvae.models.conv import ConvVAE, default_channels

LIKELIHOODS = ("bernoulli", "mse", "gaussian")


def model(shape=(1, 12, 10), likelihood="bernoulli", backend="torch", **kw):
    torch.manual_seed(0)
    return ConvVAE(shape, latent_dim=3, likelihood=likelihood, backend=backend, **kw)


def test_default_channels_follow_the_image_size():
    assert default_channels(28, 28) == (32, 64)  # 28 -> 14 -> 7
    assert default_channels(128, 128) == (32, 64, 128, 256, 256)  # 128 -> 4
    assert default_channels(5, 5) == (32,)  # always one layer
    assert ConvVAE((1, 28, 28)).feature_sizes == ((28, 28), (14, 14), (7, 7))


@pytest.mark.parametrize(
    "shape, likelihood",
    [((1, 28, 28), lik) for lik in LIKELIHOODS]
    + [((3, 128, 128), "bernoulli"), ((3, 30, 45), "gaussian"), ((2, 7, 9), "mse")],
)
def test_output_matches_any_input_shape(shape, likelihood):
    m = ConvVAE(shape, latent_dim=4, likelihood=likelihood, backend="torch")
    x = torch.rand(2, *shape)
    mu, logvar = m.encode(x)
    assert mu.shape == logvar.shape == (2, 4)
    recon, recon_logvar = m.decode_params(mu)
    assert recon.shape == x.shape
    assert (recon_logvar is None) == (likelihood != "gaussian")
    if likelihood == "gaussian":
        assert recon_logvar.shape == x.shape
    # The output layer has C (logits / mean) or 2C (mean and log-variance) channels.
    assert m.decoder[-1].out_channels == shape[0] * (2 if likelihood == "gaussian" else 1)
    assert m.sample(3).shape == (3, *shape)
    assert m.reconstruct(x).shape == x.shape


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_loss_is_the_shared_fused_objective(likelihood):
    m = model(likelihood=likelihood)
    assert isinstance(m, VAE)
    x = torch.rand(5, 1, 12, 10)
    eps = torch.randn((5, 3), generator=torch.Generator().manual_seed(7))
    out = m.loss(x, beta=2.0, generator=torch.Generator().manual_seed(7))
    o_loss, o_rec, o_kl = _oracle_loss(m, x, eps, 2.0)
    torch.testing.assert_close(out.recon, o_rec, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.kl, o_kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, o_loss, rtol=1e-5, atol=1e-4)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_triton_kernels_give_the_same_loss():
    x = (torch.rand(3, 1, 12, 10) > 0.5).float()
    losses = []
    for backend in ("torch", "triton"):
        m = model(backend=backend)
        with torch.no_grad():  # logvar = -60: z = mu to fp32 precision, whatever the noise
            m.head.weight[3:] = 0.0
            m.head.bias[3:] = -60.0
        losses.append(m.loss(x))
    for a, b in zip(*losses):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_config_rebuilds_and_flat_input():
    m = model((3, 9, 11), "gaussian", channels=(4, 8))
    assert m.config == {"input_shape": (3, 9, 11), "channels": (4, 8), "latent_dim": 3,
                        "likelihood": "gaussian", "backend": "torch", "dropout": 0.0,
                        "logvar_floor": None}
    m2 = ConvVAE(**m.config)
    m2.load_state_dict(m.state_dict())
    x = torch.rand(2, 3, 9, 11)
    torch.testing.assert_close(m2.reconstruct(x), m.reconstruct(x), rtol=0, atol=0)
    torch.testing.assert_close(m.encode(x.reshape(2, -1))[0], m.encode(x)[0], rtol=0, atol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"input_shape must be \(C, H, W\)"):
        ConvVAE((28, 28))
    with pytest.raises(ValueError, match="below 1 pixel"):
        ConvVAE((1, 8, 8), channels=(4, 4, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        ConvVAE((1, 8, 8), channels=())
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 12, 10\)"):
        model().encode(torch.rand(2, 1, 10, 12))


def test_load_checkpoint_rebuilds_the_recorded_class(tmp_path):
    from fastvae.models import MLPVAE
    from fastvae.train import TrainConfig, load_checkpoint, save_checkpoint

    conv = model((1, 28, 28))
    base = {"epoch": 1, "config": vars(TrainConfig(model="conv")), "model_config": conv.config}
    save_checkpoint({**base, "model": conv.state_dict(), "model_name": "conv"}, tmp_path / "c.pt")
    loaded, _ = load_checkpoint(tmp_path / "c.pt")
    assert type(loaded) is ConvVAE and loaded.config == conv.config
    # Checkpoints written before model_name existed hold an MLPVAE.
    mlp = MLPVAE()
    save_checkpoint({**base, "model": mlp.state_dict(), "model_config": mlp.config},
                    tmp_path / "m.pt")
    assert type(load_checkpoint(tmp_path / "m.pt")[0]) is MLPVAE
