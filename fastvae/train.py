"""Training a VAE (MLP or conv; MNIST or Animal Faces): one function, :func:`train`, writing a
self-contained run folder.

A run folder (``TrainConfig.out``) holds:

- ``config.json``: the :class:`TrainConfig` fields, plus a ``"run"`` entry (resolved device,
  versions, start time) that :meth:`TrainConfig.from_dict` ignores;
- ``metrics.csv``: one row per epoch, all losses in nats per image: ``train_loss``,
  ``train_recon``, ``train_kl`` (averages over the epoch's batches of the values seen while
  training, weighted by batch size), ``test_loss``, ``test_recon``, ``test_kl`` (the test
  set's single-sample estimate at the end of the epoch, noise from a fixed seed), then
  ``epoch_seconds`` (training + evaluation of that epoch) and ``elapsed_seconds`` (since
  :func:`train` was called, data loading included). ``*_loss`` is the negative ELBO
  recon + kl (beta = 1) whatever the training beta; the objective optimized is
  recon + beta * kl;
- ``checkpoint.pt``: written atomically after every epoch (see :func:`save_checkpoint`); it
  holds everything :func:`train` needs to continue exactly (``resume=True``);
- ``.lock``: held while a training runs (:class:`fastvae.runlock.RunLock`): a second training
  pointed at the same folder is refused;
- at the end: ``samples.png`` (64 samples, 8x8), ``reconstructions.png`` (32 test images in
  the top four rows, their reconstructions below), ``loss_curve.png``; the two image grids are
  titled with what they show and the epoch.

A folder that holds a run (any of :data:`RUN_FILES`) is never written over: :func:`train`
refuses it unless ``overwrite=True`` (``--overwrite``, which deletes those files first) or
``resume=True``. Nothing is created before the configuration, the device, the backend and the
data are checked, and a run that fails before its first checkpoint removes what it made.

Randomness is a function of the configuration, not of history: epoch e's data order comes
from ``(seed, e)``, and the posterior-sample noise of micro-batch u of step s of epoch e from
a generator seeded with ``(seed, e, s, u)``. That is what makes a resumed run continue
bit for bit, and what makes ``W`` processes (torchrun) train like one process with
``grad_accum = W``; see :func:`train`.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import os
import pickle
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fastvae import _checks, builders, distributed, plots
from fastvae.data import BINARIZE, ImageBatches, ShardedImageBatches, mix_seed
from fastvae.functional import BACKENDS
from fastvae.iwae import iwae_loss
from fastvae.models import MODEL_LIKELIHOODS as LIKELIHOODS
from fastvae.models import VAE
from fastvae.runlock import LOCK_NAME, RunLock

METRIC_COLUMNS = (
    "epoch", "train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl",
    "epoch_seconds", "elapsed_seconds",
)
LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "adamw")
# The "gaussian" decoder's default log-variance floor: a standard deviation of at least 0.05
# (log 0.05^2 = -5.99), 1/20 of the [0, 1] pixel range, about 13 grey levels of 255.
GAUSSIAN_LOGVAR_FLOOR = 2 * math.log(0.05)
NONFINITE = ("stop", "skip")
CHECKPOINT = "checkpoint.pt"
# The files of a run folder (any of them there means the folder holds a run) and what a
# checkpoint must hold for sampling and evaluation.
RUN_FILES = (CHECKPOINT, "metrics.csv", "config.json", "samples.png", "reconstructions.png",
             "loss_curve.png")
CHECKPOINT_KEYS = ("epoch", "model", "config", "model_config")
# TrainConfig fields that `resume` may change; any other difference is refused.
RESUME_OVERRIDES = ("epochs", "device", "backend")
# Offsets from TrainConfig.seed for the independent streams of a run.
_TEST_DATA_SEED, _EVAL_NOISE_SEED, _SAMPLE_SEED = 1, 2, 3


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on (the CLI has one flag per field).

    Defaults are the canonical MNIST VAE of pytorch/examples ``vae/main.py``: continuous
    MNIST, Bernoulli decoder, 784-400-20 with ReLU, batch 128, Adam with lr 1e-3, 10 epochs.
    ``device="auto"`` means CUDA if available, else CPU; ``backend`` is passed to the model
    ("auto": Triton kernels on CUDA, the PyTorch path on CPU). ``limit_train`` and
    ``limit_test`` keep only the first N images of each split (quick runs).

    ``batch_size`` is the global batch: images per optimizer step over all processes. Each of
    W processes (torchrun) takes ``batch_size / W`` of them and splits its share into
    ``grad_accum`` micro-batches whose gradients are accumulated before the step, so
    ``batch_size`` must be a multiple of ``W * grad_accum``. ``lr_schedule``: "constant", or
    "cosine" (``CosineAnnealingLR`` from lr to 0 over ``epochs``, stepped once per epoch).
    ``nonfinite``: what a NaN or infinite training loss does: "stop" (raise
    :class:`NonFiniteLossError` at the end of that epoch, naming the first bad step; the
    checkpoint of the previous epoch stays) or "skip" (drop that step's update, warn, go on;
    this costs a host sync per step).

    Data and model (checked by :func:`fastvae.builders.check_config`): ``dataset`` "mnist" or
    "animal-faces" (AFHQ from ``data_dir``, default ``$FASTVAE_DATA/afhq``, resized to
    ``image_size`` (default 128), optionally only the class folders ``classes``); ``model``
    "mlp" (:class:`fastvae.MLPVAE` with ``hidden_dims``) or "conv" (:class:`fastvae.ConvVAE`,
    ``conv_channels`` default derived from the image size). ``out`` is the run folder, by
    default ``runs/<dataset>``. ``iwae_k`` > 1 trains on the
    importance-weighted bound with that many samples (:func:`fastvae.iwae.iwae_loss`) instead
    of the ELBO; its train_recon / train_kl columns are the parts that function returns.
    ``grayscale`` (animal-faces): one luminance channel instead of RGB. ``autoencoder``: the
    plain deterministic autoencoder with the same networks (:mod:`fastvae.autoencoder`; no
    sampling, no KL: its kl columns are 0).

    Regularization: ``dropout`` p puts ``nn.Dropout(p)`` after every hidden layer (MLP and
    conv; off in evaluation). ``weight_decay`` W with ``optimizer`` "adam" is
    ``torch.optim.Adam``'s L2 penalty: W * theta is added to the gradient before Adam's
    moment estimates (so it is rescaled per parameter, as in Keras and the classic reports);
    with "adamw" it is ``torch.optim.AdamW``'s decoupled decay (Loshchilov & Hutter 2019):
    theta <- theta - lr * W * theta at every step, beside the Adam update. ``logvar_floor``
    (likelihood "gaussian" only): the decoder's log-variance is ``f + softplus(raw - f)``, a
    variance floor exp(f) that bounds the loss below (:class:`fastvae.VAE`); None leaves it
    unbounded (on MNIST the negative ELBO then falls without limit). The default,
    :data:`GAUSSIAN_LOGVAR_FLOOR`, is applied to "gaussian" runs when the field is left at
    "auto".
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    latent_dim: int = 20
    hidden_dims: tuple[int, ...] = (400,)
    beta: float = 1.0
    likelihood: str = "bernoulli"
    binarize: str = "none"
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    out: str | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    test_batch_size: int = 1000
    grad_accum: int = 1
    lr_schedule: str = "constant"
    nonfinite: str = "stop"
    dataset: str = "mnist"
    model: str = "mlp"
    image_size: int | None = None
    classes: tuple[str, ...] | None = None
    data_dir: str | None = None
    conv_channels: tuple[int, ...] | None = None
    iwae_k: int = 1
    grayscale: bool = False
    autoencoder: bool = False
    dropout: float = 0.0
    weight_decay: float = 0.0
    optimizer: str = "adam"
    logvar_floor: float | str | None = "auto"

    def __post_init__(self):
        if self.logvar_floor == "auto":
            self.logvar_floor = GAUSSIAN_LOGVAR_FLOOR if self.likelihood == "gaussian" else None
        elif isinstance(self.logvar_floor, str):
            raise ValueError(
                f"logvar_floor must be a number, None or 'auto', got {self.logvar_floor!r}"
            )
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        if self.classes is not None:
            self.classes = tuple(self.classes)
        if self.conv_channels is not None:
            self.conv_channels = tuple(int(k) for k in self.conv_channels)
        if self.data_dir is not None:
            self.data_dir = str(self.data_dir)
        builders.check_config(self)
        self.out = str(self.out) if self.out is not None else f"runs/{self.dataset}"
        for name in ("epochs", "batch_size", "latent_dim", "test_batch_size", "grad_accum"):
            _checks.positive_int(name, getattr(self, name))
        for name in ("limit_train", "limit_test"):
            if getattr(self, name) is not None:
                _checks.positive_int(name, getattr(self, name))
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        _checks.beta(self.beta)
        _checks.choice("likelihood", self.likelihood, LIKELIHOODS)
        _checks.choice("binarize", self.binarize, BINARIZE)
        _checks.choice("backend", self.backend, BACKENDS)
        _checks.choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _checks.choice("nonfinite", self.nonfinite, NONFINITE)
        _checks.choice("optimizer", self.optimizer, OPTIMIZERS)
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not 0 <= wd < math.inf:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {wd!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size must be a multiple of grad_accum: got batch_size "
                f"{self.batch_size}, grad_accum {self.grad_accum}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Rebuild from ``dataclasses.asdict`` / config.json, ignoring unknown keys. A saved
        config without ``logvar_floor`` predates the floor: it had none, and resuming or
        evaluating it must not add one (the default "auto" would change its model)."""
        names = {f.name for f in dataclasses.fields(cls)}
        if "logvar_floor" not in d:
            d = {**d, "logvar_floor": None}
        return cls(**{k: v for k, v in d.items() if k in names})


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda if available else cpu; anything else as torch.device, checked.

    Raises:
        ValueError: not a device name torch knows ("gpu"), or CUDA asked for but absent.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be auto, cpu, cuda or cuda:N (or another torch device type), "
            f"got {device!r}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (if present) and torch's (CPU and CUDA) default generators."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(seed)


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """``write`` into ``.<name>.<pid>.tmp`` beside ``path``, fsync, then ``os.replace``: a reader
    (or a crash) sees the old file or the new one, never a partial file. The temp file is
    opened with plain ``open``, so it gets the permissions of the process's umask."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`_atomic_write`)."""
    return _atomic_write(Path(path), lambda f: torch.save(obj, f))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: truncated, corrupt, not a torch checkpoint, or
    not one of :func:`train`; the message names the file and what is wrong (one line)."""


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint that ``path`` names: ``path`` itself, or ``path/checkpoint.pt`` when
    ``path`` is a run folder.

    Raises:
        FileNotFoundError: neither exists (the message says which was looked for).
    """
    p = Path(path)
    if p.is_dir():
        if not (p / CHECKPOINT).is_file():
            raise FileNotFoundError(
                f"{p} holds no {CHECKPOINT} (it is written at the end of every epoch: this is "
                "not a run folder, or its run finished no epoch)"
            )
        return p / CHECKPOINT
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {p} (give a run folder or its {CHECKPOINT})")
    return p


def run_folder(path: str | os.PathLike) -> Path:
    """The run folder that ``path`` names: ``path``, or its folder when it is a file (a
    ``checkpoint.pt``)."""
    p = Path(path)
    return p.parent if p.is_file() else p


def read_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """The dict saved in the checkpoint ``path`` (a file or a run folder, see
    :func:`checkpoint_file`), loaded with ``torch.load(weights_only=True)`` only.

    Raises:
        FileNotFoundError: no such checkpoint.
        CheckpointError: the file is empty, truncated or corrupt, holds objects a weights-only
            load refuses, or lacks a key of :data:`CHECKPOINT_KEYS`.
    """
    path = checkpoint_file(path)
    problem = None
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except EOFError:
        problem = "the file is empty or cut short"
    except pickle.UnpicklingError as exc:
        problem = (
            "it holds objects other than tensors and plain values, which fastvae never loads"
            if "unsupported global" in str(exc).lower() else "its data is not a torch checkpoint"
        )
    except RuntimeError as exc:
        problem = (
            "the file is truncated or corrupt (not a complete torch.save archive)"
            if "zip archive" in str(exc) or "PytorchStreamReader" in str(exc)
            else f"torch.load failed ({type(exc).__name__})"
        )
    except (OSError, KeyError, ValueError, AttributeError, ImportError) as exc:
        problem = f"it is not a torch checkpoint ({type(exc).__name__} while reading it)"
    if problem is None:
        missing = (
            [k for k in CHECKPOINT_KEYS if k not in ckpt] if isinstance(ckpt, dict)
            else list(CHECKPOINT_KEYS)
        )
        if missing:
            problem = f"it was not written by fastvae train (no {', '.join(missing)})"
    if problem is not None:
        raise CheckpointError(f"cannot use checkpoint {path}: {problem}")
    return ckpt


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the model of a checkpoint written by :func:`train` (``path``: the file or its
    run folder; read by :func:`read_checkpoint`, whose errors it raises).

    Returns ``(model, checkpoint)``: the model (the class its ``model_name`` names, MLPVAE or
    ConvVAE) with its weights, in eval mode, on ``map_location``; and the checkpoint dict with
    keys epoch (the last completed one), model, optimizer, scheduler (None for a constant
    learning rate), config (TrainConfig as a dict), model_name, model_config, rng_states (one dict per rank: Python's, NumPy's, torch's CPU and
    CUDA generator states), world_size, metrics (the metrics.csv rows so far).
    """
    ckpt = read_checkpoint(path, map_location=map_location)
    model = builders.rebuild_model(ckpt.get("model_name", "mlp"), ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval(), ckpt


@torch.no_grad()
def evaluate(
    model: VAE, batches: ImageBatches, *, beta: float = 1.0, seed: int = 0
) -> dict[str, float]:
    """Single-sample test objective over all of ``batches``, in nats per image.

    The posterior sample's noise comes from a generator seeded with ``seed`` afresh on every
    call, so the estimate is reproducible and comparable across epochs. Returns
    ``{"loss", "recon", "kl"}`` with loss = recon + beta * kl (the negative ELBO for beta = 1).
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=batches.device).manual_seed(seed)
    totals = torch.zeros(2, dtype=torch.float64, device=batches.device)
    n = 0
    for x, _ in batches:
        out = model.loss(x, beta=beta, reduction="sum", generator=gen)
        totals += torch.stack([out.recon, out.kl]).to(torch.float64)
        n += x.shape[0]
    model.train(was_training)
    recon, kl = (totals / n).tolist()
    return {"loss": recon + beta * kl, "recon": recon, "kl": kl}


def _write_json(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode("utf-8")))


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (``nonfinite="stop"``); the message names the
    epoch and the first bad step, and where the last good checkpoint is."""


class _LossModule(nn.Module):
    """``forward`` = ``model.loss(x, beta, reduction="sum", generator)`` (or, for
    ``iwae_k > 1``, :func:`fastvae.iwae.iwae_loss` with k samples): the training step goes
    through ``forward`` so that DistributedDataParallel sees (and synchronizes) it."""

    def __init__(self, model: nn.Module, iwae_k: int = 1):
        super().__init__()
        self.model = model
        self.iwae_k = iwae_k

    def forward(self, x: torch.Tensor, beta: float, generator: torch.Generator):
        if self.iwae_k > 1:
            return iwae_loss(self.model, x, self.iwae_k, reduction="sum", generator=generator)
        return self.model.loss(x, beta=beta, reduction="sum", generator=generator)


def _rng_state(device: torch.device) -> dict[str, Any]:
    """The global generators' states, as plain values and tensors (loadable with
    ``torch.load(weights_only=True)``). fastvae's own streams are seeded explicitly; these
    matter for models that use the global generators (dropout, for example)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, key.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def resume_config(run: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` stored in ``run``'s checkpoint, with ``overrides`` applied.

    Only the fields in ``RESUME_OVERRIDES`` (epochs, device, backend) may be overridden; ``out``
    becomes ``run`` (a run folder, or its checkpoint.pt).

    Raises:
        FileNotFoundError: ``run`` holds no checkpoint.pt.
        CheckpointError: the checkpoint cannot be read (see :func:`read_checkpoint`).
        ValueError: an override of another field.
    """
    run = run_folder(run)
    path = run / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume {run}: no {CHECKPOINT} there (it is written at the end of every "
            "epoch, so this run finished no epoch, or this is not a run folder)"
        )
    bad = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if bad:
        raise ValueError(
            f"a resumed run keeps its configuration; only {', '.join(RESUME_OVERRIDES)} may "
            f"change, got {', '.join(bad)}"
        )
    saved = read_checkpoint(path)["config"]
    return TrainConfig.from_dict({**saved, **overrides, "out": str(run)})


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    current = dataclasses.asdict(cfg)
    saved = dataclasses.asdict(TrainConfig.from_dict(saved))
    differ = [k for k in current if k not in RESUME_OVERRIDES + ("out",) and current[k] != saved[k]]
    if differ:
        raise ValueError(
            f"cannot resume {path}: the configuration differs in "
            + ", ".join(f"{k} (checkpoint {saved[k]!r}, now {current[k]!r})" for k in differ)
            + f"; only {', '.join(RESUME_OVERRIDES)} may change"
        )
    if cfg.lr_schedule != "constant" and cfg.epochs != saved["epochs"]:
        raise ValueError(
            f"cannot resume {path} with epochs {cfg.epochs}: its lr_schedule "
            f"{cfg.lr_schedule!r} was laid out for {saved['epochs']} epochs"
        )


# ---------------------------------------------------------------- what is trained, on what


def _build_data(
    cfg: TrainConfig, device: torch.device, env: distributed.Distributed
) -> tuple[Iterable, ImageBatches, tuple[int, ...]]:
    """(training batches of this rank, test batches, shape of one image).

    The training iterable yields this rank's ``(x, y)`` share of each global batch and has
    ``set_epoch(epoch)``; the test batches are the whole test split (evaluated on rank 0).
    """
    data = builders.load_splits(cfg, device)
    train_split, test_split = data.train, data.test
    train_batches = ShardedImageBatches(
        *train_split, cfg.batch_size, rank=env.rank, world_size=env.world_size,
        binarize=cfg.binarize, seed=cfg.seed,
    )
    test_batches = ImageBatches(
        *test_split, cfg.test_batch_size, shuffle=False, binarize=cfg.binarize,
        seed=cfg.seed + _TEST_DATA_SEED,
    )
    return train_batches, test_batches, data.input_shape


def _build_model(cfg: TrainConfig, input_shape: tuple[int, ...], device: torch.device) -> nn.Module:
    """The model to train: anything with ``loss(x, beta=, reduction=, generator=)`` -> ELBO,
    ``config`` and the plotting methods (``sample``, ``reconstruct``)."""
    return builders.build_model(cfg, input_shape).to(device)


def _build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam (weight decay as an L2 gradient term) or AdamW (decoupled decay); see TrainConfig."""
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return None


# ---------------------------------------------------------------- the loop


class RunExistsError(RuntimeError):
    """A new run into a folder that already holds one (the message names it, what it holds
    and the ways on: ``--resume``, ``--overwrite``, another ``--out``)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`; the message says which checkpoint is kept and the command
    that continues the run."""


def train(
    config: TrainConfig | None = None, *, resume: bool = False, overwrite: bool = False
) -> Path:
    """Train a VAE as ``config`` says; return the run folder.

    Loads the data onto the device, trains with Adam (and the optional LR schedule),
    evaluates the test negative ELBO after every epoch, writes config.json, metrics.csv and
    checkpoint.pt as it goes and the three figures at the end (see the module docstring), and
    prints one summary line per epoch and a final line.

    Resuming (``resume=True``, or ``fastvae train --resume RUN``): ``config.out`` must hold a
    checkpoint; the model, optimizer, scheduler, RNG states and metrics are restored and
    training continues after the checkpoint's epoch. metrics.csv is rewritten from the
    checkpoint (dropping any row of an epoch whose checkpoint was never written). Every random
    stream is a function of (seed, epoch, step), so on the same device and software the
    resumed run ends with bitwise the same weights as an uninterrupted one. A crash costs at
    most the epoch in progress. ``config.epochs`` below the epochs already trained is refused;
    equal to them, nothing is done (a line says so) and the folder is left as it is.

    A new run (``resume=False``) refuses a folder that holds a run (any of :data:`RUN_FILES`)
    unless ``overwrite=True``, which deletes those files once the folder's lock is held. The
    device, the backend, an existing run and a resumed checkpoint are checked before the data
    is loaded, and the data before anything is written; a new run that stops before its first
    checkpoint (an error, Ctrl-C) removes the files it wrote and the folder if it made it.
    Training prints the device and the CPU thread count once (``torch.get_num_threads()``;
    set ``OMP_NUM_THREADS`` to change it).

    Multiple processes (``torchrun --nproc_per_node W -m fastvae train ...``): the process
    group is joined (Gloo on CPU, NCCL on CUDA, one GPU per process), the model is wrapped in
    ``DistributedDataParallel``, each rank trains on its share of every global batch
    (:class:`fastvae.data.ShardedImageBatches`, a ``DistributedSampler`` with ``set_epoch``),
    the training metrics are summed over ranks, and only rank 0 evaluates, writes files and
    prints. Each micro-batch's loss is summed over its images and scaled by W / (images in the
    global batch) before backward, so DDP's gradient average is the gradient of the global
    batch mean, whatever the split. Micro-batch u of a step (rank r's a-th micro-batch is
    u = r + W * a, holding rows u::(W * grad_accum) of the global batch) draws its posterior
    noise from ``(seed, epoch, step, u)``: W processes with ``grad_accum`` A compute the same
    thing as one process with ``grad_accum`` W * A, up to the order of floating-point sums
    (when the training set size is a multiple of W; otherwise the sampler drops the last
    ``N mod W`` images of each epoch's order).

    Raises:
        fastvae.data.DataNotFoundError: MNIST is missing and could not be downloaded.
        fastvae.runlock.RunLockedError: another training is using ``config.out``.
        NonFiniteLossError: the loss became NaN/inf and ``nonfinite="stop"``; or the final
            test metrics are not finite (raised after the figures and the checkpoint are
            written).
        RunExistsError: a new run into a folder that holds one, without ``overwrite``.
        CheckpointError: the checkpoint to resume cannot be read.
        TrainingInterrupted: Ctrl-C (a ``KeyboardInterrupt``); its message says which
            checkpoint is kept and how to resume.
        FileNotFoundError, ValueError: ``resume`` without a checkpoint, or with a checkpoint
            whose configuration differs in more than epochs, device and backend, or with
            fewer epochs than it trained; ``resume`` with ``overwrite``; an unknown device or
            a backend the device cannot run; a ``batch_size`` not divisible by processes x
            ``grad_accum``.
    """
    t_start = time.perf_counter()
    cfg = config if config is not None else TrainConfig()
    if resume and overwrite:
        raise ValueError("resume continues the run in its folder and overwrite deletes it: "
                         "give one of them")
    device = resolve_device(cfg.device)
    _check_backend(cfg.backend, device)
    out = Path(cfg.out)
    ckpt = None
    if resume:
        ckpt = _resume_checkpoint(cfg, out)
        if ckpt["epoch"] == cfg.epochs:
            print(f"{out}: already trained {cfg.epochs} of {cfg.epochs} epochs; nothing to do "
                  "(--epochs N with N above that trains it longer)", flush=True)
            return out
    elif not overwrite:
        _refuse_existing_run(out)
    env = distributed.setup(device)
    try:
        return _train(cfg, env, ckpt, overwrite, t_start)
    finally:
        env.close()


def _check_backend(backend: str, device: torch.device) -> None:
    """Raise ValueError now if ``backend`` cannot run on ``device`` (instead of at the first
    training step, after the run folder exists)."""
    from fastvae.functional import resolve_backend

    try:
        resolve_backend(backend, torch.empty(0, device=device))
    except ValueError as exc:
        raise ValueError(f"backend {backend!r} cannot run on device {device}: {exc}") from None


def _refuse_existing_run(out: Path) -> None:
    present = [f for f in RUN_FILES if (out / f).exists()]
    if not present:
        return
    if (out / CHECKPOINT).exists():
        try:
            ckpt = read_checkpoint(out / CHECKPOINT)
            total = ckpt["config"].get("epochs", "?")
            held = f"trained {ckpt['epoch']} of {total} epochs"
        except (CheckpointError, FileNotFoundError):
            held = f"its {CHECKPOINT} is unreadable"
    else:
        held = "started, no epoch finished"
    raise RunExistsError(
        f"{out} already holds a run ({held}; {', '.join(present)}): continue it with "
        f"`fastvae train --resume {out}` (--epochs N to train longer), replace it with "
        "--overwrite, or choose another --out"
    )


def _resume_checkpoint(cfg: TrainConfig, out: Path) -> dict[str, Any]:
    """The checkpoint of ``out`` to resume, checked against ``cfg`` (on the CPU: the RNG
    states must stay there; ``load_state_dict`` moves the rest)."""
    if not (out / CHECKPOINT).is_file():
        raise FileNotFoundError(f"cannot resume {out}: no {CHECKPOINT} there")
    ckpt = read_checkpoint(out / CHECKPOINT)
    missing = sorted({"optimizer", "scheduler", "rng_states", "metrics"} - set(ckpt))
    if missing:
        raise ValueError(
            f"cannot resume {out}: its {CHECKPOINT} lacks {', '.join(missing)} (written by "
            "an older fastvae); it still loads for sampling (fastvae sample)"
        )
    _check_resumable(ckpt["config"], cfg, out)
    if cfg.epochs < ckpt["epoch"]:
        raise ValueError(
            f"cannot resume {out} with --epochs {cfg.epochs}: it has already trained "
            f"{ckpt['epoch']} epochs (give --epochs {ckpt['epoch']} or more)"
        )
    return ckpt


def _train(
    cfg: TrainConfig, env: distributed.Distributed, ckpt: dict[str, Any] | None,
    overwrite: bool, t_start: float,
) -> Path:
    device, W = env.device, env.world_size
    if cfg.batch_size % (W * cfg.grad_accum):
        raise ValueError(
            f"batch_size {cfg.batch_size} (the global batch) must be a multiple of processes x "
            f"grad_accum = {W} x {cfg.grad_accum}"
        )
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    seed_everything(cfg.seed + env.rank)
    # Data first: a missing data set should not leave an empty run folder behind.
    train_batches, test_batches, input_shape = _build_data(cfg, device, env)
    model = _build_model(cfg, input_shape, device)
    optimizer = _build_optimizer(cfg, model)
    scheduler = _build_scheduler(cfg, optimizer)
    metrics: list[dict[str, float]] = []
    start_epoch, elapsed_before = 1, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if env.rank < len(ckpt["rng_states"]):
            _set_rng_state(ckpt["rng_states"][env.rank], device)
        metrics = ckpt["metrics"]
        start_epoch = ckpt["epoch"] + 1
        elapsed_before = metrics[-1]["elapsed_seconds"] if metrics else 0.0
    del ckpt

    lock, error = None, None
    made_dirs = [d for d in (out, *out.parents) if not d.exists()]  # deepest first
    if env.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock = RunLock(out).acquire()
            if overwrite:
                for name in RUN_FILES:
                    (out / name).unlink(missing_ok=True)
        except Exception as exc:  # noqa: BLE001 -- passed on to every rank just below
            error = exc
    env.raise_if_main_failed(error)
    saved_epoch, epoch = start_epoch - 1, start_epoch
    try:
        if env.is_main:
            print(f"training on {device}; CPU threads: {torch.get_num_threads()} (set "
                  "OMP_NUM_THREADS=N to change; see the README)", flush=True)
            _start_files(cfg, env, out, metrics, start_epoch)
        step_model = _LossModule(model, cfg.iwae_k)
        if env.enabled:
            step_model = nn.parallel.DistributedDataParallel(
                step_model, device_ids=[device.index] if device.type == "cuda" else None
            )
        for epoch in range(start_epoch, cfg.epochs + 1):
            row = _train_epoch(
                cfg, env, epoch, step_model, model, optimizer, train_batches, ckpt_path
            )
            if scheduler is not None:
                scheduler.step()
            rng_states = env.all_gather_object(_rng_state(device))
            if not env.is_main:
                saved_epoch = epoch
                continue
            # For dynamic binarization, the test generator restarts too: the same test images
            # every epoch.
            test_batches.generator.manual_seed(cfg.seed + _TEST_DATA_SEED)
            test = evaluate(model, test_batches, beta=1.0, seed=cfg.seed + _EVAL_NOISE_SEED)
            now = time.perf_counter()
            row.update({
                "test_loss": test["loss"], "test_recon": test["recon"], "test_kl": test["kl"],
                "epoch_seconds": now - row.pop("t_epoch"),
                "elapsed_seconds": elapsed_before + now - t_start,
            })
            metrics.append(row)
            with open(out / "metrics.csv", "a", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow([epoch] + [f"{row[c]:.6f}" for c in METRIC_COLUMNS[1:]])
            save_checkpoint(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "config": dataclasses.asdict(cfg),
                    "model_name": builders.model_name(model),
                    "model_config": model.config,
                    "rng_states": rng_states,
                    "world_size": W,
                    "metrics": metrics,
                },
                ckpt_path,
            )
            saved_epoch = epoch
            tqdm.write(
                f"epoch {epoch}/{cfg.epochs}: train NELBO {row['train_loss']:.2f} | test NELBO "
                f"{row['test_loss']:.2f} (recon {row['test_recon']:.2f}, KL {row['test_kl']:.2f}) "
                f"nats/image | {row['epoch_seconds']:.1f} s"
            )
        if env.is_main:
            total = elapsed_before + time.perf_counter() - t_start
            _finish(cfg, model, test_batches, metrics, out, device, total)
        env.barrier()
    except BaseException as exc:
        if env.is_main and saved_epoch == 0:
            _remove_unfinished_run(out, made_dirs)
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, TrainingInterrupted):
            raise TrainingInterrupted(_interrupted(cfg, out, epoch, saved_epoch)) from None
        raise
    finally:
        if lock is not None:
            lock.release()
    if env.is_main:
        _check_final_metrics(metrics[-1], cfg, ckpt_path)
    return out


def _remove_unfinished_run(out: Path, made_dirs: list[Path]) -> None:
    """Undo a new run that never wrote a checkpoint: its files, and the folders this run made
    (``made_dirs``, deepest first) that are empty then."""
    for name in RUN_FILES + (LOCK_NAME,):
        (out / name).unlink(missing_ok=True)
    for d in made_dirs:
        try:
            d.rmdir()
        except OSError:  # something else was put there meanwhile: leave it
            break


def _interrupted(cfg: TrainConfig, out: Path, epoch: int, saved_epoch: int) -> str:
    if saved_epoch == 0:
        return (f"interrupted in epoch {epoch} of {cfg.epochs}, before the first checkpoint: "
                f"nothing was kept (the files of this run in {out} are removed)")
    where = (f"in epoch {epoch} of {cfg.epochs}" if saved_epoch < cfg.epochs
             else "while writing the figures")
    return (f"interrupted {where}; {out / CHECKPOINT} (epoch {saved_epoch}) is kept: continue "
            f"with `fastvae train --resume {out}`")


def _check_final_metrics(last: dict[str, float], cfg: TrainConfig, ckpt_path: Path) -> None:
    """Raise NonFiniteLossError if the last epoch's test metrics are NaN or infinite."""
    bad = {k: last[k] for k in ("test_loss", "test_recon", "test_kl") if not math.isfinite(last[k])}
    if bad:
        raise NonFiniteLossError(
            f"the final test metrics are not finite ({', '.join(f'{k} {v}' for k, v in bad.items())}"
            f" after epoch {int(last['epoch'])}): the model diverged"
            + (" although --nonfinite skip dropped the non-finite steps" if cfg.nonfinite == "skip"
               else "")
            + f"; {ckpt_path} holds these weights. Lower --lr or check the data"
        )


def _start_files(
    cfg: TrainConfig, env: distributed.Distributed, out: Path, metrics: list[dict], start_epoch: int
) -> None:
    """config.json, and metrics.csv holding the header and the rows of a resumed checkpoint;
    removes temp files that a write killed midway left behind."""
    import fastvae

    for stale in out.glob(f".{CHECKPOINT}.*.tmp"):
        stale.unlink()
    _write_json(
        {
            **dataclasses.asdict(cfg),
            "run": {
                "device": str(env.device),
                "world_size": env.world_size,
                "torch": torch.__version__,
                "fastvae": fastvae.__version__,
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                **({"resumed_after_epoch": start_epoch - 1} if start_epoch > 1 else {}),
            },
        },
        out / "config.json",
    )
    with open(out / "metrics.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(METRIC_COLUMNS)
        for row in metrics:
            writer.writerow([row["epoch"]] + [f"{row[c]:.6f}" for c in METRIC_COLUMNS[1:]])


def _train_epoch(
    cfg: TrainConfig,
    env: distributed.Distributed,
    epoch: int,
    step_model: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable,
    ckpt_path: Path,
) -> dict[str, float]:
    """One epoch of optimizer steps; returns the epoch's training metrics (summed over ranks)."""
    t_epoch = time.perf_counter()
    device, W, A = env.device, env.world_size, cfg.grad_accum
    model.train()
    if hasattr(batches, "set_epoch"):
        batches.set_epoch(epoch)
    gen = torch.Generator(device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # recon, kl, images
    n_images = 0  # counted on the host: no per-step host-to-device copy
    never = torch.iinfo(torch.int64).max
    first_bad = torch.full((), never, dtype=torch.int64, device=device)
    skipped = 0
    bar = tqdm(
        batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
        disable=None if env.is_main else True, dynamic_ncols=True,
    )
    for step, (x, _) in enumerate(bar):
        optimizer.zero_grad(set_to_none=True)
        # Every rank holds x.shape[0] rows of the W * x.shape[0] in the global batch; DDP
        # averages the W gradients, so 1 / x.shape[0] per rank gives the global batch mean.
        scale = 1.0 / x.shape[0]
        micro = [x[a::A] for a in range(min(A, x.shape[0]))]
        step_sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, recon, kl
        for a, xm in enumerate(micro):
            gen.manual_seed(mix_seed(cfg.seed, epoch, step, env.rank + W * a))
            last = a == len(micro) - 1
            with nullcontext() if last or not env.enabled else step_model.no_sync():
                out = step_model(xm, cfg.beta, gen)
                (out.loss * scale).backward()
            step_sums += torch.stack([out.loss, out.recon, out.kl]).detach().to(torch.float64)
        finite = torch.isfinite(step_sums).all()
        if cfg.nonfinite == "skip":
            ok = env.all_reduce(finite.to(torch.int32), "min")
            if not bool(ok):  # host sync: the price of deciding before the update
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                if env.is_main:
                    tqdm.write(
                        f"warning: non-finite training loss at epoch {epoch}, step {step + 1} "
                        f"of {len(bar)}: step skipped (nonfinite='skip')"
                    )
                continue
        else:
            first_bad = torch.where(finite, first_bad, torch.clamp(first_bad, max=step))
        optimizer.step()
        sums[:2] += step_sums[1:]
        n_images += x.shape[0]
        if not bar.disable and step % 50 == 0:  # .item() syncs: only now and then
            bar.set_postfix(loss=f"{step_sums[0].item() / x.shape[0]:.2f}")
    bar.close()
    sums[2] = n_images
    env.all_reduce(sums)
    if cfg.nonfinite == "stop":
        bad = int(env.all_reduce(first_bad, "min"))
        if bad != never:
            kept = (
                f"the last good checkpoint, {ckpt_path} (epoch {epoch - 1}), is kept"
                if epoch > 1 else "no checkpoint exists yet (epoch 1 never finished)"
            )
            raise NonFiniteLossError(
                f"non-finite training loss (NaN or inf) at epoch {epoch}, step {bad + 1} of "
                f"{len(bar)}; training stopped and {kept}. Lower --lr, check the data, or pass "
                "--nonfinite skip to drop such steps"
            )
    recon, kl, n = sums.tolist()
    if n == 0:
        raise NonFiniteLossError(
            f"every step of epoch {epoch} had a non-finite loss and was skipped; stopping"
        )
    if skipped and env.is_main:
        tqdm.write(f"epoch {epoch}: {skipped} of {len(bar)} steps skipped (non-finite loss)")
    return {
        "epoch": epoch, "train_loss": (recon + kl) / n, "train_recon": recon / n,
        "train_kl": kl / n, "t_epoch": t_epoch,
    }


def _finish(cfg, model, test_batches, metrics, out, device, total) -> None:
    """The three figures, titled with the model and the epoch, and the final line (rank 0)."""
    model.eval()
    epoch = int(metrics[-1]["epoch"])
    label = (f"{type(model).__name__} {cfg.likelihood}, latent {cfg.latent_dim}, "
             f"beta {cfg.beta:g}")
    gen = torch.Generator(device=device).manual_seed(cfg.seed + _SAMPLE_SEED)
    plots.save_samples(model, out / "samples.png", n=64, nrow=8, generator=gen,
                       title=f"{label}, epoch {epoch}: 64 samples, z ~ N(0, I)")
    test_batches.generator.manual_seed(cfg.seed + _TEST_DATA_SEED)
    x_test, _ = next(iter(test_batches))
    x_test = x_test[:32]
    plots.save_reconstructions(
        model, x_test, out / "reconstructions.png", nrow=8,
        title=f"{label}, epoch {epoch}: {x_test.shape[0]} test images (top) and their "
        "reconstructions (bottom)",
    )
    plots.plot_loss_curves(metrics, out / "loss_curve.png", title=label)
    last = metrics[-1]
    print(
        f"final test NELBO {last['test_loss']:.2f} nats/image (recon {last['test_recon']:.2f}, "
        f"KL {last['test_kl']:.2f}) after {cfg.epochs} epochs; wall time {total:.1f} s; "
        f"run folder {out}",
        flush=True,
    )
