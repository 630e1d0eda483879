"""Frechet distance between image sets through ``torchmetrics``, with a pluggable feature network.

FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", NeurIPS 2017) fits a Gaussian to the features of each image set and reports

    ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

(the squared 2-Wasserstein distance between the two Gaussians). The statistics and the matrix
square root are ``torchmetrics.image.fid.FrechetInceptionDistance``'s; this module only chooses
the feature network:

- ``"inception"``: the standard Inception-v3 pool features (2048-d) of torch-fidelity, loaded
  from a LOCAL weights file (torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``);
  nothing is downloaded. Needs the ``torch-fidelity`` package (``pip install fastvae[inception]``).
  Only these numbers are comparable with published FIDs.
- ``"mnist-classifier"``: the 128-d penultimate layer of :class:`MNISTClassifier`, a small CNN
  the project trains on MNIST (:func:`train_mnist_classifier`, cached at
  :func:`default_classifier_path`). Its FIDs are comparable with each other only.
- any ``nn.Module`` mapping float images in [0, 1] to ``(N, F)`` features.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from fastvae import _checks

FEATURES = ("mnist-classifier", "inception")
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


def cache_dir() -> Path:
    """``$FASTVAE_CACHE`` if set, else ``~/.cache/fastvae``."""
    return Path(os.environ.get("FASTVAE_CACHE") or Path.home() / ".cache" / "fastvae")


def default_classifier_path() -> Path:
    """Where the MNIST feature classifier is cached: ``cache_dir() / "mnist_classifier.pt"``."""
    return cache_dir() / "mnist_classifier.pt"


class MNISTClassifier(nn.Module):
    """A small MNIST CNN: two conv-ReLU-maxpool blocks (32, 64 channels), Linear(3136, 128) + ReLU
    (the FID features), Linear(128, 10) (logits). Input ``(N, 1, 28, 28)`` in [0, 1]."""

    num_features = 128

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, self.num_features), nn.ReLU(),
        )
        self.out = nn.Linear(self.num_features, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 128)`` penultimate activations."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 10)`` class logits."""
        return self.out(self.body(x))


class ClassifierFeatures(nn.Module):
    """Feature network for torchmetrics' FID: ``(N, 1, 28, 28)`` images in [0, 1] -> the
    classifier's ``(N, 128)`` features, in float64 (eval mode, no gradient)."""

    def __init__(self, classifier: MNISTClassifier):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.num_features

    def train(self, mode: bool = True) -> "ClassifierFeatures":
        return super().train(False)  # a fixed feature map, always in eval mode

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28):
            raise ValueError(
                f"the MNIST classifier's features need images of shape (N, 1, 28, 28), got "
                f"{tuple(images.shape)}"
            )
        return self.classifier.features(images.float()).double()


@torch.no_grad()
def classifier_accuracy(model: MNISTClassifier, images: torch.Tensor,
                        labels: torch.Tensor) -> float:
    """Fraction of ``(N, 1, 28, 28)`` float images whose argmax logit equals the label."""
    model.eval()
    hits = sum(
        int((model(images[i:i + 1000]).argmax(1) == labels[i:i + 1000]).sum())
        for i in range(0, images.shape[0], 1000)
    )
    return hits / images.shape[0]


def train_mnist_classifier(
    epochs: int = 3,
    *,
    out: str | os.PathLike | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[MNISTClassifier, float]:
    """Train :class:`MNISTClassifier` on continuous MNIST (Adam, cross-entropy) and save it.

    Returns ``(model, test_accuracy)``; writes ``{"state_dict", "test_accuracy", "epochs",
    "limit_train"}`` to ``out`` (default :func:`default_classifier_path`) atomically.

    Raises:
        fastvae.data.DataNotFoundError: MNIST is missing.
    """
    from fastvae.data import ImageBatches, load_mnist
    from fastvae.train.checkpoint import save_checkpoint

    _checks.positive_int("epochs", epochs)
    torch.manual_seed(seed)
    train = load_mnist(True, limit=limit_train, device=device)
    test = load_mnist(False, limit=limit_test, device=device)
    model = MNISTClassifier().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = ImageBatches(*train, batch_size, shuffle=True, seed=seed)
    for epoch in range(1, epochs + 1):
        model.train()
        for x, y in tqdm(batches, desc=f"classifier epoch {epoch}/{epochs}", leave=False,
                         disable=None):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    acc = classifier_accuracy(model, test.images.unsqueeze(1).float() / 255, test.labels)
    path = Path(out) if out is not None else default_classifier_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        {"state_dict": model.state_dict(), "test_accuracy": acc, "epochs": epochs,
         "limit_train": limit_train},
        path,
    )
    return model.eval(), acc


def load_mnist_classifier(
    path: str | os.PathLike | None = None, *, train_if_missing: bool = True,
    device: str | torch.device = "cpu",
) -> MNISTClassifier:
    """The cached classifier at ``path`` (default :func:`default_classifier_path`); if absent,
    train it with :func:`train_mnist_classifier` defaults (about a minute on a CPU) unless
    ``train_if_missing`` is False, in which case FileNotFoundError says how to make it."""
    path = Path(path) if path is not None else default_classifier_path()
    if not path.is_file():
        if not train_if_missing:
            raise FileNotFoundError(
                f"no MNIST feature classifier at {path}; train it with "
                f"`fastvae train-classifier --out {path}`"
            )
        print(f"training the MNIST feature classifier (cached at {path}) ...", flush=True)
        model, acc = train_mnist_classifier(out=path, device=device)
        print(f"MNIST feature classifier: test accuracy {acc:.4f}", flush=True)
        return model
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = MNISTClassifier().to(device)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def inception_metric(weights_path: str | os.PathLike | None):
    """torchmetrics' FID with torch-fidelity's Inception-v3 (2048-d pool features) loaded
    from ``weights_path``; inputs are float images in [0, 1] with 3 channels.

    Raises:
        FileNotFoundError: no weights path given, or no file there (no download is attempted).
        ModuleNotFoundError: torch-fidelity is not installed.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if weights_path is None or not Path(weights_path).is_file():
        where = "no path was given" if weights_path is None else f"{weights_path} does not exist"
        raise FileNotFoundError(
            f"Inception FID needs the Inception-v3 weights as a local file ({where}). Pass the "
            f"path of torch-fidelity's {INCEPTION_WEIGHTS_FILE} (from torch-fidelity's GitHub "
            f"release v0.2.0) as --inception-weights; fastvae never downloads it. Without it, "
            f"Inception FID is not measured."
        )
    if not _TORCH_FIDELITY_AVAILABLE:
        raise ModuleNotFoundError(
            "Inception FID needs the torch-fidelity package: pip install 'fastvae[inception]'"
        )
    return FrechetInceptionDistance(
        feature=2048, normalize=True, feature_extractor_weights_path=str(weights_path)
    )


def fid_metric(
    feature: str | nn.Module,
    *,
    inception_weights: str | os.PathLike | None = None,
    classifier_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
):
    """A ``torchmetrics`` ``FrechetInceptionDistance`` on ``device`` with the feature network
    ``feature``: "mnist-classifier", "inception" (needs ``inception_weights``), or an
    ``nn.Module`` taking float images in [0, 1] (with an int ``num_features`` attribute, or
    torchmetrics runs it once to find the size)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if isinstance(feature, nn.Module):
        metric = FrechetInceptionDistance(feature=feature)
    elif feature == "inception":
        metric = inception_metric(inception_weights)
    else:
        _checks.choice("feature", feature, FEATURES)
        net = ClassifierFeatures(load_mnist_classifier(classifier_path, device=device))
        metric = FrechetInceptionDistance(feature=net)
    return metric.to(device)


@torch.no_grad()
def frechet_distance(
    real: Iterable[torch.Tensor], fake: Iterable[torch.Tensor], metric,
) -> float:
    """FID between two image sets given as iterables of float ``(N, C, H, W)`` batches in [0, 1].

    ``metric`` comes from :func:`fid_metric` (it is reset first). Images are passed to the
    feature network as they are (clamp model outputs such as "mse" means to [0, 1] first);
    one-channel images are repeated to three channels for the Inception network. Needs >= 2
    images per set.
    """
    from torchmetrics.image.fid import NoTrainInceptionV3

    metric.reset()
    rgb = isinstance(metric.inception, NoTrainInceptionV3)
    for is_real, batches in ((True, real), (False, fake)):
        for x in batches:
            if rgb and x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            metric.update(x, real=is_real)
    return float(metric.compute())
