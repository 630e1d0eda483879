from pathlib import Path

from setuptools import setup

setup(
    name="fastvae",
    version="0.1.0",
    description="Fused Triton kernels for variational autoencoders: reparameterization, KL and "
    "reconstruction loss in single GPU passes, plus VAE models, training and experiments.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    # kernels/ installs as fastvae.kernels: a top-level `kernels` module would clash with the
    # unrelated `kernels` project on PyPI.
    packages=["fastvae", "fastvae.experiments", "fastvae.kernels"],
    package_dir={"fastvae": "fastvae", "fastvae.kernels": "kernels"},
    install_requires=[
        "torch>=2.6",
        "triton>=3.2",
        "torchvision>=0.21",
        "numpy",
        "tqdm",
        "matplotlib",
        "torchmetrics>=1.0",
    ],
    extras_require={
        "dev": ["pytest", "pytest-benchmark", "hypothesis"],
        # Inception-v3 features for FID (weights read from a local file, never downloaded).
        "inception": ["torch-fidelity"],
    },
    entry_points={"console_scripts": ["fastvae = fastvae.cli:main"]},
)
