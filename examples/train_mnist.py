"""Train the canonical MNIST VAE (784-400-20, Bernoulli decoder) with fastvae's library API.

    FASTVAE_DATA=/path/to/data python examples/train_mnist.py --epochs 2

MNIST is read from $FASTVAE_DATA/MNIST/raw (default ./data). The command line does the same,
with a run folder, checkpoints and figures: `fastvae train`.
"""

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from fastvae import MLPVAE
from fastvae.data import mnist_batches

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--out", default="runs/examples/mnist_samples.png", help="PNG grid of 64 samples")
args = parser.parse_args()

torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() else "cpu"  # Triton kernels on CUDA
train = mnist_batches(True, batch_size=128, device=device)  # (x in [0, 1], y), shuffled
test = mnist_batches(False, batch_size=1000, device=device)
model = MLPVAE().to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

for epoch in range(1, args.epochs + 1):
    model.train()
    for x, _ in train:
        loss = model.loss(x).loss  # negative ELBO, nats per image (batch mean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        total = sum(model.loss(x, reduction="sum").loss.item() for x, _ in test)
    print(f"epoch {epoch}: test negative ELBO {total / test.num_images:.2f} nats per image")

Path(args.out).parent.mkdir(parents=True, exist_ok=True)
save_image(model.sample(64), args.out, nrow=8)
print(f"wrote {args.out}")
