"""Reliability of training: exact resume after SIGKILL, atomic checkpoints under SIGKILL, the run
lock, non-finite losses, and the checks on what a resume may change."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_data import HAVE_MNIST, NO_MNIST

from fastvae import train as ftrain
from fastvae.functional import ELBO
from fastvae.models import MLPVAE
from fastvae.train import NonFiniteLossError, TrainConfig, build, resume_config
from fastvae.train.lock import RunLock, RunLockedError

REPO = Path(__file__).resolve().parent.parent
# every test here trains or starts processes
pytestmark = [pytest.mark.skipif(not HAVE_MNIST, reason=NO_MNIST), pytest.mark.slow]

# 4096 images in batches of 32: 128 steps per epoch, about a second on one CPU thread; the kill
# comes a third of an epoch after the first checkpoint, inside epoch 2. Dynamic binarization and the
# cosine schedule put every kind of state (data stream, scheduler) in the resumed path.
RUN_ARGS = [
    "--epochs", "3", "--limit-train", "4096", "--limit-test", "200", "--batch-size", "32",
    "--hidden-dims", "64", "--latent-dim", "8", "--binarize", "dynamic", "--lr-schedule",
    "cosine", "--device", "cpu", "--seed", "5",
]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    e["OMP_NUM_THREADS"] = "1"  # the same thread count in every process: the same float sums
    return e


def start_train(*args, log):
    return subprocess.Popen(
        [sys.executable, "-m", "fastvae", "train", *args], stdout=log, stderr=subprocess.STDOUT,
        env=env(),
    )


def metric_rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in csv.DictReader(f)]


def load(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    with open(tmp_path / "full.log", "w") as log_full, open(tmp_path / "killed.log", "w") as log:
        reference = start_train(*RUN_ARGS, "--out", str(full), log=log_full)
        victim = start_train(*RUN_ARGS, "--out", str(killed), log=log)
        deadline = time.monotonic() + 240
        while not (killed / "checkpoint.pt").exists():
            assert victim.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint after epoch 1"
            time.sleep(0.005)
        # A tenth of epoch 1's duration (written before its checkpoint) into epoch 2: mid-epoch
        # on a slow machine and a fast one alike, with room for an epoch 2 much faster than
        # the first (which pays the first calls' costs) on a machine that other jobs slow down.
        with open(killed / "metrics.csv", newline="") as f:
            epoch_seconds = float(next(csv.DictReader(f))["epoch_seconds"])
        time.sleep(epoch_seconds / 10)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=60) == -signal.SIGKILL
        # Killed inside epoch 2: epoch 1's checkpoint and metrics row, nothing of epoch 2.
        assert load(killed)["epoch"] == 1, "the kill came too late: epoch 2 had finished"
        assert len(metric_rows(killed)) == 1
        # A temp file that a killed checkpoint write would leave; the resume removes it.
        (killed / ".checkpoint.pt.x1y2.tmp").write_bytes(b"partial")
        resumed = subprocess.run(
            [sys.executable, "-m", "fastvae", "train", "--resume", str(killed)],
            capture_output=True, text=True, env=env(), timeout=300,
        )
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert reference.wait(timeout=300) == 0, (tmp_path / "full.log").read_text()

    a, b = load(full), load(killed)
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in pa:
            assert torch.equal(pa[key], pb[key]), key
    assert a["scheduler"] == b["scheduler"]
    assert metric_rows(full) == metric_rows(killed)
    assert not list(killed.glob("*.tmp"))
    assert "resumed_after_epoch" in (killed / "config.json").read_text()


KILL_DURING_WRITE = r"""
import sys, time, torch
from fastvae.train import save_checkpoint

path = sys.argv[1]
save_checkpoint({"epoch": 1, "w": torch.ones(1000)}, path)
def slow_save(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half of a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
torch.save = slow_save
save_checkpoint({"epoch": 2, "w": torch.zeros(1000)}, path)
"""


def test_sigkill_during_checkpoint_write_keeps_the_last_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_DURING_WRITE, str(path)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env(),
    )
    assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["w"], torch.ones(1000))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "checkpoint.pt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".checkpoint.pt.")


def tiny(out, **kw):
    return TrainConfig(**{
        "epochs": 1, "batch_size": 64, "limit_train": 256, "limit_test": 100,
        "test_batch_size": 100, "hidden_dims": (32,), "latent_dim": 4, "device": "cpu",
        "out": str(out), **kw,
    })


def test_a_locked_run_folder_is_refused(tmp_path, capsys):
    from fastvae import cli

    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        with pytest.raises(RunLockedError, match=rf"run folder {run} is in use by another "
                           rf"training \(pid {os.getpid()} on .*choose another --out"):
            ftrain.train(tiny(run))
        assert not (run / "metrics.csv").exists(), "the refused run wrote nothing"
        args = ["train", "--limit-train", "64", "--limit-test", "10", "--device", "cpu",
                "--out", str(run)]
        assert cli.main(args) == 1
        assert "is in use by another training" in capsys.readouterr().err
    ftrain.train(tiny(run))  # released: the folder is usable again
    assert len(metric_rows(run)) == 1


class NaNAtStep(MLPVAE):
    """MLPVAE whose training loss is NaN at the given training calls (1-based)."""

    bad_calls: set[int] = set()

    def loss(self, x, **kwargs):
        out = super().loss(x, **kwargs)
        if self.training:
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls in self.bad_calls:
                nan = torch.full_like(out.loss, float("nan"))
                return ELBO(out.loss + nan, out.recon + nan, out.kl)
        return out


def nan_model(monkeypatch, bad_calls):
    NaNAtStep.bad_calls = set(bad_calls)
    monkeypatch.setattr(build, "build_model",
                        lambda cfg, shape: NaNAtStep(shape, cfg.hidden_dims, cfg.latent_dim))


def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    nan_model(monkeypatch, {4 + 3})  # 4 steps per epoch: epoch 2, step 3
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as info:
        ftrain.train(tiny(run, epochs=3))
    msg = str(info.value)
    assert "non-finite training loss (NaN or inf) at epoch 2, step 3 of 4" in msg
    assert f"the last good checkpoint, {run / 'checkpoint.pt'} (epoch 1), is kept" in msg
    assert load(run)["epoch"] == 1 and len(metric_rows(run)) == 1
    assert all(torch.isfinite(t).all() for t in load(run)["model"].values())


def test_nonfinite_loss_skip_drops_only_that_step(tmp_path, monkeypatch, capsys):
    nan_model(monkeypatch, {2, 6})
    run = tmp_path / "run"
    ftrain.train(tiny(run, epochs=2, nonfinite="skip"))
    out = capsys.readouterr().out
    assert "non-finite training loss at epoch 1, step 2 of 4: step skipped" in out
    assert "non-finite training loss at epoch 2, step 2 of 4: step skipped" in out
    ckpt = load(run)
    steps = {float(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert steps == {2 * 4 - 2}, "Adam took every step but the two skipped ones"
    rows = metric_rows(run)
    assert len(rows) == 2 and all(float(v) == float(v) for r in rows for v in r.values())


def test_resume_refuses_a_changed_configuration(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt there"):
        resume_config(run)
    ftrain.train(tiny(run))
    assert resume_config(run, epochs=2) == tiny(run, epochs=2)
    with pytest.raises(ValueError, match="only epochs, device, backend may change, got lr"):
        resume_config(run, lr=0.1)
    with pytest.raises(ValueError, match=r"differs in lr \(checkpoint 0.001, now 0.5\)"):
        ftrain.train(tiny(run, lr=0.5), resume=True)
    # Resuming a finished run with more epochs continues it.
    ftrain.train(resume_config(run, epochs=2), resume=True)
    assert [r["epoch"] for r in metric_rows(run)] == ["1", "2"]


def test_resume_refuses_a_checkpoint_without_training_state(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    ftrain.save_checkpoint({"epoch": 1, "model": {}, "config": {}, "model_config": {}},
                           run / "checkpoint.pt")
    with pytest.raises(ValueError, match="lacks metrics, optimizer, rng_states, scheduler"):
        ftrain.train(tiny(run), resume=True)
