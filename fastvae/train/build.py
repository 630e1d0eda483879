"""What a :class:`TrainConfig` names, built: the data splits, the model, the optimizer and the
learning-rate schedule. Evaluation and the experiments load their data through
:func:`load_split` too, so a run is always evaluated on the data it was trained on."""

from __future__ import annotations

from typing import NamedTuple

import torch

from fastvae.data import Split, load_animal_faces, load_mnist
from fastvae.data.animal_faces import DEFAULT_IMAGE_SIZE
from fastvae.models import AUTOENCODERS, MODELS, VAE
from fastvae.train.config import TrainConfig

MNIST_SHAPE = (1, 28, 28)


class Data(NamedTuple):
    """Train and test splits, the shape of one image ``(C, H, W)``, and the label names."""

    train: Split
    test: Split
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]


def load_split(cfg: TrainConfig, train: bool, device: torch.device
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


def load_splits(cfg: TrainConfig, device: torch.device) -> Data:
    """The train and test splits of ``cfg.dataset`` (see :func:`load_split`)."""
    train, shape, names = load_split(cfg, True, device)
    test, _, _ = load_split(cfg, False, device)
    return Data(train, test, shape, names)


def build_model(cfg: TrainConfig, input_shape: tuple[int, ...]) -> VAE:
    """The untrained model ``cfg.model`` (its autoencoder with ``cfg.autoencoder``) for images
    of ``input_shape``."""
    classes = AUTOENCODERS if cfg.autoencoder else MODELS
    common = dict(latent_dim=cfg.latent_dim, likelihood=cfg.likelihood, backend=cfg.backend,
                  dropout=cfg.dropout, logvar_floor=cfg.logvar_floor)
    if cfg.model == "conv":
        return classes["conv"](input_shape, channels=cfg.conv_channels, **common)
    return classes["mlp"](input_shape, cfg.hidden_dims, **common)


def optimizer_flags(device: torch.device) -> dict[str, bool]:
    """How Adam runs on ``device``: fused (one multi-tensor kernel per step, on the CPU too)
    and, on CUDA, capturable (its step count on the device, so a CUDA graph can capture it)."""
    return {"fused": True, "capturable": device.type == "cuda", "foreach": None}


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam (weight decay as an L2 gradient term) or AdamW (decoupled decay), with
    :func:`optimizer_flags` of the model's device."""
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    flags = optimizer_flags(next(model.parameters()).device)
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **flags)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, then the flags and step counts of this device
    (the checkpoint may come from another device, or from a graphed run whose learning rate
    was a device tensor)."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        device = group["params"][0].device
        group.update(optimizer_flags(device))
        group["lr"] = float(group["lr"])
        for p in group["params"]:
            step = optimizer.state[p].get("step")
            if step is not None:
                optimizer.state[p]["step"] = step.to(torch.float32).to(device)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    """``CosineAnnealingLR`` from lr to 0 over the epochs for ``lr_schedule`` cosine, else
    None (a constant rate)."""
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return None
