"""End to end: train the 784-400-20 MNIST VAE, a plain PyTorch loop against the engine that
``fastvae train`` runs.

Both train the same architecture (784-400-20 with ReLU, Bernoulli decoder on logits) on
continuous MNIST with Adam (lr 1e-3), batch 128, the batch mean of the per-image negative
ELBO as the objective, for the same number of epochs, every batch including the last partial
one.

- baseline: the canonical loop of pytorch/examples ``vae/main.py``: torchvision's MNIST
  dataset with ``ToTensor``, a ``DataLoader`` (shuffled; one worker and pinned memory on
  CUDA, as that example), an ``nn.Module`` with ``fc1/fc21/fc22/fc3/fc4``, the eager loss
  (``randn_like`` reparameterization, ``F.binary_cross_entropy_with_logits`` and the KL
  expression), ``torch.optim.Adam`` with its default implementation.
- fastvae: :class:`fastvae.train.Engine`, built as ``fastvae train`` builds it
  (:mod:`fastvae.train.build`: :class:`fastvae.MLPVAE` with the fused ops, fused Adam,
  capturable on CUDA; the data set resident on the device as uint8 and shuffled there,
  :class:`fastvae.data.ShardedImageBatches`), and on CUDA every step replayed from a CUDA
  graph (one per batch size: the full batch and the last partial one).

Time: wall clock of the training epochs only, with the device synchronized at both ends,
after a warm-up on throwaway models (CUDA libraries initialized, kernels compiled); the
engine's own graph captures (two, in its first epoch) are inside the timed span, as is its
one host sync per epoch. Test loss: the same estimator for both models (:func:`test_nelbo`).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from fastvae.data import ShardedImageBatches, data_root, load_mnist
from fastvae.train import Engine, TrainConfig, build

BATCH, LR, LATENT, HIDDEN = 128, 1e-3, 20, 400
EVAL_SEED = 1234


class BaselineVAE(nn.Module):
    """The VAE of pytorch/examples ``vae/main.py``, its decoder returning logits."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, HIDDEN)
        self.fc21 = nn.Linear(HIDDEN, LATENT)
        self.fc22 = nn.Linear(HIDDEN, LATENT)
        self.fc3 = nn.Linear(LATENT, HIDDEN)
        self.fc4 = nn.Linear(HIDDEN, 784)

    def encode(self, x):
        h = F.relu(self.fc1(x))
        return self.fc21(h), self.fc22(h)

    def decode(self, z):
        return self.fc4(F.relu(self.fc3(z)))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        std = torch.exp(0.5 * logvar)
        z = mu + torch.randn_like(std) * std
        return self.decode(z), mu, logvar


def baseline_loss(logits, x, mu, logvar):
    """Batch mean of the per-image negative ELBO (nats), written the usual way."""
    bce = F.binary_cross_entropy_with_logits(logits, x.view(-1, 784), reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return (bce + kl) / x.shape[0]


@torch.no_grad()
def test_nelbo(encode, decode, images: torch.Tensor, seed: int = EVAL_SEED,
               batch: int = 1000) -> float:
    """Single-sample negative ELBO on uint8 ``images`` ``(N, 28, 28)``, nats per image.

    Pixels are intensity / 255; z = mu + eps * exp(0.5 * logvar) with eps from a generator
    seeded with ``seed``; the loss is BCE with logits (summed) plus the closed-form KL. The same
    code and noise for every model, so two models' numbers are comparable.
    """
    gen = torch.Generator(device=images.device).manual_seed(seed)
    total = torch.zeros((), dtype=torch.float64, device=images.device)
    for lo in range(0, images.shape[0], batch):
        x = images[lo : lo + batch].reshape(-1, 784).to(torch.float32) / 255.0
        mu, logvar = encode(x)
        eps = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
        logits = decode(mu + eps * torch.exp(0.5 * logvar)).reshape(x.shape)
        total += (baseline_loss(logits, x, mu, logvar) * x.shape[0]).to(torch.float64)
    return total.item() / images.shape[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_baseline(epochs: int, device: torch.device, *, limit_train=None, limit_test=None,
                 seed: int = 0, warmup_steps: int = 5) -> dict:
    """Train the baseline; returns seconds (training epochs only) and the test loss."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    root = str(data_root())
    train = datasets.MNIST(root, train=True, download=False, transform=transforms.ToTensor())
    if limit_train is not None:
        train = Subset(train, range(limit_train))
    cuda = device.type == "cuda"
    loader_kwargs = {"num_workers": 1, "pin_memory": True} if cuda else {}

    def step(model, optimizer, x):
        x = x.to(device)
        optimizer.zero_grad()
        logits, mu, logvar = model(x)
        baseline_loss(logits, x, mu, logvar).backward()
        optimizer.step()

    # Warm-up on a throwaway model: CUDA context, cuBLAS handles, the allocator's pools.
    torch.manual_seed(seed)
    scratch = BaselineVAE().to(device)
    scratch_opt = torch.optim.Adam(scratch.parameters(), lr=LR)
    for i, (x, _) in enumerate(DataLoader(train, batch_size=BATCH, shuffle=True, **loader_kwargs)):
        if i == warmup_steps:
            break
        step(scratch, scratch_opt, x)
    del scratch, scratch_opt

    torch.manual_seed(seed)
    model = BaselineVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, **loader_kwargs)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, _ in loader:
            step(model, optimizer, x)
    _sync(device)
    seconds = time.perf_counter() - t0
    model.eval()
    test = load_mnist(False, limit=limit_test, device=device).images
    return {"seconds": seconds, "test_loss": test_nelbo(model.encode, model.decode, test),
            "warmup_steps": warmup_steps}


def run_fastvae(epochs: int, device: torch.device, *, limit_train=None, limit_test=None,
                seed: int = 0, warmup_steps: int = 5) -> dict:
    """Train with :class:`fastvae.train.Engine` as ``fastvae train`` builds it; seconds (epochs
    only), test loss, and whether the steps were replayed from CUDA graphs."""
    cfg = TrainConfig(seed=seed, batch_size=BATCH, lr=LR, latent_dim=LATENT, hidden_dims=(HIDDEN,))
    split = load_mnist(True, limit=limit_train, device=device)

    def engine_on(images, labels):
        torch.manual_seed(seed)
        model = build.build_model(cfg, (1, 28, 28)).to(device)
        batches = ShardedImageBatches(images, labels, BATCH, seed=seed)
        return model, Engine(model, build.build_optimizer(cfg, model), seed=seed), batches

    # Warm-up on a throwaway model: full batches and a partial one (kernels compiled).
    n_warm = min(split.images.shape[0], warmup_steps * BATCH + BATCH // 2)
    _, scratch, warm = engine_on(split.images[:n_warm], split.labels[:n_warm])
    scratch.fit(warm, 1)
    model, engine, batches = engine_on(*split)
    _sync(device)
    t0 = time.perf_counter()
    engine.fit(batches, epochs)  # one host sync per epoch, as in fastvae train
    _sync(device)
    seconds = time.perf_counter() - t0
    model.eval()
    test = load_mnist(False, limit=limit_test, device=device).images
    return {"seconds": seconds, "test_loss": test_nelbo(model.encode, model.decode, test),
            "warmup_steps": warmup_steps, "cuda_graph": engine.graphs is not None}


def run(epochs: int, device: torch.device, **kwargs) -> dict:
    """Both loops; the result's ``speedup`` is baseline seconds / fastvae seconds."""
    base = run_baseline(epochs, device, **kwargs)
    fast = run_fastvae(epochs, device, **kwargs)
    return {
        "epochs": epochs,
        "batch_size": BATCH,
        "train_images": kwargs.get("limit_train") or 60000,
        "test_images": kwargs.get("limit_test") or 10000,
        "baseline": base,
        "fastvae": fast,
        "speedup": base["seconds"] / fast["seconds"],
        "test_loss_rel_diff": (fast["test_loss"] - base["test_loss"]) / base["test_loss"],
    }
