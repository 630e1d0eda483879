"""A tutorial VAE (the shape of pytorch/examples' vae/main.py) with fastvae dropped in.

Only the lines marked ``# fastvae`` changed; the hand-written code they replace is kept beside
them in comments. On a CUDA device they run as fused Triton kernels (sampling and KL in one
launch, the reconstruction loss and its gradient in another); on the CPU they fall back to
fastvae's pure-PyTorch reference.

    FASTVAE_DATA=/path/to/data python examples/dropin.py --epochs 1
"""

import argparse
import os

import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import fastvae  # fastvae


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

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        # return torch.sigmoid(self.fc4(h3))
        return self.fc4(h3)  # fastvae: return logits; the loss applies a stable sigmoid itself

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        # std = torch.exp(0.5 * logvar)
        # eps = torch.randn_like(std)
        # z = mu + eps * std
        # kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        z, kl = fastvae.sample_and_kl(mu, logvar, reduction="sum")  # fastvae: one fused launch
        return self.decode(z), kl


def loss_function(recon_logits, x, kl):
    # bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    bce = fastvae.reconstruction_loss(recon_logits, x.view(-1, 784), "bernoulli", reduction="sum")  # fastvae
    return bce + kl


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = os.environ.get("FASTVAE_DATA", "data")
    to_tensor = transforms.ToTensor()
    train = DataLoader(datasets.MNIST(root, train=True, transform=to_tensor), batch_size=args.batch_size, shuffle=True)
    test = DataLoader(datasets.MNIST(root, train=False, transform=to_tensor), batch_size=1000)
    model = VAE().to(device)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(1, args.epochs + 1):
        model.train()
        for x, _ in train:
            x = x.to(device)
            optimizer.zero_grad()
            recon, kl = model(x)
            loss = loss_function(recon, x, kl)
            loss.backward()
            optimizer.step()
        model.eval()
        total = 0.0
        with torch.no_grad():
            for x, _ in test:
                x = x.to(device)
                recon, kl = model(x)
                total += loss_function(recon, x, kl).item()
        print(f"epoch {epoch}: test negative ELBO {total / len(test.dataset):.2f} nats per image")


if __name__ == "__main__":
    main()
