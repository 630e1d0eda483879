"""The run folder of a training: what it holds, the refusal to write over a run, its lock, and
the files written as the run goes.

A run folder (``TrainConfig.out``) holds:

- ``config.json``: the :class:`fastvae.train.TrainConfig` fields, plus a ``"run"`` entry
  (device, versions, start time) that ``TrainConfig.from_dict`` ignores;
- ``metrics.csv``: one row per epoch (:data:`METRIC_COLUMNS`), all losses in nats per image:
  ``train_loss``, ``train_recon``, ``train_kl`` (averages over the epoch's batches of the
  values seen while training, weighted by batch size), ``test_loss``, ``test_recon``,
  ``test_kl`` (the test set's single-sample estimate at the end of the epoch, noise from a
  fixed seed), then ``epoch_seconds`` (training + evaluation of that epoch) and
  ``elapsed_seconds`` (since the training was called, data loading included). ``*_loss`` is
  the negative ELBO recon + kl (beta = 1) whatever the training beta;
- ``checkpoint.pt``: written atomically after every epoch (:mod:`fastvae.train.checkpoint`);
- ``.lock``: held while a training runs (:class:`fastvae.train.lock.RunLock`);
- at the end: ``samples.png`` (64 samples, 8x8), ``reconstructions.png`` (32 test images in
  the top four rows, their reconstructions below), ``loss_curve.png``, titled with the model
  and the epoch.

A folder that holds a run (any of :data:`RUN_FILES`) is never written over: a new run there is
refused (:func:`refuse_existing_run`) unless ``overwrite`` (which deletes those files once the
lock is held). A new run that stops before its first checkpoint removes what it made.
"""

from __future__ import annotations

import csv
import datetime
from pathlib import Path

import torch

from fastvae.train.checkpoint import CHECKPOINT, CheckpointError, read_checkpoint, write_json
from fastvae.train.lock import LOCK_NAME, RunLock

METRIC_COLUMNS = (
    "epoch", "train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl",
    "epoch_seconds", "elapsed_seconds",
)
FIGURES = ("samples.png", "reconstructions.png", "loss_curve.png")
RUN_FILES = (CHECKPOINT, "metrics.csv", "config.json", *FIGURES)


class RunExistsError(RuntimeError):
    """A new run into a folder that already holds one (the message names it, what it holds
    and the ways on)."""


def refuse_existing_run(out: Path) -> None:
    """Raise :class:`RunExistsError` if ``out`` holds any of :data:`RUN_FILES`, saying what it
    holds and the way on that works: ``--resume`` for a readable checkpoint, ``--overwrite``
    (or another ``--out``) always."""
    present = [f for f in RUN_FILES if (out / f).exists()]
    if not present:
        return
    ways = "replace it with --overwrite, or choose another --out"
    if not (out / CHECKPOINT).exists():
        held = "started, no epoch finished"
    else:
        try:
            ckpt = read_checkpoint(out / CHECKPOINT)
            total = ckpt["config"].get("epochs", "?")
            held = f"trained {ckpt['epoch']} of {total} epochs"
            ways = (f"continue it with `fastvae train --resume {out}` (--epochs N to train "
                    f"longer), {ways}")
        except CheckpointError:
            held = f"its {CHECKPOINT} is unreadable (cut short?), so it cannot be resumed"
    raise RunExistsError(f"{out} already holds a run ({held}; {', '.join(present)}): {ways}")


class RunFolder:
    """The files of one training in folder ``out``; only the main process writes.

    :meth:`open` makes the folder, takes its lock and, with ``overwrite``, deletes the old
    run's files; :meth:`start` writes config.json and metrics.csv; :meth:`add_epoch` appends a
    row; :meth:`close` releases the lock and, when no epoch was saved, removes what
    :meth:`open` made.
    """

    def __init__(self, out: str | Path, is_main: bool = True):
        self.out, self.is_main = Path(out), is_main
        self.lock: RunLock | None = None
        self.made_dirs = [d for d in (self.out, *self.out.parents) if not d.exists()]

    def open(self, overwrite: bool) -> RunFolder:
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.out).acquire()
            if overwrite:
                for name in RUN_FILES:
                    (self.out / name).unlink(missing_ok=True)
        return self

    @property
    def checkpoint(self) -> Path:
        return self.out / CHECKPOINT

    def start(self, config: dict, run: dict, metrics: list[dict]) -> None:
        """config.json (the TrainConfig's fields ``config`` and ``run``, what describes this
        process), and metrics.csv
        with the header and the rows of a resumed run; removes temp files of a killed write."""
        if not self.is_main:
            return
        import fastvae

        for stale in self.out.glob(f".{CHECKPOINT}.*.tmp"):
            stale.unlink()
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        run = {**run, "torch": torch.__version__, "fastvae": fastvae.__version__,
               "started": started}
        write_json({**config, "run": run}, self.out / "config.json")
        with open(self.out / "metrics.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(METRIC_COLUMNS)
        for row in metrics:
            self.add_row(row)

    def add_row(self, row: dict[str, float]) -> None:
        """Append an epoch's row to metrics.csv."""
        with open(self.out / "metrics.csv", "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([int(row["epoch"])]
                                   + [f"{row[c]:.6f}" for c in METRIC_COLUMNS[1:]])

    def close(self, saved_any: bool) -> None:
        """Release the lock; if no checkpoint was saved, remove this run's files and the
        folders :meth:`open` made that are empty then."""
        if self.is_main and not saved_any:
            for name in RUN_FILES + (LOCK_NAME,):
                (self.out / name).unlink(missing_ok=True)
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.is_main and not saved_any:
            for d in self.made_dirs:  # deepest first
                try:
                    d.rmdir()
                except OSError:  # something else was put there meanwhile: leave it
                    break
