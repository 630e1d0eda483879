"""What the experiments share: their options, training a run, loading test images, report.md.

Every experiment trains its models with :func:`fastvae.train.train` (each in its own run folder
under the experiment's folder, so all of a run's files are kept; a second run of the
experiment continues them instead of training again), then writes its PNG figures and a
``report.md`` that embeds them with the numbers.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Sequence

import torch

from fastvae.data import ImageBatches
from fastvae.train import build
from fastvae.train.checkpoint import CHECKPOINT, load_checkpoint, run_folder
from fastvae.train.config import ConfigError, TrainConfig, resolve_device
from fastvae.train.loop import train

# --quick: few epochs on a slice of MNIST, to try a command in about a minute on a CPU.
QUICK = {"epochs": 1, "limit_train": 5000, "limit_test": 1000}


@dataclasses.dataclass
class Options:
    """Options common to every experiment (the flags of ``fastvae experiment NAME``).

    ``epochs`` trains each model that long (default 10, the canonical MNIST VAE run);
    ``quick`` means 1 epoch on the first 5,000 training and 1,000 test images unless
    ``epochs`` / ``limit_train`` / ``limit_test`` are given; ``out`` is the experiment's folder;
    ``overwrite`` retrains the runs it trained there before (otherwise a run of the same
    configuration is continued: loaded when finished, trained on when not, and the figures
    are made again); ``command`` is the command line recorded
    in report.md; ``data`` holds TrainConfig data fields for every model trained
    (``dataset``, ``data_dir``, ``image_size``, ``grayscale``; empty: MNIST).
    """

    out: str
    epochs: int | None = None
    quick: bool = False
    seed: int = 0
    device: str = "auto"
    limit_train: int | None = None
    limit_test: int | None = None
    overwrite: bool = False
    command: str | None = None
    data: dict = dataclasses.field(default_factory=dict)

    def train_config(self, name: str, **fields) -> TrainConfig:
        """A TrainConfig for the run ``<out>/<name>``: these options over ``data`` over
        ``fields``."""
        base = dict(QUICK) if self.quick else {"epochs": 10}
        for key in ("epochs", "limit_train", "limit_test"):
            if getattr(self, key) is not None:
                base[key] = getattr(self, key)
        return TrainConfig(
            **{**base, **self.data, **fields}, seed=self.seed, device=self.device,
            out=str(Path(self.out) / name),
        )


def train_or_load(config: TrainConfig, run: str | None = None, *, overwrite: bool = False):
    """The model of ``config``'s run folder: trained there (a new run, or with ``overwrite``
    a replaced one), continued when the folder holds a checkpoint of the same configuration
    (a finished run is loaded as it is, an unfinished one trained to the end); or, when
    ``run`` names an existing run folder (or its checkpoint.pt), that run instead.

    Returns ``(model, config, metrics)``: the model in eval mode, the run's TrainConfig and its
    metrics.csv rows as dicts of floats.

    Raises:
        ConfigError: the folder holds a run of another configuration (``--overwrite``
            replaces it).
    """
    if run is None:
        resume = not overwrite and (Path(config.out) / CHECKPOINT).is_file()
        try:
            folder = train(config, resume=resume, overwrite=overwrite)
        except ConfigError as exc:
            if not resume:
                raise
            raise ConfigError(f"{exc.template}; --overwrite trains it again") from None
    else:
        folder = run_folder(run)
    device = resolve_device(config.device if run is None else "cpu")
    model, ckpt = load_checkpoint(folder / CHECKPOINT, map_location=device)
    return model, TrainConfig.from_dict(ckpt["config"]), read_metrics(folder / "metrics.csv")


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The rows of a run's metrics.csv as dicts of floats."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def first_test_images(config: TrainConfig, n: int, device: torch.device):
    """The first ``n`` test images ``(n, C, H, W)`` and labels of ``config``'s data set, as the
    model saw them (binarized with a fixed seed if the run was binarized)."""
    split, _, names = build.load_split(config, False, device)
    batches = ImageBatches(*split, n, shuffle=False, binarize=config.binarize, seed=config.seed)
    x, y = next(iter(batches))
    return x, y, names


class Report:
    """A report.md under construction: a title, the command, then sections of text, tables
    and figures (paths relative to the report)."""

    def __init__(self, title: str, options: Options, intro: str = ""):
        self.folder = Path(options.out)
        self.lines = [f"# {title}", ""]
        if options.command:
            self.lines += ["Command:", "", "```bash", options.command, "```", ""]
        if intro:
            self.lines += [intro, ""]

    def text(self, text: str) -> None:
        self.lines += [text, ""]

    def figure(self, path: Path, caption: str) -> None:
        rel = Path(path).relative_to(self.folder)
        self.lines += [f"![{caption}]({rel.as_posix()})", "", f"*{caption}*", ""]

    def table(self, header: Sequence[str], rows: Sequence[Sequence]) -> None:
        fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
        self.lines += ["| " + " | ".join(header) + " |",
                       "| " + " | ".join("---:" for _ in header) + " |"]
        self.lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
        self.lines.append("")

    def write(self) -> Path:
        path = self.folder / "report.md"
        path.write_text("\n".join(self.lines).rstrip() + "\n", encoding="utf-8")
        return path


def loss_row(metrics: list[dict[str, float]]) -> tuple[float, float, float]:
    """(test NELBO, test recon, test KL) of the last epoch, nats per image."""
    last = metrics[-1]
    return last["test_loss"], last["test_recon"], last["test_kl"]
