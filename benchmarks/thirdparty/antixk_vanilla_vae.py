"""AntixK PyTorch-VAE ``models/vanilla_vae.py``: ``VanillaVAE`` (encoder and decoder conv
stacks, reparameterize, loss_function with ``kld_weight``), and fastvae's documented swaps.

Source: https://github.com/AntixK/PyTorch-VAE/blob/a6896b944c918dd7030e7d795a8c13e5c6345ec7/models/vanilla_vae.py
Copyright Anand Krishnamoorthy Subramanian 2020. Licensed under the Apache License, Version
2.0 (the "License"); you may not use this file except in compliance with the License. You may
obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0. Unless required
by applicable law or agreed to in writing, software distributed under the License is
distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express
or implied. See the License for the specific language governing permissions and limitations
under the License.

Changed from the original (for the benchmark's sizes): the base class is ``nn.Module`` (the
original's ``BaseVAE`` only declares the methods); the image side is an argument
(``image_size``, the original's 64), so the flattened encoder output is ``hidden_dims[-1] *
s * s`` with ``s = image_size / 2 ** len(hidden_dims)`` (the original's ``hidden_dims[-1] *
4``, ``view(-1, 512, 2, 2)``) and the final conv outputs the input's channels (the
original's 3); ``sample`` and ``generate`` are left out. Training settings from its
``configs/vae.yaml`` and ``experiment.py``: Adam, LR 0.005, weight decay 0, kld_weight
(``M_N``) 0.00025; the experiment's per-step logging (``.item()`` of each loss) is left out.
The swaps are fastvae's, as its README documents them:

- ``elbo_loss``: ``fastvae.reparameterize`` and ``fastvae.elbo_loss(recons, input, mu,
  log_var, beta=kld_weight, likelihood="mse", reduction="mean", kl_reduction="batchmean")``;
- ``fused``: ``fastvae.GaussianSampler(reduction="batchmean")`` in place of reparameterize,
  forward returns the KL with its outputs, the loss is ``fastvae.reconstruction_loss(recons,
  input, "mse", reduction="mean") + kld_weight * kl``.

``backend`` (None: fastvae's default) is passed to every fastvae call.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import fastvae
from benchmarks.thirdparty import Variant

LR = 0.005
KLD_WEIGHT = 0.00025
LATENT_LAYERS = ("fc_mu", "fc_var", "decoder_input")


# ------------------------------------------------------------------ the original


class VanillaVAE(nn.Module):


    def __init__(self,
                 in_channels: int,
                 latent_dim: int,
                 hidden_dims: List = None,
                 image_size: int = 64,
                 backend: str = None,
                 **kwargs) -> None:
        super(VanillaVAE, self).__init__()

        self.latent_dim = latent_dim
        self.backend = backend
        out_channels = in_channels

        modules = []
        if hidden_dims is None:
            hidden_dims = [32, 64, 128, 256, 512]
        self.side = image_size // 2 ** len(hidden_dims)
        self.last_dim = hidden_dims[-1]

        # Build Encoder
        for h_dim in hidden_dims:
            modules.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, out_channels=h_dim,
                              kernel_size= 3, stride= 2, padding  = 1),
                    nn.BatchNorm2d(h_dim),
                    nn.LeakyReLU())
            )
            in_channels = h_dim

        self.encoder = nn.Sequential(*modules)
        self.fc_mu = nn.Linear(hidden_dims[-1]*self.side**2, latent_dim)
        self.fc_var = nn.Linear(hidden_dims[-1]*self.side**2, latent_dim)


        # Build Decoder
        modules = []

        self.decoder_input = nn.Linear(latent_dim, hidden_dims[-1] * self.side**2)

        hidden_dims.reverse()

        for i in range(len(hidden_dims) - 1):
            modules.append(
                nn.Sequential(
                    nn.ConvTranspose2d(hidden_dims[i],
                                       hidden_dims[i + 1],
                                       kernel_size=3,
                                       stride = 2,
                                       padding=1,
                                       output_padding=1),
                    nn.BatchNorm2d(hidden_dims[i + 1]),
                    nn.LeakyReLU())
            )



        self.decoder = nn.Sequential(*modules)

        self.final_layer = nn.Sequential(
                            nn.ConvTranspose2d(hidden_dims[-1],
                                               hidden_dims[-1],
                                               kernel_size=3,
                                               stride=2,
                                               padding=1,
                                               output_padding=1),
                            nn.BatchNorm2d(hidden_dims[-1]),
                            nn.LeakyReLU(),
                            nn.Conv2d(hidden_dims[-1], out_channels= out_channels,
                                      kernel_size= 3, padding= 1),
                            nn.Tanh())

    def encode(self, input: Tensor) -> List[Tensor]:
        result = self.encoder(input)
        result = torch.flatten(result, start_dim=1)

        # Split the result into mu and var components
        # of the latent Gaussian distribution
        mu = self.fc_mu(result)
        log_var = self.fc_var(result)

        return [mu, log_var]

    def decode(self, z: Tensor) -> Tensor:
        result = self.decoder_input(z)
        result = result.view(-1, self.last_dim, self.side, self.side)
        result = self.decoder(result)
        result = self.final_layer(result)
        return result

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return eps * std + mu

    def forward(self, input: Tensor, **kwargs) -> List[Tensor]:
        mu, log_var = self.encode(input)
        z = self.reparameterize(mu, log_var)
        return  [self.decode(z), input, mu, log_var]

    def loss_function(self,
                      *args,
                      **kwargs) -> dict:
        recons = args[0]
        input = args[1]
        mu = args[2]
        log_var = args[3]

        kld_weight = kwargs['M_N'] # Account for the minibatch samples from the dataset
        recons_loss =F.mse_loss(recons, input)


        kld_loss = torch.mean(-0.5 * torch.sum(1 + log_var - mu ** 2 - log_var.exp(), dim = 1), dim = 0)  # noqa: E501

        loss = recons_loss + kld_weight * kld_loss
        return {'loss': loss, 'Reconstruction_Loss':recons_loss.detach(), 'KLD':-kld_loss.detach()}


# ------------------------------------------------------------------ fastvae's swaps


class SwapVanillaVAE(VanillaVAE):
    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        return fastvae.reparameterize(mu, logvar, backend=self.backend)

    def loss_function(self, *args, **kwargs) -> dict:
        recons, input, mu, log_var = args[:4]
        out = fastvae.elbo_loss(recons, input, mu, log_var, beta=kwargs['M_N'], likelihood="mse",
                                reduction="mean", kl_reduction="batchmean", backend=self.backend)
        return {'loss': out.loss, 'Reconstruction_Loss': out.recon.detach(),
                'KLD': -out.kl.detach()}


class FusedVanillaVAE(VanillaVAE):
    def __init__(self, in_channels, latent_dim, hidden_dims=None, image_size=64, backend=None):
        super().__init__(in_channels, latent_dim, hidden_dims, image_size, backend)
        self.sample = fastvae.GaussianSampler(reduction="batchmean", backend=backend)

    def forward(self, input: Tensor, **kwargs) -> List[Tensor]:
        mu, log_var = self.encode(input)
        z, kl = self.sample(mu, log_var)
        return [self.decode(z), input, mu, log_var, kl]

    def loss_function(self, *args, **kwargs) -> dict:
        recons, input, mu, log_var, kl = args[:5]
        recons_loss = fastvae.reconstruction_loss(recons, input, "mse", reduction="mean",
                                                  backend=self.backend)
        loss = recons_loss + kwargs['M_N'] * kl
        return {'loss': loss, 'Reconstruction_Loss': recons_loss.detach(), 'KLD': -kl.detach()}


# ------------------------------------------------------------------ steps and heads


def batch_loss(model, x):
    """experiment.py's training_step: forward, then loss_function with M_N = kld_weight."""
    return model.loss_function(*model(x), M_N=KLD_WEIGHT)['loss']


def head(model, mu, log_var, out, x):
    z = model.reparameterize(mu, log_var)
    return z, model.loss_function(out, x, mu, log_var, M_N=KLD_WEIGHT)['loss']


def head_fused(model, mu, log_var, out, x):
    z, kl = model.sample(mu, log_var)
    return z, model.loss_function(out, x, mu, log_var, kl, M_N=KLD_WEIGHT)['loss']


VARIANTS = {
    "original": Variant(VanillaVAE, batch_loss, head),
    "elbo_loss": Variant(SwapVanillaVAE, batch_loss, head),
    "fused": Variant(FusedVanillaVAE, batch_loss, head_fused),
}


def hidden_dims(side, twin=False):
    """The conv widths: the original's default five (64 -> 2, 128 -> 4 pixels a side), two for
    28 x 28 (28 -> 7: five stride-2 convs do not come back to 28); 2 channels each for a twin."""
    dims = [32, 64] if side % 32 else [32, 64, 128, 256, 512]
    return [2] * len(dims) if twin else dims


def twin_image(channels, side):
    """A twin's image: one channel, the smallest side its conv stack takes (4 for two
    stride-2 convs, 32 for five)."""
    return 1, 4 if side % 32 else 32


def build(variant, channels, side, latent, *, twin=False, backend=None):
    """The variant's VanillaVAE for ``channels x side x side`` images (``twin``: 2 channels
    per conv layer, ``side`` must then be ``2 ** len(hidden_dims)`` or a multiple)."""
    return VARIANTS[variant].model(channels, latent, hidden_dims(side, twin), side, backend)
