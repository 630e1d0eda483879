"""The `fastvae` command line: help, flags mapped onto TrainConfig, a tiny real run, sampling."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from test_data import HAVE_MNIST, NO_MNIST

from fastvae import cli
from fastvae.train import METRIC_COLUMNS, TrainConfig

REPO = Path(__file__).resolve().parent.parent


def run_module(*args, timeout=300):
    """``python -m fastvae ARGS`` in a fresh process that imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "fastvae", *args], capture_output=True, text=True,
        env=env, timeout=timeout,
    )


@pytest.mark.slow
def test_help():
    top = run_module("--help")
    assert top.returncode == 0, top.stderr
    assert "train" in top.stdout and "sample" in top.stdout
    for sub in ("train", "sample"):
        with pytest.raises(SystemExit) as info:
            cli.main([sub, "--help"])
        assert info.value.code == 0


def test_every_train_config_field_has_a_flag():
    parser = cli.build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train_parser._actions} - {"help", "resume", "overwrite"}
    assert dests == {f.name for f in dataclasses.fields(TrainConfig)}
    # Defaults of the flags are the TrainConfig defaults.
    args = parser.parse_args(["train"])
    config = TrainConfig(**{k: v for k, v in vars(args).items()
                            if k not in ("command", "resume", "overwrite")})
    assert config == TrainConfig()


def test_flags_reach_the_config(monkeypatch):
    seen = {}
    monkeypatch.setattr("fastvae.train.loop.train",
                        lambda config, resume, overwrite: seen.setdefault("config", config))
    rc = cli.main([
        "train", "--epochs", "3", "--batch-size", "32", "--lr", "0.01", "--latent-dim", "2",
        "--hidden-dims", "256", "128", "--beta", "4", "--likelihood", "mse", "--binarize",
        "static", "--seed", "7", "--device", "cpu", "--backend", "torch", "--out", "x/y",
        "--limit-train", "100", "--limit-test", "50", "--test-batch-size", "25",
        "--grad-accum", "2", "--lr-schedule", "cosine", "--nonfinite", "skip",
    ])
    assert rc == 0
    assert seen["config"] == TrainConfig(
        epochs=3, batch_size=32, lr=0.01, latent_dim=2, hidden_dims=(256, 128), beta=4.0,
        likelihood="mse", binarize="static", seed=7, device="cpu", backend="torch", out="x/y",
        limit_train=100, limit_test=50, test_batch_size=25, grad_accum=2,
        lr_schedule="cosine", nonfinite="skip",
    )


def test_bad_flag_values_exit_cleanly(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--binarize", "maybe"])
    assert info.value.code == 2
    assert cli.main(["train", "--lr", "0"]) == 2
    err = capsys.readouterr().err
    assert "--lr must be a finite number > 0, got 0.0" in err and "Traceback" not in err


def test_missing_data_is_one_clear_message(monkeypatch, tmp_path, capsys):
    import torchvision.datasets.mnist

    def no_download(self):
        raise RuntimeError("downloads are disabled in this test")

    monkeypatch.setattr(torchvision.datasets.mnist.MNIST, "download", no_download)
    monkeypatch.setenv("FASTVAE_DATA", str(tmp_path / "nowhere"))
    rc = cli.main(["train", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "MNIST was not found" in err and "FASTVAE_DATA" in err
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists(), "no run folder is left behind"


@pytest.mark.skipif(not HAVE_MNIST, reason=NO_MNIST)
@pytest.mark.slow
def test_train_then_sample_in_subprocesses(tmp_path):
    out = tmp_path / "run"
    res = run_module(
        "train", "--epochs", "1", "--batch-size", "64", "--limit-train", "256",
        "--limit-test", "100", "--test-batch-size", "50", "--device", "cpu", "--out", str(out),
    )
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("final test NELBO") and "wall time" in last, res.stdout
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header == ",".join(METRIC_COLUMNS)

    png = tmp_path / "more.png"
    res = run_module("sample", str(out / "checkpoint.pt"), "--n", "16", "--out", str(png),
                     "--seed", "3")
    assert res.returncode == 0, res.stderr
    with Image.open(png) as im:  # an 8 x 2 grid of 28 px under a title, at least 400 px wide
        assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] > 100
    # Without --out: samples.png in the run folder (titled), replacing the run's own.
    before = (out / "samples.png").read_bytes()
    res = run_module("sample", str(out), "--n", "16", "--seed", "5")
    assert res.returncode == 0 and str(out / "samples.png") in res.stdout, res.stderr
    assert (out / "samples.png").read_bytes() != before


def test_sample_missing_checkpoint(tmp_path, capsys):
    assert cli.main(["sample", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err


def test_resume_takes_only_epochs_device_backend(tmp_path, capsys):
    rc = cli.main(["train", "--resume", str(tmp_path), "--lr", "0.1", "--seed", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert ("a resumed run keeps its configuration; only --epochs, --device, --backend may "
            "change, got --lr, --seed") in err
    assert cli.main(["train", "--resume", str(tmp_path / "none"), "--epochs", "3"]) == 2
    assert f"cannot resume {tmp_path / 'none'}: no checkpoint.pt there" in capsys.readouterr().err
