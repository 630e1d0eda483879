"""pytorch/examples' MNIST VAE with fastvae's fused sampler: z and the KL from one launch.

``fastvae.GaussianSampler`` replaces the model's reparameterize method; forward hands the KL on
with its usual ``(recon, mu, logvar)`` and the loss adds it instead of recomputing it from mu
and logvar. On CUDA the sample, the KL and both their gradients take one Triton launch each way
(two with the plain swap of ``examples/dropin.py``). Seven lines are new or changed (marked
``# fastvae``); the nine lines they replace are kept in comments. The decoder keeps its sigmoid.

    FASTVAE_DATA=/path/to/data python examples/dropin_fused.py --epochs 1 [--limit 2048]
"""

import argparse

import torch
import torch.nn.functional as F
from dropin import train_and_test
from torch import nn

import fastvae  # fastvae


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)
        self.sample = fastvae.GaussianSampler(reduction="sum")  # fastvae

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    # def reparameterize(self, mu, logvar):
    #     std = torch.exp(0.5 * logvar)
    #     eps = torch.randn_like(std)
    #     return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        # z = self.reparameterize(mu, logvar)
        # return self.decode(z), mu, logvar
        z, kl = self.sample(mu, logvar)  # fastvae
        return self.decode(z), mu, logvar, kl  # fastvae


def loss_function(recon_x, x, mu, logvar, kl):  # fastvae
    # BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    # KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    # return BCE + KLD
    return fastvae.reconstruction_loss(recon_x, x.view(-1, 784), "bernoulli_probs", reduction="sum") + kl  # fastvae  # noqa: E501 (one line: README.md counts the changed lines)


def batch_loss(model, x):
    recon_batch, mu, logvar, kl = model(x)  # fastvae
    return loss_function(recon_batch, x, mu, logvar, kl)


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
