"""Training: a tiny real-MNIST run writes a complete, consistent run folder; atomic checkpoints."""

import csv
import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import HAVE_MNIST, NO_MNIST

from fastvae import train as ftrain
from fastvae.data import ImageBatches, load_mnist
from fastvae.models import MLPVAE
from fastvae.train import METRIC_COLUMNS, TrainConfig, evaluate, load_checkpoint, save_checkpoint

RUN_FILES = {
    "config.json", "metrics.csv", "checkpoint.pt", "samples.png", "reconstructions.png",
    "loss_curve.png", ".lock",
}


def tiny_config(out, **kw):
    return TrainConfig(**{
        "epochs": 2, "batch_size": 64, "limit_train": 512, "limit_test": 256,
        "test_batch_size": 100, "device": "cpu", "out": str(out), **kw,
    })


def read_metrics(run):
    with open(run / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, [{k: float(v) for k, v in r.items()} for r in reader]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    if not HAVE_MNIST:
        pytest.skip(NO_MNIST)
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = tiny_config(out)
    run = ftrain.train(cfg)
    return cfg, run


@pytest.mark.slow
def test_run_folder_is_complete(tiny_run, capsys):
    cfg, run = tiny_run
    assert run == Path(cfg.out)
    # Nothing else: in particular no temp file of the atomic writes.
    assert {p.name for p in run.iterdir()} == RUN_FILES


@pytest.mark.slow
def test_metrics_csv(tiny_run):
    cfg, run = tiny_run
    columns, rows = read_metrics(run)
    assert tuple(columns) == METRIC_COLUMNS
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    for r in rows:
        assert all(math.isfinite(v) for v in r.values()), r
        for split in ("train", "test"):
            parts = r[f"{split}_recon"] + r[f"{split}_kl"]
            assert r[f"{split}_loss"] == pytest.approx(parts, abs=1e-4)
            assert r[f"{split}_kl"] > 0
            # Bernoulli NLL of a 784-pixel image: between a good model (~80) and chance (543).
            assert 60 < r[f"{split}_loss"] < 550, r
        assert r["epoch_seconds"] > 0
    assert rows[1]["elapsed_seconds"] > rows[0]["elapsed_seconds"] > 0
    assert rows[1]["test_loss"] < rows[0]["test_loss"], "the test NELBO should drop"


@pytest.mark.slow
def test_config_json(tiny_run):
    cfg, run = tiny_run
    saved = json.loads((run / "config.json").read_text())
    assert TrainConfig.from_dict(saved) == cfg
    assert saved["run"]["device"] == "cpu"


def test_a_config_saved_before_the_logvar_floor_keeps_no_floor():
    """A Gaussian run saved before ``logvar_floor`` existed had none; rebuilding its config (to
    resume or evaluate it) must not switch the new default floor on."""
    saved = dataclasses.asdict(TrainConfig(likelihood="gaussian", logvar_floor=None))
    del saved["logvar_floor"]
    assert TrainConfig.from_dict(saved).logvar_floor is None
    assert TrainConfig(likelihood="gaussian").logvar_floor is not None  # new runs: the floor


@pytest.mark.slow
def test_checkpoint_rebuilds_the_model(tiny_run):
    cfg, run = tiny_run
    model, ckpt = load_checkpoint(run / "checkpoint.pt")
    assert isinstance(model, MLPVAE) and not model.training
    assert ckpt["epoch"] == 2
    assert TrainConfig.from_dict(ckpt["config"]) == cfg
    assert ckpt["model_config"]["latent_dim"] == 20
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "rng_states", "metrics", "world_size"}
    assert ckpt["scheduler"] is None and ckpt["world_size"] == 1
    assert set(ckpt["rng_states"][0]) == {"python", "numpy", "torch", "cuda"}
    assert len(ckpt["optimizer"]["state"]) == len(list(model.parameters()))
    # The rebuilt model reproduces the last recorded test NELBO exactly (same eval seeds).
    test = load_mnist(False, limit=cfg.limit_test)
    batches = ImageBatches(*test, cfg.test_batch_size, shuffle=False, seed=cfg.seed + 1)
    got = evaluate(model, batches, seed=cfg.seed + 2)
    _, rows = read_metrics(run)
    assert got["loss"] == pytest.approx(rows[-1]["test_loss"], abs=1e-5)
    assert got["kl"] == pytest.approx(rows[-1]["test_kl"], abs=1e-5)


@pytest.mark.slow
def test_figures(tiny_run):
    _, run = tiny_run
    sizes = {}
    for name in ("samples.png", "reconstructions.png", "loss_curve.png"):
        path = run / name
        assert path.stat().st_size > 1000
        with Image.open(path) as im:
            assert im.format == "PNG"
            sizes[name] = im.size
    # 8 x 8 grids of 28-pixel images (242 px square with torchvision's padding), drawn at least
    # 400 pixels wide, under a title (tests/test_reliability.py checks its text).
    for name in ("samples.png", "reconstructions.png"):
        width, height = sizes[name]
        assert width >= 400 and height > width, (name, sizes[name])
    with Image.open(run / "reconstructions.png") as im:
        grid = torch.from_numpy(np.array(im.convert("L"))).float()
    top, bottom = grid[: grid.shape[0] // 2], grid[grid.shape[0] // 2:]
    assert top.mean() > 10 and bottom.mean() > 10, "originals and reconstructions drawn"


@pytest.mark.slow
def test_runs_are_reproducible(tmp_path):
    if not HAVE_MNIST:
        pytest.skip(NO_MNIST)
    rows = []
    for name in ("a", "b"):
        cfg = tiny_config(tmp_path / name, epochs=1, limit_train=256, limit_test=100,
                          binarize="dynamic")
        _, r = read_metrics(ftrain.train(cfg))
        rows.append([{k: v for k, v in row.items() if "seconds" not in k} for row in r])
    assert rows[0] == rows[1]


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    assert torch.load(path)["epoch"] == 1

    real_save = torch.save

    def crash(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.write(b"partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    # The old checkpoint is intact and the temp file is gone.
    assert torch.load(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]

    save_checkpoint({"epoch": 3}, path)
    assert torch.load(path)["epoch"] == 3
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_config_validation():
    with pytest.raises(ValueError, match="likelihood"):
        TrainConfig(likelihood="poisson")
    with pytest.raises(ValueError, match="binarize"):
        TrainConfig(binarize="maybe")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    assert TrainConfig(hidden_dims=[256, 128]).hidden_dims == (256, 128)
    assert ftrain.resolve_device("cpu") == torch.device("cpu")
