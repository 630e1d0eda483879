"""Training MLPVAE on MNIST: one function, :func:`train`, writing a self-contained run folder.

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
- ``checkpoint.pt``: written atomically after every epoch (see :func:`save_checkpoint`);
- at the end: ``samples.png`` (64 samples, 8x8), ``reconstructions.png`` (32 test images in
  the top four rows, their reconstructions below), ``loss_curve.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fastvae import _checks, plots
from fastvae.data import BINARIZE, ImageBatches, load_mnist
from fastvae.functional import BACKENDS
from fastvae.models import MLPVAE
from fastvae.reference import LIKELIHOODS

METRIC_COLUMNS = (
    "epoch", "train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl",
    "epoch_seconds", "elapsed_seconds",
)
MNIST_SHAPE = (1, 28, 28)
# Files are created with the permissions open() would give (mkstemp alone makes them 0600).
_UMASK = os.umask(0)
os.umask(_UMASK)
# Offsets from TrainConfig.seed for the independent streams of a run.
_TEST_DATA_SEED, _EVAL_NOISE_SEED, _SAMPLE_SEED = 1, 2, 3


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on (the CLI has one flag per field).

    Defaults are the canonical MNIST VAE of pytorch/examples ``vae/main.py``: continuous
    MNIST, Bernoulli decoder, 784-400-20 with ReLU, batch 128, Adam with lr 1e-3, 10 epochs.
    ``device="auto"`` means CUDA if available, else CPU; ``backend`` is passed to the model
    ("auto": Triton kernels on CUDA, the PyTorch reference on CPU). ``limit_train`` and
    ``limit_test`` keep only the first N images of each split (quick runs).
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
    out: str = "runs/mnist"
    limit_train: int | None = None
    limit_test: int | None = None
    test_batch_size: int = 1000

    def __post_init__(self):
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        self.out = str(self.out)
        for name in ("epochs", "batch_size", "latent_dim", "test_batch_size"):
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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Rebuild from ``dataclasses.asdict`` / config.json, ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda if available else cpu; anything else as torch.device, checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
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


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then ``os.replace``: a reader
    (or a crash) sees the old checkpoint or the new one, never a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[MLPVAE, dict[str, Any]]:
    """Rebuild the model of a checkpoint written by :func:`train`.

    Returns ``(model, checkpoint)``: the :class:`MLPVAE` with its weights, in eval mode, on
    ``map_location``; and the checkpoint dict with keys epoch, model, optimizer, config
    (TrainConfig as a dict), model_config, torch_rng_state, cuda_rng_state,
    data_generator_state, metrics.
    """
    ckpt = torch.load(Path(path), map_location=map_location, weights_only=True)
    model = MLPVAE(**ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval(), ckpt


@torch.no_grad()
def evaluate(
    model: MLPVAE, batches: ImageBatches, *, beta: float = 1.0, seed: int = 0
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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def train(config: TrainConfig | None = None) -> Path:
    """Train an :class:`MLPVAE` on MNIST as ``config`` says; return the run folder.

    Seeds everything from ``config.seed``, loads MNIST onto the device (uint8, shuffled there),
    trains with Adam, evaluates the test negative ELBO after every epoch, writes
    config.json, metrics.csv and checkpoint.pt as it goes and the three figures at the end
    (see the module docstring), and prints one summary line per epoch and a final line.

    Raises:
        fastvae.data.DataNotFoundError: MNIST is missing and could not be downloaded.
    """
    t_start = time.perf_counter()
    cfg = config if config is not None else TrainConfig()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    # Data first: a missing data set should not leave an empty run folder behind.
    train_split = load_mnist(True, limit=cfg.limit_train, device=device)
    test_split = load_mnist(False, limit=cfg.limit_test, device=device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    import fastvae

    _write_json(
        {
            **dataclasses.asdict(cfg),
            "run": {
                "device": str(device),
                "torch": torch.__version__,
                "fastvae": fastvae.__version__,
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            },
        },
        out / "config.json",
    )

    train_batches = ImageBatches(
        *train_split, cfg.batch_size, shuffle=True, binarize=cfg.binarize, seed=cfg.seed
    )
    test_batches = ImageBatches(
        *test_split, cfg.test_batch_size, shuffle=False, binarize=cfg.binarize,
        seed=cfg.seed + _TEST_DATA_SEED,
    )

    model = MLPVAE(
        MNIST_SHAPE, cfg.hidden_dims, cfg.latent_dim, cfg.likelihood, backend=cfg.backend
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    metrics: list[dict[str, float]] = []
    with open(out / "metrics.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(METRIC_COLUMNS)

    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        n = 0
        bar = tqdm(
            train_batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
            leave=False, disable=None, dynamic_ncols=True,
        )
        for step, (x, _) in enumerate(bar):
            out_ = model.loss(x, beta=cfg.beta)
            optimizer.zero_grad(set_to_none=True)
            out_.loss.backward()
            optimizer.step()
            sums += torch.stack([out_.recon.detach(), out_.kl.detach()]).to(torch.float64) * x.shape[0]
            n += x.shape[0]
            if not bar.disable and step % 50 == 0:  # .item() syncs: only now and then
                bar.set_postfix(loss=f"{out_.loss.item():.2f}")
        bar.close()
        # For dynamic binarization, the test generator restarts too: the same test images
        # every epoch.
        test_batches.generator.manual_seed(cfg.seed + _TEST_DATA_SEED)
        test = evaluate(model, test_batches, beta=1.0, seed=cfg.seed + _EVAL_NOISE_SEED)
        train_recon, train_kl = (sums / n).tolist()
        now = time.perf_counter()
        row = {
            "epoch": epoch,
            "train_loss": train_recon + train_kl,
            "train_recon": train_recon,
            "train_kl": train_kl,
            "test_loss": test["loss"],
            "test_recon": test["recon"],
            "test_kl": test["kl"],
            "epoch_seconds": now - t_epoch,
            "elapsed_seconds": now - t_start,
        }
        metrics.append(row)
        with open(out / "metrics.csv", "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(
                [epoch] + [f"{row[c]:.6f}" for c in METRIC_COLUMNS[1:]]
            )
        save_checkpoint(
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "config": dataclasses.asdict(cfg),
                "model_config": model.config,
                "torch_rng_state": torch.get_rng_state(),
                "cuda_rng_state": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                "data_generator_state": train_batches.generator.get_state(),
                "metrics": metrics,
            },
            out / "checkpoint.pt",
        )
        tqdm.write(
            f"epoch {epoch}/{cfg.epochs}: train NELBO {row['train_loss']:.2f} | test NELBO "
            f"{row['test_loss']:.2f} (recon {row['test_recon']:.2f}, KL {row['test_kl']:.2f}) "
            f"nats/image | {row['epoch_seconds']:.1f} s"
        )

    model.eval()
    gen = torch.Generator(device=device).manual_seed(cfg.seed + _SAMPLE_SEED)
    plots.save_samples(model, out / "samples.png", n=64, nrow=8, generator=gen)
    test_batches.generator.manual_seed(cfg.seed + _TEST_DATA_SEED)
    x_test, _ = next(iter(test_batches))
    plots.save_reconstructions(model, x_test[:32], out / "reconstructions.png", nrow=8)
    plots.plot_loss_curves(
        metrics, out / "loss_curve.png",
        title=f"MLPVAE {cfg.likelihood}, latent {cfg.latent_dim}, beta {cfg.beta:g}",
    )
    total = time.perf_counter() - t_start
    last = metrics[-1]
    print(
        f"final test NELBO {last['test_loss']:.2f} nats/image (recon {last['test_recon']:.2f}, "
        f"KL {last['test_kl']:.2f}) after {cfg.epochs} epochs; wall time {total:.1f} s; "
        f"run folder {out}",
        flush=True,
    )
    return out
