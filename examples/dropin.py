"""pytorch/examples' MNIST VAE (vae/main.py) with fastvae dropped in: the plain swap.

The model keeps its sigmoid decoder, its ``forward -> (recon, mu, logvar)`` and its separate
``loss_function``. Three lines are new or changed (marked ``# fastvae``: the import and two
bodies); the six lines they replace are kept beside them in comments. The loss is the same
number as the original's (summed ``F.binary_cross_entropy`` on probabilities plus the summed
KL), to float rounding. On CUDA the two calls run as Triton kernels; on the CPU as the PyTorch
path, as fast as the lines they replace within measurement noise (``python -m
benchmarks.cpu_head``).
``examples/dropin_fused.py`` goes one step further: the sample and the KL from one launch.

    FASTVAE_DATA=/path/to/data python examples/dropin.py --epochs 1 [--limit 2048]
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

import fastvae  # fastvae
from fastvae.data import load_mnist


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        # std = torch.exp(0.5 * logvar)
        # eps = torch.randn_like(std)
        # return mu + eps * std
        return fastvae.reparameterize(mu, logvar)  # fastvae

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    # BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    # KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    # return BCE + KLD
    return fastvae.elbo_loss(recon_x, x.view(-1, 784), mu, logvar, likelihood="bernoulli_probs", reduction="sum").loss  # fastvae  # noqa: E501 (one line: README.md quotes it and counts the changed lines)


def batch_loss(model, x):
    recon_batch, mu, logvar = model(x)
    return loss_function(recon_batch, x, mu, logvar)


def train_and_test(make_model, batch_loss, *, epochs=1, batch_size=128, limit=None, seed=1,
                   device="cpu"):
    """pytorch/examples' train and test loops (Adam, lr 1e-3, shuffled batches, a sample drawn
    in test too) for the model ``make_model()`` builds after seeding; returns the last
    epoch's test loss per image. ``limit`` keeps the first ``limit`` training and test images
    (a quick run)."""
    torch.manual_seed(seed)
    model = make_model().to(device)
    splits = [load_mnist(train, limit=limit) for train in (True, False)]
    train, test = (TensorDataset(s.images.float().div(255).unsqueeze(1), s.labels) for s in splits)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True)
    test_loader = DataLoader(test, batch_size=batch_size)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(1, epochs + 1):
        model.train()
        for data, _ in train_loader:
            optimizer.zero_grad()
            loss = batch_loss(model, data.to(device))
            loss.backward()
            optimizer.step()
        model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for data, _ in test_loader:
                test_loss += batch_loss(model, data.to(device)).item()
        test_loss /= len(test_loader.dataset)
        print(f"epoch {epoch}: test loss {test_loss:.4f} nats per image")
    return test_loss


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None,
                        help="use the first N images of each split")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train_and_test(VAE, batch_loss, epochs=args.epochs, batch_size=args.batch_size,
                   limit=args.limit, device=device)
