"""fastvae: fused Triton kernels for variational autoencoders, and a VAE package around them."""

import importlib.util
import sys
from pathlib import Path


def _load_checkout_kernels():
    """pyproject.toml installs the repository's kernels/ folder as fastvae.kernels; in a source
    checkout used without installing (PYTHONPATH=.), load it from beside this package."""
    init = Path(__file__).resolve().parent.parent / "kernels" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "fastvae.kernels", init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastvae.kernels"] = module
    spec.loader.exec_module(module)
    return module


if importlib.util.find_spec("fastvae.kernels") is not None:  # installed (pyproject.toml maps it)
    from fastvae import kernels
else:  # a source checkout on PYTHONPATH: `from fastvae import kernels` would raise ImportError
    kernels = _load_checkout_kernels()

from fastvae import reference  # noqa: E402
from fastvae.functional import (  # noqa: E402
    ELBO,
    SampleKL,
    elbo_loss,
    gaussian_kl,
    reconstruction_loss,
    reparameterize,
    sample_and_kl,
)
from fastvae.models import MLPVAE, VAE, ConvVAE  # noqa: E402
from fastvae.modules import ELBOLoss, GaussianKL, GaussianSampler, ReconstructionLoss  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ConvVAE",
    "ELBO",
    "ELBOLoss",
    "GaussianKL",
    "GaussianSampler",
    "MLPVAE",
    "ReconstructionLoss",
    "SampleKL",
    "VAE",
    "elbo_loss",
    "gaussian_kl",
    "reconstruction_loss",
    "reference",
    "reparameterize",
    "sample_and_kl",
]
