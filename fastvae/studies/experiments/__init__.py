"""The classic VAE experiments (Kingma & Welling 2014; Higgins et al. 2017), one command each
(``fastvae experiment NAME``).

Each writes PNG figures and a ``report.md`` embedding them with the numbers into its folder
(default ``runs/experiments/NAME``). See :data:`EXPERIMENTS`.
"""

from fastvae.studies.experiments.ae_vs_vae import ae_vs_vae
from fastvae.studies.experiments.animal_faces import animal_faces
from fastvae.studies.experiments.common import Options
from fastvae.studies.experiments.decoder_sampling import decoder_sampling
from fastvae.studies.experiments.single import (
    interpolation,
    latent_scatter,
    loss_curves,
    reconstructions,
)
from fastvae.studies.experiments.sweeps import beta_sweep, latent_sweep

# name -> (function, one-line description)
EXPERIMENTS = {
    "latent-sweep": (latent_sweep, "samples for latent sizes 2, 10, 25, 50 (beta 1)"),
    "beta-sweep": (beta_sweep, "decoded 2-D latent grids for beta 1, 5, 10, 40 (latent size 2)"),
    "reconstructions": (reconstructions, "test images above their reconstructions"),
    "interpolation": (interpolation, "decoded lines between posterior means of test-image pairs"),
    "latent-scatter": (latent_scatter, "posterior means coloured by label (PCA above 2-D)"),
    "loss-curves": (loss_curves, "train/test negative ELBO, reconstruction and KL per epoch"),
    "ae-vs-vae": (ae_vs_vae, "plain autoencoder against the VAE: reconstruction vs generation"),
    "decoder-sampling": (decoder_sampling, "Gaussian decoder (dropout, weight decay): decoder "
                         "mean vs x ~ p(x|z); MLP vs conv"),
    "animal-faces": (animal_faces, "Animal Faces per class (cats, wild, all): curves, "
                     "reconstructions, samples"),
}

__all__ = ["EXPERIMENTS", "Options", "ae_vs_vae", "animal_faces", "beta_sweep",
           "decoder_sampling", "interpolation", "latent_scatter",
           "latent_sweep", "loss_curves", "reconstructions"]
