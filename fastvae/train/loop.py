"""Training a VAE (MLP or conv; MNIST or Animal Faces): :func:`train`, writing a run folder.

The pieces, each in its own module of :mod:`fastvae.train`: the configuration
(:mod:`~fastvae.train.config`), what it builds (:mod:`~fastvae.train.build`), the step and the
epoch (:mod:`~fastvae.train.engine`), the run folder (:mod:`~fastvae.train.runfolder`),
checkpoints (:mod:`~fastvae.train.checkpoint`), the processes of a torchrun job
(:mod:`~fastvae.train.distributed`). This module strings them together.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fastvae.data import ImageBatches, ShardedImageBatches
from fastvae.models import model_name
from fastvae.train import build, distributed, figures
from fastvae.train.checkpoint import resume_checkpoint, rng_state, save_checkpoint, set_rng_state
from fastvae.train.config import ConfigError, TrainConfig, check_backend, resolve_device
from fastvae.train.engine import Engine, EpochLosses
from fastvae.train.runfolder import RunFolder, refuse_existing_run
from fastvae.train.testset import evaluate

# Offsets from TrainConfig.seed for the independent streams of a run.
TEST_DATA_SEED, EVAL_NOISE_SEED, SAMPLE_SEED = 1, 2, 3


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (``nonfinite="stop"``), or the final test
    metrics are not finite; the message names the epoch and step, and the kept checkpoint."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`; the message says which checkpoint is kept and the command
    that continues the run."""


def train(config: TrainConfig | None = None, *, resume: bool = False, overwrite: bool = False
          ) -> Path:
    """Train a VAE as ``config`` says; return the run folder (:mod:`fastvae.train.runfolder`).

    Loads the data onto the device, trains through :class:`fastvae.train.engine.Engine`
    (graphed on CUDA where the run allows; a line says which path and why), evaluates the
    test negative ELBO after every epoch, writes metrics.csv and an atomic checkpoint after
    every epoch and the figures at the end, and prints a line per epoch and a final line.

    ``resume``: continue the run in ``config.out`` from its checkpoint (model, optimizer,
    scheduler, RNG states, metrics); every random stream is a function of (seed, epoch,
    step), so on the same device and software the resumed run ends with bitwise the same
    weights as an uninterrupted one. ``config.epochs`` equal to the epochs trained does
    nothing (a line says so). A new run refuses a folder that holds one unless
    ``overwrite``. Under torchrun, rank r trains on its share of every global batch (DDP);
    only rank 0 evaluates, writes and prints.

    Raises:
        ConfigError: resume with overwrite; an unknown device or a backend it cannot run; a
            batch size that processes x grad_accum does not divide; a resumed checkpoint whose
            configuration differs in more than epochs, device and backend.
        RunExistsError: a new run into a folder that holds one, without ``overwrite``.
        fastvae.train.checkpoint.CheckpointError, FileNotFoundError: no readable checkpoint
            to resume.
        fastvae.data.DataNotFoundError: the data set is missing.
        fastvae.train.lock.RunLockedError: another training is using ``config.out``.
        NonFiniteLossError: a non-finite training loss (``nonfinite="stop"``) or final test
            metrics.
        TrainingInterrupted: Ctrl-C; the message says which checkpoint is kept.
    """
    t_start = time.perf_counter()
    cfg = config if config is not None else TrainConfig()
    if resume and overwrite:
        raise ConfigError("resume continues the run in its folder and {overwrite} deletes it: "
                          "give one of them")
    device = resolve_device(cfg.device)
    check_backend(cfg.backend, device)
    ckpt = resume_checkpoint(cfg) if resume else None
    if ckpt is not None and ckpt["epoch"] == cfg.epochs:
        print(f"{cfg.out}: already trained {cfg.epochs} of {cfg.epochs} epochs; nothing to do "
              "(--epochs N with N above that trains it longer)", flush=True)
        return Path(cfg.out)
    if not resume and not overwrite:
        refuse_existing_run(Path(cfg.out))
    env = distributed.setup(device)
    try:
        return _train(cfg, env, ckpt, overwrite, t_start)
    finally:
        env.close()


def _train(cfg: TrainConfig, env: distributed.Distributed, ckpt: dict | None, overwrite: bool,
           t_start: float) -> Path:
    if cfg.batch_size % (env.world_size * cfg.grad_accum):
        raise ConfigError(f"{{batch_size}} {cfg.batch_size} (the global batch) must be a multiple "
                          f"of processes x {{grad_accum}} = {env.world_size} x {cfg.grad_accum}")
    run = _Run(cfg, env, ckpt)  # the data first: a missing data set leaves no folder behind
    folder = RunFolder(cfg.out, env.is_main)
    env.raise_if_main_failed(_attempt(folder.open, overwrite))
    saved = run.start_epoch - 1
    try:
        process = {"device": str(env.device), "world_size": env.world_size,
                   **({"resumed_after_epoch": saved} if saved else {})}
        folder.start(dataclasses.asdict(cfg), process, run.metrics)
        if env.is_main:
            figures.preload()  # the figures' imports, beside the training
            print(f"training on {env.device}; CPU threads: {torch.get_num_threads()} (set "
                  f"OMP_NUM_THREADS=N to change; see the README)\n{run.engine.why}", flush=True)
        for epoch in range(run.start_epoch, cfg.epochs + 1):
            run.epoch(epoch, folder)
            saved = epoch
        if env.is_main:
            run.finish(folder.out, time.perf_counter() - t_start)
        env.barrier()
    except KeyboardInterrupt as exc:
        if isinstance(exc, TrainingInterrupted):
            raise
        raise TrainingInterrupted(_interrupted(folder.out, run.epoch_now, cfg.epochs, saved)
                                  ) from None
    finally:
        folder.close(saved_any=saved > 0)
    return folder.out


def _attempt(fn, *args) -> BaseException | None:
    """``fn(*args)``; the exception it raised, or None (handed to every rank)."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 -- raised on every rank by the caller
        return exc
    return None


def _interrupted(out: Path, epoch: int, epochs: int, saved: int) -> str:
    ckpt = out / "checkpoint.pt"
    if saved == 0:
        return (f"interrupted in epoch {epoch} of {epochs}, before the first checkpoint: "
                f"nothing was kept (the files of this run in {out} are removed)")
    where = f"in epoch {epoch} of {epochs}" if saved < epochs else "writing the figures"
    return (f"interrupted {where}; {ckpt} (epoch {saved}) is kept: continue with "
            f"`fastvae train --resume {out}`")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) default generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Run:
    """The state of one training: data, model, optimizer, schedule, engine, metrics."""

    def __init__(self, cfg: TrainConfig, env: distributed.Distributed, ckpt: dict | None):
        self.env, device = env, env.device
        # What the epochs need of the config, taken once: the methods below never see it.
        self.config = dataclasses.asdict(cfg)
        self.epochs, self.seed, self.beta, self.nonfinite = (cfg.epochs, cfg.seed, cfg.beta,
                                                             cfg.nonfinite)
        seed_everything(cfg.seed + env.rank)
        data = build.load_splits(cfg, device)
        self.train_batches = ShardedImageBatches(
            *data.train, cfg.batch_size, rank=env.rank, world_size=env.world_size,
            binarize=cfg.binarize, seed=cfg.seed)
        self.test_batches = ImageBatches(*data.test, cfg.test_batch_size, shuffle=False,
                                         binarize=cfg.binarize, seed=cfg.seed + TEST_DATA_SEED)
        self.model = build.build_model(cfg, data.input_shape).to(device)
        self.optimizer = build.build_optimizer(cfg, self.model)
        self.scheduler = build.build_scheduler(cfg, self.optimizer)
        self.metrics: list[dict[str, float]] = []
        self.start_epoch, self.elapsed_before = 1, 0.0
        if ckpt is not None:
            self._restore(ckpt)
        self.engine = Engine(self.model, self.optimizer, seed=cfg.seed, beta=cfg.beta,
                             iwae_k=cfg.iwae_k, grad_accum=cfg.grad_accum,
                             nonfinite=cfg.nonfinite, env=env)
        self.epoch_now, self.t_start = self.start_epoch, time.perf_counter()

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        build.load_optimizer_state(self.optimizer, ckpt["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.env.rank < len(ckpt["rng_states"]):
            set_rng_state(ckpt["rng_states"][self.env.rank], self.env.device)
        self.metrics = ckpt["metrics"]
        self.start_epoch = ckpt["epoch"] + 1
        self.elapsed_before = self.metrics[-1]["elapsed_seconds"] if self.metrics else 0.0

    def epoch(self, epoch: int, folder: RunFolder) -> None:
        """Train one epoch; on rank 0 evaluate it, add its row, save the checkpoint, print."""
        self.epoch_now, t0 = epoch, time.perf_counter()
        bar = tqdm(desc=f"epoch {epoch}/{self.epochs}", total=len(self.train_batches),
                   unit="batch", leave=False, disable=None if self.env.is_main else True)
        losses = self.engine.train_epoch(epoch, self.train_batches,
                                         progress=lambda batches: _counted(batches, bar))
        bar.close()
        _check_epoch(losses, epoch, folder.checkpoint, self.nonfinite)
        if self.scheduler is not None:
            self.scheduler.step()
        rng_states = self.env.all_gather_object(rng_state(self.env.device))
        if not self.env.is_main:
            return
        self.test_batches.generator.manual_seed(self.seed + TEST_DATA_SEED)
        test = evaluate(self.model, self.test_batches, seed=self.seed + EVAL_NOISE_SEED)
        now = time.perf_counter()
        row = {"epoch": epoch, "train_loss": losses.loss, "train_recon": losses.recon,
               "train_kl": losses.kl, "test_loss": test["loss"], "test_recon": test["recon"],
               "test_kl": test["kl"], "epoch_seconds": now - t0,
               "elapsed_seconds": self.elapsed_before + now - self.t_start}
        self.metrics.append(row)
        folder.add_row(row)
        save_checkpoint(self._checkpoint(epoch, rng_states), folder.checkpoint)
        tqdm.write(_epoch_line(row, self.epochs, self.model))

    def _checkpoint(self, epoch: int, rng_states: list) -> dict:
        return {
            "epoch": epoch, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "config": self.config, "model_name": model_name(self.model),
            "model_config": self.model.config, "rng_states": rng_states,
            "world_size": self.env.world_size, "metrics": self.metrics,
        }

    def finish(self, out: Path, seconds: float) -> None:
        """The figures, the final line; an error if the final test metrics are not finite."""
        last = self.metrics[-1]
        self.test_batches.generator.manual_seed(self.seed + TEST_DATA_SEED)
        x_test = next(iter(self.test_batches))[0][:32]
        figures.save_run_figures(self.model, x_test, self.metrics, out,
                                 _label(self.model, self.beta), seed=self.seed + SAMPLE_SEED)
        epochs = int(last["epoch"])
        print(f"final test {_losses_text(last, 'test', self.model)} after {epochs} "
              f"epoch{'s' if epochs != 1 else ''}; wall time {self.elapsed_before + seconds:.1f} "
              f"s; run folder {out}", flush=True)
        bad = [f"{k} {last[k]}" for k in ("test_loss", "test_recon", "test_kl")
               if not math.isfinite(last[k])]
        if bad:
            raise NonFiniteLossError(
                f"the final test metrics are not finite ({', '.join(bad)} after epoch {epochs})"
                f": the model diverged"
                + (" although --nonfinite skip dropped the non-finite steps"
                   if self.nonfinite == "skip" else "")
                + f"; {out / 'checkpoint.pt'} holds these weights. Lower --lr or check the data")


def _counted(batches, bar):
    """``batches``, advancing the progress ``bar`` after each."""
    for item in batches:
        yield item
        bar.update()


def _check_epoch(losses: EpochLosses, epoch: int, ckpt: Path, nonfinite: str) -> None:
    if losses.first_bad is not None and nonfinite == "stop":
        kept = (f"the last good checkpoint, {ckpt} (epoch {epoch - 1}), is kept" if epoch > 1
                else "no checkpoint exists yet (epoch 1 never finished)")
        raise NonFiniteLossError(
            f"non-finite training loss (NaN or inf) at epoch {epoch}, step {losses.first_bad + 1}"
            f" of {losses.steps}; training stopped and {kept}. Lower --lr, check the data, or "
            "pass --nonfinite skip to drop such steps")
    if losses.skipped == losses.steps:
        raise NonFiniteLossError(
            f"every step of epoch {epoch} had a non-finite loss and was skipped; stopping")
    if losses.skipped:
        tqdm.write(f"epoch {epoch}: {losses.skipped} of {losses.steps} steps skipped "
                   "(non-finite loss)")


def _label(model, beta: float) -> str:
    kind = f"beta {beta:g}" if model.has_posterior else "no KL"
    return f"{type(model).__name__} {model.likelihood}, latent {model.latent_dim}, {kind}"


def _losses_text(row: dict, split: str, model) -> str:
    """"NELBO 105.30 (recon 80.1, KL 25.2)" -- for an autoencoder "recon 80.1" alone."""
    if not model.has_posterior:
        return f"recon {row[f'{split}_recon']:.2f} nats/image"
    return (f"NELBO {row[f'{split}_loss']:.2f} nats/image (recon {row[f'{split}_recon']:.2f}, "
            f"KL {row[f'{split}_kl']:.2f})")


def _epoch_line(row: dict, epochs: int, model) -> str:
    return (f"epoch {row['epoch']}/{epochs}: train {_losses_text(row, 'train', model)} | "
            f"test {_losses_text(row, 'test', model)} | {row['epoch_seconds']:.1f} s")
