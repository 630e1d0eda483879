"""The training configuration: :class:`TrainConfig`, every field documented and checked here.

Each field's ``metadata["help"]`` is its documentation; the ``fastvae train`` command line is
generated from these fields (one flag per field, ``--batch-size`` for ``batch_size``), so a
new field is one entry here. A bad value raises :class:`ConfigError`, whose message names the
field (``batch_size``), or, as the command line prints it, the flag (``--batch-size``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

import torch

from fastvae import _checks
from fastvae.data import BINARIZE, CLASSES
from fastvae.functional import BACKENDS
from fastvae.models import MODEL_LIKELIHOODS, MODELS

DATASETS = ("mnist", "animal-faces")
LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "adamw")
NONFINITE = ("stop", "skip")
# The "gaussian" decoder's default log-variance floor: a standard deviation of at least 0.05
# (log 0.05^2 = -5.99), 1/20 of the [0, 1] pixel range, about 13 grey levels of 255.
GAUSSIAN_LOGVAR_FLOOR = 2 * math.log(0.05)
# TrainConfig fields that resuming a run may change; any other difference is refused.
RESUME_OVERRIDES = ("epochs", "device", "backend")


class ConfigError(ValueError):
    """A bad :class:`TrainConfig` value. The message names fields as ``{field}`` in
    :attr:`template`; ``str()`` shows the field names, :meth:`render` any other names (the
    command line's flags)."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(self.render(lambda name: name))

    def render(self, name_of: Callable[[str], str]) -> str:
        """The message with every ``{field}`` replaced by ``name_of(field)``."""
        return re.sub(r"\{([a-z_0-9]+)\}", lambda m: name_of(m.group(1)), self.template)


def _field(default: Any, help: str, **meta: Any):
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; the defaults are the canonical MNIST VAE of
    pytorch/examples ``vae/main.py`` (continuous MNIST, Bernoulli decoder, 784-400-20 with
    ReLU, batch 128, Adam with lr 1e-3, 10 epochs). Each field's help text says what it does.

    Raises:
        ConfigError: a value out of range, a name not among the choices, or fields that do
            not go together (MNIST with ``grayscale``, ``iwae_k`` > 1 with ``beta`` != 1, ...).
    """

    epochs: int = _field(10, "training epochs")
    batch_size: int = _field(
        128, "images per optimizer step over all processes (the global batch; a multiple of "
        "processes x --grad-accum)")
    lr: float = _field(1e-3, "Adam learning rate")
    latent_dim: int = _field(20, "size of z")
    hidden_dims: tuple[int, ...] = _field(
        (400,), "MLP encoder hidden widths (the decoder mirrors them)")
    beta: float = _field(1.0, "KL weight of the objective recon + beta * KL (1: the ELBO)")
    likelihood: str = _field(
        "bernoulli", "decoder likelihood p(x|z): Bernoulli on logits, squared error, or a "
        "Gaussian with a learned per-pixel log-variance", choices=MODEL_LIKELIHOODS)
    binarize: str = _field(
        "none", "MNIST pixels: continuous in [0, 1], resampled Bernoulli every batch (dynamic), "
        "or binarized once with a fixed seed (static)", choices=BINARIZE)
    seed: int = _field(0, "seed of every random stream")
    device: str = _field("auto", "auto (cuda if available), cpu, cuda, cuda:1, ...")
    backend: str = _field(
        "auto", "loss ops: auto (Triton on CUDA, the PyTorch path on the CPU), triton, torch",
        choices=BACKENDS)
    out: str | None = _field(None, "run folder (default: runs/DATASET)")
    limit_train: int | None = _field(None, "use only the first N training images (default: all)")
    limit_test: int | None = _field(None, "use only the first N test images (default: all)")
    test_batch_size: int = _field(1000, "batch size of the test evaluation")
    grad_accum: int = _field(
        1, "micro-batches per process whose gradients are summed before each step")
    lr_schedule: str = _field(
        "constant", "learning rate: constant, or cosine decay to 0 over the epochs (stepped "
        "once per epoch)", choices=LR_SCHEDULES)
    nonfinite: str = _field(
        "stop", "on a NaN/inf training loss: stop at the end of the epoch (keeping the last "
        "good checkpoint) or skip the step (a host sync per step)", choices=NONFINITE)
    dataset: str = _field(
        "mnist", "MNIST, or Animal Faces (AFHQ; its val split is the test set)", choices=DATASETS)
    model: str = _field(
        "mlp", "mlp (fully connected, --hidden-dims) or conv (convolutional)",
        choices=tuple(MODELS))
    image_size: int | None = _field(
        None, "animal-faces: side of the resized square images (default: 128)")
    classes: tuple[str, ...] | None = _field(
        None, "animal-faces: keep only these classes (default: all)", choices=CLASSES)
    data_dir: str | None = _field(
        None, "animal-faces: the AFHQ folder with train/ and val/ (default: $FASTVAE_DATA/afhq)")
    conv_channels: tuple[int, ...] | None = _field(
        None, "conv: encoder widths, one stride-2 layer each (default: from the image size)")
    iwae_k: int = _field(1, "1: train on the ELBO; K > 1: on the IWAE bound with K samples")
    grayscale: bool = _field(False, "animal-faces: one luminance channel instead of RGB")
    autoencoder: bool = _field(
        False, "train the plain deterministic autoencoder with the same networks (no sampling, "
        "no KL)")
    dropout: float = _field(0.0, "dropout probability after every hidden layer (MLP and conv)")
    weight_decay: float = _field(
        0.0, "weight decay: with --optimizer adam an L2 term W * theta added to the gradient "
        "(torch.optim.Adam); with adamw decoupled decay (torch.optim.AdamW)")
    optimizer: str = _field(
        "adam", "adam or adamw (how --weight-decay acts; the same with no decay)",
        choices=OPTIMIZERS)
    logvar_floor: float | str | None = _field(
        "auto", "gaussian decoder: floor f of the per-pixel log-variance (f + softplus(raw - f)); "
        "auto: 2 log 0.05 (std >= 0.05) for gaussian, none otherwise; none: unbounded")

    def __post_init__(self):
        self._normalize()
        try:
            _check_values(self)
        except ValueError as exc:  # the plain checks name the field first: "epochs must ..."
            if isinstance(exc, ConfigError):
                raise
            field, _, rest = str(exc).partition(" ")
            raise ConfigError(f"{{{field}}} {rest}") from None
        _check_combinations(self)
        if self.out is None:
            self.out = f"runs/{self.dataset}"

    def _normalize(self) -> None:
        """Sequences to tuples, paths to strings, the "auto" floor to its value."""
        if self.logvar_floor == "auto":
            self.logvar_floor = GAUSSIAN_LOGVAR_FLOOR if self.likelihood == "gaussian" else None
        elif isinstance(self.logvar_floor, str):
            raise ConfigError(
                f"{{logvar_floor}} must be a number, none or auto, got {self.logvar_floor!r}")
        for name in ("hidden_dims", "conv_channels", "classes"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                setattr(self, name, tuple(value))
        for name in ("out", "data_dir"):
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from ``dataclasses.asdict`` / config.json, ignoring unknown keys. A saved
        config without ``logvar_floor`` predates the floor: it had none, and resuming or
        evaluating it must not add one (the default "auto" would change its model)."""
        names = {f.name for f in dataclasses.fields(cls)}
        if "logvar_floor" not in d:
            d = {**d, "logvar_floor": None}
        return cls(**{k: v for k, v in d.items() if k in names})


def _check_values(cfg: TrainConfig) -> None:
    """Each field alone: sizes, choices, numbers (plain ValueErrors naming the field)."""
    for name in ("epochs", "batch_size", "latent_dim", "test_batch_size", "grad_accum",
                 "iwae_k"):
        _checks.positive_int(name, getattr(cfg, name))
    for name in ("limit_train", "limit_test", "image_size"):
        if getattr(cfg, name) is not None:
            _checks.positive_int(name, getattr(cfg, name))
    for name in ("hidden_dims", "conv_channels"):
        for width in getattr(cfg, name) or ():
            _checks.positive_int(name, width)
    for field in dataclasses.fields(cfg):
        if "choices" in field.metadata and field.name != "classes":
            _checks.choice(field.name, getattr(cfg, field.name), field.metadata["choices"])
    if not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"lr must be a finite number > 0, got {cfg.lr!r}")
    _checks.finite_nonnegative("beta", cfg.beta)
    _checks.finite_nonnegative("weight_decay", cfg.weight_decay)
    _checks.probability("dropout", cfg.dropout)
    floor = cfg.logvar_floor
    if floor is not None and not (isinstance(floor, (int, float)) and math.isfinite(floor)):
        raise ValueError(f"logvar_floor must be a finite number, none or auto, got {floor!r}")


def _check_combinations(cfg: TrainConfig) -> None:
    """Fields that must go together (raises ConfigError naming them)."""
    if cfg.batch_size % cfg.grad_accum:
        raise ConfigError(f"{{batch_size}} must be a multiple of {{grad_accum}}: got "
                          f"{cfg.batch_size} and {cfg.grad_accum}")
    if cfg.dataset == "mnist":
        _check_mnist_fields(cfg)
    elif cfg.binarize != "none":
        raise ConfigError(f"{{binarize}} is for MNIST; {{dataset}} {cfg.dataset} takes none")
    if cfg.classes is not None and (not cfg.classes or set(cfg.classes) - set(CLASSES)):
        raise ConfigError(f"{{classes}} must be a non-empty subset of {', '.join(CLASSES)}; "
                          f"got {' '.join(cfg.classes)}")
    if cfg.conv_channels is not None and cfg.model != "conv":
        raise ConfigError("{conv_channels} is only used by {model} conv")
    if cfg.logvar_floor is not None and cfg.likelihood != "gaussian":
        raise ConfigError(f"{{logvar_floor}} bounds the gaussian decoder's log-variance; "
                          f"{{likelihood}} {cfg.likelihood} has none (give {{logvar_floor}} none)")
    if cfg.autoencoder and cfg.iwae_k > 1:
        raise ConfigError("an {autoencoder} has no posterior to importance-sample: {iwae_k} "
                          "must be 1")
    if cfg.iwae_k > 1 and cfg.beta != 1:
        raise ConfigError(f"{{iwae_k}} > 1 trains the IWAE bound, which has no KL weight; got "
                          f"{{beta}} {cfg.beta:g}")


def _check_mnist_fields(cfg: TrainConfig) -> None:
    if cfg.image_size not in (None, 28):
        raise ConfigError(f"{{image_size}} must be 28 for {{dataset}} mnist, got {cfg.image_size}")
    if cfg.classes is not None:
        raise ConfigError("{classes} is a filter of {dataset} animal-faces; MNIST has none")
    if cfg.data_dir is not None:
        raise ConfigError("{data_dir} is for {dataset} animal-faces; MNIST is read from "
                          "$FASTVAE_DATA/MNIST/raw")
    if cfg.grayscale:
        raise ConfigError("{grayscale} is for {dataset} animal-faces; MNIST is grayscale already")


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda if available else cpu; anything else as ``torch.device``, checked.

    Raises:
        ConfigError: not a device name torch knows ("gpu"), or CUDA asked for but absent.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{{device}} must be auto, cpu, cuda or cuda:N (or another torch "
                          f"device type), got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{{device}} {device} asked for, but CUDA is not available here")
    return dev


def check_backend(backend: str, device: torch.device) -> None:
    """Raise ConfigError now if ``backend`` cannot run on ``device`` (instead of at the first
    training step, after the run folder exists)."""
    from fastvae.functional import resolve_backend

    try:
        resolve_backend(backend, torch.empty(0, device=device))
    except ValueError:
        raise ConfigError(f"{{backend}} {backend} cannot run on {{device}} {device}: the Triton "
                          "kernels need a CUDA device (or TRITON_INTERPRET=1 set before "
                          "fastvae is imported); {backend} auto takes the PyTorch path on "
                          "the CPU") from None
