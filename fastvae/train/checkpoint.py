"""Checkpoints and the files of a run, written atomically; everything that reads them back.

A checkpoint (``checkpoint.pt`` in a run folder) is a dict saved by :func:`save_checkpoint`
(``torch.save`` into a temp file, fsync, ``os.replace``: a crash leaves the old file or the
new one, never a partial one) and read only with ``torch.load(weights_only=True)``
(:func:`read_checkpoint`). Its keys: epoch (the last completed one), model, optimizer,
scheduler (None for a constant learning rate), config (:class:`TrainConfig` as a dict),
model_name, model_config, rng_states (one dict per process: Python's, NumPy's, torch's CPU and
CUDA generator states), world_size, metrics (the metrics.csv rows so far).

Evaluation, sampling and the experiments load checkpoints through this module
(:func:`load_checkpoint`); it imports no training code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

from fastvae.models import VAE, rebuild_model
from fastvae.train.config import RESUME_OVERRIDES, ConfigError, TrainConfig

CHECKPOINT = "checkpoint.pt"
# What a checkpoint must hold for sampling and evaluation.
CHECKPOINT_KEYS = ("epoch", "model", "config", "model_config")
# What it must hold, besides, to continue training.
RESUME_KEYS = ("optimizer", "scheduler", "rng_states", "metrics")


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
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
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(Path(path), lambda f: torch.save(obj, f))


def write_json(obj: Any, path: Path) -> Path:
    """``obj`` as indented JSON, written atomically."""
    return atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode("utf-8")))


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
    learning rate), config (TrainConfig as a dict), model_name, model_config, rng_states,
    world_size, metrics (see the module docstring).
    """
    ckpt = read_checkpoint(path, map_location=map_location)
    model = rebuild_model(ckpt.get("model_name", "mlp"), ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval(), ckpt


def rng_state(device: torch.device) -> dict[str, Any]:
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


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
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
    bad = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if bad:
        raise ConfigError(
            "a resumed run keeps its configuration; only "
            f"{', '.join('{' + k + '}' for k in RESUME_OVERRIDES)} may change, got "
            f"{', '.join('{' + k + '}' for k in bad)}")
    saved = _read_to_resume(run)["config"]
    return TrainConfig.from_dict({**saved, **overrides, "out": str(run)})


def resume_checkpoint(cfg: TrainConfig) -> dict[str, Any]:
    """The checkpoint of the run folder ``cfg.out`` to continue, checked against ``cfg``.

    Raises:
        FileNotFoundError: no checkpoint there.
        CheckpointError: it cannot be read (the message advises ``--overwrite``).
        ConfigError: it lacks what resuming needs, its configuration differs from ``cfg`` in
            more than :data:`RESUME_OVERRIDES`, or ``cfg.epochs`` is below its epoch.
    """
    out = Path(cfg.out)
    ckpt = _read_to_resume(out)
    _check_resumable(ckpt["config"], cfg, out)
    if cfg.epochs < ckpt["epoch"]:
        raise ConfigError(f"cannot resume {out} with {{epochs}} {cfg.epochs}: it has already "
                          f"trained {ckpt['epoch']} epochs (give {ckpt['epoch']} or more)")
    return ckpt


def _read_to_resume(run: Path) -> dict[str, Any]:
    """The checkpoint of run folder ``run``, with what resuming needs (errors say how on)."""
    if not (run / CHECKPOINT).is_file():
        raise FileNotFoundError(f"cannot resume {run}: no {CHECKPOINT} there (it is written at "
                                "the end of every epoch: this run finished no epoch, or this is "
                                "not a run folder)")
    try:
        ckpt = read_checkpoint(run / CHECKPOINT)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; it cannot be resumed: start the run again with "
                              f"`fastvae train --overwrite --out {run}`") from None
    missing = sorted(set(RESUME_KEYS) - set(ckpt))
    if missing:
        raise CheckpointError(f"cannot resume {run}: its {CHECKPOINT} lacks {', '.join(missing)}"
                              " (written by an older fastvae); it still loads for sampling")
    return ckpt


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    current = dataclasses.asdict(cfg)
    saved = dataclasses.asdict(TrainConfig.from_dict(saved))
    fixed = RESUME_OVERRIDES + ("out",)
    differ = [k for k in current if k not in fixed and current[k] != saved[k]]
    if differ:
        raise ConfigError(
            f"cannot resume {path}: the configuration differs in "
            + ", ".join(f"{{{k}}} (checkpoint {saved[k]!r}, now {current[k]!r})" for k in differ)
            + f"; only {', '.join('{' + k + '}' for k in RESUME_OVERRIDES)} may change")
    if cfg.lr_schedule != "constant" and cfg.epochs != saved["epochs"]:
        raise ConfigError(f"cannot resume {path} with {{epochs}} {cfg.epochs}: its "
                          f"{{lr_schedule}} {cfg.lr_schedule} was laid out for {saved['epochs']} "
                          "epochs")
