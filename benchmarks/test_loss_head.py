"""pytest-benchmark: one VAE loss step (sample, KL, reconstruction; forward + backward) at
MNIST size, fastvae against the usual hand-written PyTorch loss, on this machine's device.

    pytest benchmarks/ --benchmark-columns=median,iqr,rounds

On CUDA, fastvae runs its fused Triton kernels; on a CPU it runs its PyTorch reference, so
the comparison there only shows that the fallback costs nothing extra.
"""

import pytest
import torch
import torch.nn.functional as F

import fastvae

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, D, L = 128, 784, 20


def eager_loss(mu, logvar, logits, x):
    std = torch.exp(0.5 * logvar)
    z = mu + torch.randn_like(std) * std
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    return (bce + kl) / B + 1e-3 * z.sum()


def fastvae_loss(mu, logvar, logits, x):
    z, kl = fastvae.sample_and_kl(mu, logvar)
    rec = fastvae.reconstruction_loss(logits, x)
    return rec + kl + 1e-3 * z.sum()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(B, L, generator=g).to(DEVICE).requires_grad_(True)
    logvar = (0.1 * torch.randn(B, L, generator=g)).to(DEVICE).requires_grad_(True)
    logits = torch.randn(B, D, generator=g).to(DEVICE).requires_grad_(True)
    x = torch.rand(B, D, generator=g).to(DEVICE)
    return mu, logvar, logits, x


def step(loss_fn, inputs):
    loss = loss_fn(*inputs)
    loss.backward()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return loss


@pytest.mark.parametrize("loss_fn", [eager_loss, fastvae_loss], ids=["eager", "fastvae"])
def test_loss_step(benchmark, loss_fn, inputs):
    step(loss_fn, inputs)  # warm-up: compiles the Triton kernels on CUDA
    loss = benchmark(step, loss_fn, inputs)
    assert torch.isfinite(loss)
