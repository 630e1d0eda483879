"""fastvae: fused Triton kernels for variational autoencoders, and a VAE package around them."""

import importlib.util
import sys
from pathlib import Path

# setup.py installs the repository's kernels/ folder as fastvae.kernels. In a source checkout
# used without installing (PYTHONPATH=.), load it from beside this package instead.
if not (Path(__file__).parent / "kernels").is_dir() and "fastvae.kernels" not in sys.modules:
    _src = Path(__file__).resolve().parent.parent / "kernels" / "__init__.py"
    if _src.is_file():
        _spec = importlib.util.spec_from_file_location(
            "fastvae.kernels", _src, submodule_search_locations=[str(_src.parent)]
        )
        _module = importlib.util.module_from_spec(_spec)
        sys.modules["fastvae.kernels"] = _module
        _spec.loader.exec_module(_module)

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
from fastvae.modules import ELBOLoss, GaussianKL, ReconstructionLoss  # noqa: E402
from fastvae.models import MLPVAE  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ELBO",
    "ELBOLoss",
    "GaussianKL",
    "MLPVAE",
    "ReconstructionLoss",
    "SampleKL",
    "elbo_loss",
    "gaussian_kl",
    "reconstruction_loss",
    "reference",
    "reparameterize",
    "sample_and_kl",
]
