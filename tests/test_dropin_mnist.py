"""One epoch of pytorch/examples' MNIST VAE on real MNIST (a subset): the hand-written loss and
the fastvae drop-ins of examples/dropin.py and examples/dropin_fused.py, sigmoid decoder kept,
from the same seed, reach the same test loss within 0.5%."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastvae.data import MNIST_FILES, data_root

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LIMIT = 1024  # images of each split: 8 training steps of 128, fast on a CPU


def load_example(name):
    sys.path.insert(0, str(EXAMPLES))  # dropin_fused imports dropin's loop
    try:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


def handwritten_batch_loss(model, x):
    """pytorch/examples' loss, written from its formula: summed BCE on the sigmoid outputs
    plus the summed KL, with its own reparameterization (randn_like)."""
    mu, logvar = model.encode(x.view(-1, 784))
    std = torch.exp(0.5 * logvar)
    z = mu + torch.randn_like(std) * std
    recon_x = model.decode(z)
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


@pytest.fixture(scope="module")
def mnist():
    raw = data_root() / "MNIST" / "raw"
    if not all((raw / f).is_file() for f in MNIST_FILES):
        pytest.skip(f"real MNIST not found in {raw} "
                    "(set FASTVAE_DATA to a folder holding MNIST/raw)")


def test_one_epoch_matches_the_handwritten_loss(mnist):
    dropin, fused = load_example("dropin"), load_example("dropin_fused")
    run = dropin.train_and_test
    baseline = run(dropin.VAE, handwritten_batch_loss, limit=LIMIT, seed=1)
    plain = run(dropin.VAE, dropin.batch_loss, limit=LIMIT, seed=1)
    one_launch = run(fused.VAE, fused.batch_loss, limit=LIMIT, seed=1)
    print(f"\n[dropin MNIST] test loss after 1 epoch on {LIMIT} images: "
          f"hand-written {baseline:.4f}, plain swap {plain:.4f}, fused sampler {one_launch:.4f}")
    assert 150 < baseline < 544  # one short epoch moves an untrained model (543 nats) down
    assert abs(plain - baseline) / baseline < 0.005, (plain, baseline)
    assert abs(one_launch - baseline) / baseline < 0.005, (one_launch, baseline)
