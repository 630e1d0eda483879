"""The data set and the model a training configuration names, and models rebuilt from checkpoints.

:func:`load_splits` and :func:`build_model` read the data/model fields of
:class:`fastvae.train.TrainConfig` (``dataset``, ``data_dir``, ``image_size``, ``classes``,
``model``, ``hidden_dims``, ``conv_channels``, ``latent_dim``, ``likelihood``, ``backend``,
``grayscale``, ``autoencoder``, ``dropout``, ``logvar_floor``); :func:`check_config` validates
them. :data:`MODELS` maps the names of ``--model`` to classes, :data:`AUTOENCODERS` the same
names to the deterministic autoencoders (``--autoencoder``), and :data:`CHECKPOINT_MODELS`
every class to the name a checkpoint records.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from fastvae import _checks
from fastvae.animal_faces import CLASSES, DEFAULT_IMAGE_SIZE, load_animal_faces
from fastvae.autoencoder import ConvAutoencoder, MLPAutoencoder
from fastvae.conv import ConvVAE
from fastvae.data import Split, load_mnist
from fastvae.models import VAE, MLPVAE, check_dropout

DATASETS = ("mnist", "animal-faces")
MODELS: dict[str, type[VAE]] = {"mlp": MLPVAE, "conv": ConvVAE}
AUTOENCODERS: dict[str, type[VAE]] = {"mlp": MLPAutoencoder, "conv": ConvAutoencoder}
CHECKPOINT_MODELS: dict[str, type[VAE]] = {
    **MODELS, **{f"{name}-ae": cls for name, cls in AUTOENCODERS.items()},
}
MNIST_SHAPE = (1, 28, 28)


class Data(NamedTuple):
    """Train and test splits, the shape of one image ``(C, H, W)``, and the label names."""

    train: Split
    test: Split
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]


def check_config(cfg) -> None:
    """Validate the data and model fields of a TrainConfig (raises ValueError naming the field)."""
    _checks.choice("dataset", cfg.dataset, DATASETS)
    _checks.choice("model", cfg.model, tuple(MODELS))
    if cfg.image_size is not None:
        _checks.positive_int("image_size", cfg.image_size)
    if cfg.dataset == "mnist":
        if cfg.image_size not in (None, 28):
            raise ValueError(
                f"image_size must be 28 (or None) for dataset 'mnist', got {cfg.image_size}"
            )
        if cfg.classes is not None:
            raise ValueError("classes is a filter for dataset 'animal-faces'; MNIST has none")
        if cfg.data_dir is not None:
            raise ValueError(
                "data_dir is for dataset 'animal-faces'; MNIST is read from $FASTVAE_DATA/MNIST/raw"
            )
        if cfg.grayscale:
            raise ValueError("grayscale is for dataset 'animal-faces'; MNIST is grayscale already")
    elif cfg.classes is not None:
        unknown = sorted(set(cfg.classes) - set(CLASSES))
        if unknown or not cfg.classes:
            raise ValueError(
                f"classes must be a non-empty subset of {', '.join(CLASSES)}; got {cfg.classes}"
            )
    if cfg.conv_channels is not None and cfg.model != "conv":
        raise ValueError("conv_channels is only used by model 'conv'")
    _checks.positive_int("iwae_k", cfg.iwae_k)
    check_dropout(cfg.dropout)
    if cfg.logvar_floor is not None and cfg.likelihood != "gaussian":
        raise ValueError(
            f"logvar_floor bounds the 'gaussian' decoder's log-variance; likelihood "
            f"{cfg.likelihood!r} has none (pass logvar_floor None)"
        )
    if cfg.autoencoder and cfg.iwae_k > 1:
        raise ValueError("an autoencoder has no posterior to importance-sample: iwae_k must be 1")
    if cfg.iwae_k > 1 and cfg.beta != 1:
        raise ValueError(
            f"iwae_k > 1 trains the IWAE bound, which has no KL weight; got beta={cfg.beta}"
        )
    if cfg.binarize != "none" and cfg.dataset != "mnist":
        raise ValueError(f"binarize is for MNIST; dataset {cfg.dataset!r} takes binarize='none'")


def load_split(
    cfg, train: bool, device: torch.device
) -> tuple[Split, tuple[int, int, int], tuple[str, ...]]:
    """One split of ``cfg.dataset`` on ``device`` (limited by ``cfg.limit_train`` or
    ``cfg.limit_test``; AFHQ's ``val`` is the test split): ``(split, input_shape, class_names)``.

    Raises:
        fastvae.data.DataNotFoundError: the data set is missing (the message says where it goes).
    """
    limit = cfg.limit_train if train else cfg.limit_test
    if cfg.dataset == "mnist":
        split = load_mnist(train, limit=limit, device=device)
        return split, MNIST_SHAPE, tuple(str(d) for d in range(10))
    size = cfg.image_size or DEFAULT_IMAGE_SIZE
    split, names = load_animal_faces(
        train, cfg.data_dir, image_size=size, classes=cfg.classes, limit=limit, device=device,
        grayscale=cfg.grayscale,
    )
    return split, (1 if cfg.grayscale else 3, size, size), names


def load_splits(cfg, device: torch.device) -> Data:
    """The train and test splits of ``cfg.dataset`` (see :func:`load_split`)."""
    train, shape, names = load_split(cfg, True, device)
    test, _, _ = load_split(cfg, False, device)
    return Data(train, test, shape, names)


def build_model(cfg, input_shape: tuple[int, ...]) -> VAE:
    """The untrained model ``cfg.model`` (its autoencoder with ``cfg.autoencoder``) for images
    of ``input_shape``."""
    classes = AUTOENCODERS if cfg.autoencoder else MODELS
    common = dict(latent_dim=cfg.latent_dim, likelihood=cfg.likelihood, backend=cfg.backend,
                  dropout=cfg.dropout, logvar_floor=cfg.logvar_floor)
    if cfg.model == "conv":
        return classes["conv"](input_shape, channels=cfg.conv_channels, **common)
    return classes["mlp"](input_shape, cfg.hidden_dims, **common)


def model_name(model: VAE) -> str:
    """The :data:`CHECKPOINT_MODELS` key of ``model``'s class, or of the nearest registered
    class it derives from (what a checkpoint records, so :func:`rebuild_model` can rebuild
    it)."""
    for cls in type(model).__mro__:
        for name, registered in CHECKPOINT_MODELS.items():
            if cls is registered:
                return name
    raise ValueError(f"no model name registered for {type(model).__name__}")


def rebuild_model(name: str, config: dict[str, Any]) -> VAE:
    """``CHECKPOINT_MODELS[name](**config)``: the architecture of a checkpoint's
    ``model_name`` and ``model_config`` (checkpoints from before ``model_name`` existed hold
    an MLPVAE)."""
    _checks.choice("model_name", name, tuple(CHECKPOINT_MODELS))
    return CHECKPOINT_MODELS[name](**config)
