"""Training: :func:`train` writes a run folder; :class:`Engine` is the step it runs.

- :mod:`~fastvae.train.config`: :class:`TrainConfig`, every field documented and checked;
- :mod:`~fastvae.train.build`: the data, model, optimizer and schedule a config names;
- :mod:`~fastvae.train.engine`: :func:`train_step` and :class:`Engine` (a CUDA graph where the
  run allows it, eager elsewhere), :mod:`~fastvae.train.graphs` the graphs;
- :mod:`~fastvae.train.loop`: :func:`train`, epochs, evaluation, the per-epoch line;
- :mod:`~fastvae.train.runfolder`, :mod:`~fastvae.train.lock`: the run folder and its lock;
- :mod:`~fastvae.train.checkpoint`: atomic writes, checkpoints, RNG states, resuming;
- :mod:`~fastvae.train.figures`: a run's figures; :mod:`~fastvae.train.distributed`: torchrun.
"""

import importlib

# name -> the module of this package that defines it (imported on first use, PEP 562: loading a
# checkpoint through fastvae.train.checkpoint does not import the training loop).
_EXPORTS = {
    "CHECKPOINT": "checkpoint",
    "CheckpointError": "checkpoint",
    "checkpoint_file": "checkpoint",
    "load_checkpoint": "checkpoint",
    "read_checkpoint": "checkpoint",
    "resume_config": "checkpoint",
    "run_folder": "checkpoint",
    "save_checkpoint": "checkpoint",
    "GAUSSIAN_LOGVAR_FLOOR": "config",
    "LR_SCHEDULES": "config",
    "NONFINITE": "config",
    "OPTIMIZERS": "config",
    "RESUME_OVERRIDES": "config",
    "ConfigError": "config",
    "TrainConfig": "config",
    "resolve_device": "config",
    "Engine": "engine",
    "EpochLosses": "engine",
    "train_step": "engine",
    "evaluate": "testset",
    "NonFiniteLossError": "loop",
    "TrainingInterrupted": "loop",
    "train": "loop",
    "METRIC_COLUMNS": "runfolder",
    "RUN_FILES": "runfolder",
    "RunExistsError": "runfolder",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastvae.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fastvae.train.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
