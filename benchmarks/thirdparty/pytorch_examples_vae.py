"""pytorch/examples ``vae/main.py``: its VAE, reparameterize and loss_function, and fastvae's
documented swaps of them.

Source: https://github.com/pytorch/examples/blob/77f55b912142e11fcfdf5b530231fb9c52f181e8/vae/main.py
(BSD 3-Clause License, reproduced below). Changes to the original, for the benchmark: the input
size, latent size and hidden width are constructor arguments (the original's 784, 20 and 400;
at 3x64x64 and 3x128x128 the MLP's input is the flattened image), ``x.view(-1, 784)`` in the
loss is ``x.view(-1, recon_x.shape[1])``, and the script around the model (data loading, the
training and test loops, logging, saved images) is left out: :mod:`benchmarks.dropin` writes
the training step (its ``train``'s zero_grad, forward, loss, backward, Adam step, without the
per-step ``loss.item()``). The swaps are fastvae's, as the README documents them:

- ``elbo_loss_probs``: the plain swap of ``examples/dropin.py``: ``fastvae.reparameterize``
  and ``fastvae.elbo_loss(..., likelihood="bernoulli_probs", reduction="sum")``, the decoder
  keeps its sigmoid;
- ``elbo_loss``: the same with the decoder's sigmoid folded into the loss
  (``likelihood="bernoulli"`` on logits), as the README advises;
- ``fused``: ``fastvae.GaussianSampler`` in place of reparameterize (z and the KL from one
  launch), forward returns the KL beside ``(recon, mu, logvar)``, the loss adds it to
  ``fastvae.reconstruction_loss`` (logits, as ``elbo_loss``).

``backend`` (None: fastvae's default) is passed to every fastvae call, so a variant's model
carries its backend (the CPU checks run the PyTorch path and the Triton kernels).

BSD 3-Clause License

Copyright (c) 2017, Pytorch contributors
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

* Redistributions of source code must retain the above copyright notice, this
  list of conditions and the following disclaimer.

* Redistributions in binary form must reproduce the above copyright notice,
  this list of conditions and the following disclaimer in the documentation
  and/or other materials provided with the distribution.

* Neither the name of the copyright holder nor the names of its
  contributors may be used to endorse or promote products derived from
  this software without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import fastvae
from benchmarks.thirdparty import Variant

LR = 1e-3  # optim.Adam(model.parameters(), lr=1e-3)
LATENT_LAYERS = ("fc21", "fc22", "fc3")


# ------------------------------------------------------------------ the original


class VAE(nn.Module):
    def __init__(self, d=784, latent=20, hidden=400, backend=None):
        super(VAE, self).__init__()
        self.d, self.backend = d, backend

        self.fc1 = nn.Linear(d, hidden)
        self.fc21 = nn.Linear(hidden, latent)
        self.fc22 = nn.Linear(hidden, latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, d)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5*logvar)
        eps = torch.randn_like(std)
        return mu + eps*std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, self.d))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


# Reconstruction + KL divergence losses summed over all elements and batch
def loss_function(recon_x, x, mu, logvar):
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, recon_x.shape[1]), reduction='sum')

    # see Appendix B from VAE paper:
    # Kingma and Welling. Auto-Encoding Variational Bayes. ICLR, 2014
    # https://arxiv.org/abs/1312.6114
    # 0.5 * sum(1 + log(sigma^2) - mu^2 - sigma^2)
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    return BCE + KLD


# ------------------------------------------------------------------ fastvae's swaps


class SwapVAE(VAE):
    def reparameterize(self, mu, logvar):
        return fastvae.reparameterize(mu, logvar, backend=self.backend)


class LogitsVAE(SwapVAE):
    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return self.fc4(h3)  # the sigmoid is in the loss


class FusedVAE(LogitsVAE):
    def __init__(self, d=784, latent=20, hidden=400, backend=None):
        super().__init__(d, latent, hidden, backend)
        self.sample = fastvae.GaussianSampler(reduction="sum", backend=backend)

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, self.d))
        z, kl = self.sample(mu, logvar)
        return self.decode(z), mu, logvar, kl


def loss_probs(recon_x, x, mu, logvar, backend=None):
    return fastvae.elbo_loss(recon_x, x.view(-1, recon_x.shape[1]), mu, logvar,
                             likelihood="bernoulli_probs", reduction="sum", backend=backend).loss


def loss_logits(recon_x, x, mu, logvar, backend=None):
    return fastvae.elbo_loss(recon_x, x.view(-1, recon_x.shape[1]), mu, logvar,
                             likelihood="bernoulli", reduction="sum", backend=backend).loss


def loss_fused(recon_x, x, mu, logvar, kl, backend=None):
    rec = fastvae.reconstruction_loss(recon_x, x.view(-1, recon_x.shape[1]), "bernoulli",
                                      reduction="sum", backend=backend)
    return rec + kl


# ------------------------------------------------------------------ steps and heads


def batch_loss_original(model, x):
    recon_batch, mu, logvar = model(x)
    return loss_function(recon_batch, x, mu, logvar)


def batch_loss_probs(model, x):
    recon_batch, mu, logvar = model(x)
    return loss_probs(recon_batch, x, mu, logvar, model.backend)


def batch_loss_logits(model, x):
    recon_batch, mu, logvar = model(x)
    return loss_logits(recon_batch, x, mu, logvar, model.backend)


def batch_loss_fused(model, x):
    recon_batch, mu, logvar, kl = model(x)
    return loss_fused(recon_batch, x, mu, logvar, kl, model.backend)


def head_original(model, mu, logvar, out, x):
    return model.reparameterize(mu, logvar), loss_function(torch.sigmoid(out), x, mu, logvar)


def head_probs(model, mu, logvar, out, x):
    z = model.reparameterize(mu, logvar)
    return z, loss_probs(torch.sigmoid(out), x, mu, logvar, model.backend)


def head_logits(model, mu, logvar, out, x):
    return model.reparameterize(mu, logvar), loss_logits(out, x, mu, logvar, model.backend)


def head_fused(model, mu, logvar, out, x):
    z, kl = model.sample(mu, logvar)
    return z, loss_fused(out, x, mu, logvar, kl, model.backend)


VARIANTS = {
    "original": Variant(VAE, batch_loss_original, head_original),
    "elbo_loss": Variant(LogitsVAE, batch_loss_logits, head_logits),
    "elbo_loss_probs": Variant(SwapVAE, batch_loss_probs, head_probs),
    "fused": Variant(FusedVAE, batch_loss_fused, head_fused),
}


def twin_image(channels, side):
    """A twin's image: 1 x 2 x 2 (an MLP runs the same ops for any input size)."""
    return 1, 2


def build(variant, channels, side, latent, *, twin=False, backend=None):
    """The variant's MLP VAE for flattened ``channels x side x side`` images (hidden width 400;
    8 for a twin)."""
    return VARIANTS[variant].model(channels * side * side, latent, 8 if twin else 400, backend)
