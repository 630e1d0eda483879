"""What a newcomer meets on the command line: run folders are never lost, and every error is
one line naming what is wrong (the rules of the README's "Resuming and reliability").

The CLI runs in-process through ``cli.main(argv)`` on a synthetic data set (random 28x28
images in place of MNIST, through a patched ``fastvae.train.build.load_split``), so these tests
need no
data and take seconds; the few that need a fresh interpreter use a subprocess.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastvae import cli
from fastvae import train as ftrain
from fastvae.data import Split
from fastvae.train import TrainConfig, build
from fastvae.train import figures as plots
from fastvae.train.engine import Engine

REPO = Path(__file__).resolve().parent.parent
TINY = ["--limit-train", "128", "--limit-test", "10", "--batch-size", "64",
        "--test-batch-size", "10", "--hidden-dims", "16", "--latent-dim", "2",
        "--device", "cpu", "--backend", "torch"]


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    """Random uint8 28x28 images as every data set's splits (limit_train / limit_test images)."""

    def load_split(cfg, train, device):
        n = (cfg.limit_train if train else cfg.limit_test) or 64
        g = torch.Generator().manual_seed(0 if train else 1)
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        split = Split(images.to(device), (torch.arange(n) % 10).to(device))
        return split, (1, 28, 28), tuple(str(d) for d in range(10))

    monkeypatch.setattr(build, "load_split", load_split)


def run_cli(capsys, *argv):
    """``(exit status, stdout, stderr)`` of ``fastvae ARGV`` run in this process."""
    try:
        rc = cli.main(list(argv))
    except SystemExit as exc:  # argparse's usage errors and --help
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "weights_only" not in err
    return lines[0]


def train_tiny(capsys, out, *extra, epochs=2):
    rc, stdout, err = run_cli(capsys, "train", *TINY, "--epochs", str(epochs), "--out", str(out),
                              *extra)
    assert rc == 0, err
    return stdout


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


# 1: a run is never overwritten without --overwrite; the default run folder is per data set.
@pytest.mark.slow
def test_a_run_is_never_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    train_tiny(capsys, run)
    before = snapshot(run)
    rc, _, err = run_cli(capsys, "train", *TINY, "--epochs", "1", "--out", str(run))
    line = one_line_error(err)
    assert rc == 1 and f"{run} already holds a run (trained 2 of 2 epochs" in line
    assert f"fastvae train --resume {run}" in line and "--overwrite" in line
    assert snapshot(run) == before, "the refused run changed nothing"
    # A partly trained run (config.json and metrics.csv, no finished epoch) is kept too.
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    rc, _, err = run_cli(capsys, "train", *TINY, "--out", str(partial))
    assert rc == 1 and "started, no epoch finished" in one_line_error(err)
    # --overwrite replaces it.
    train_tiny(capsys, run, "--overwrite", epochs=1)
    assert ftrain.read_checkpoint(run)["epoch"] == 1
    assert len((run / "metrics.csv").read_text().splitlines()) == 2


@pytest.mark.slow
def test_experiments_continue_their_runs(tmp_path, capsys):
    """Running an experiment again loads its finished runs (no training: the checkpoint is
    not rewritten) and makes its figure again; --epochs above continues them; another
    configuration is refused with the way on; --overwrite trains again."""
    x = tmp_path / "x"
    args = ["experiment", "reconstructions", "--quick", "--limit-train", "64", "--limit-test",
            "16", "--device", "cpu", "--out", str(x)]
    assert run_cli(capsys, *args)[0] == 0
    ckpt, figure = (x / "run" / "checkpoint.pt").stat(), x / "reconstructions.png"
    figure.unlink()
    rc, out, err = run_cli(capsys, *args)
    assert rc == 0 and "already trained 1 of 1 epochs" in out, err
    assert (x / "run" / "checkpoint.pt").stat().st_mtime_ns == ckpt.st_mtime_ns
    assert figure.is_file()
    rc, out, err = run_cli(capsys, *args, "--epochs", "2")
    assert rc == 0 and "epoch 2/2" in out, err
    rc, _, err = run_cli(capsys, *args, "--epochs", "2", "--latent-dim", "3")
    line = one_line_error(err)
    assert rc == 2 and "--latent-dim" in line and "--overwrite trains it again" in line
    assert run_cli(capsys, *args, "--overwrite")[0] == 0


def test_default_run_folder_is_per_data_set():
    assert TrainConfig().out == "runs/mnist"
    assert TrainConfig(dataset="animal-faces").out == "runs/animal-faces"
    args = cli.build_parser().parse_args(["train", "--dataset", "animal-faces"])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    assert config.out == "runs/animal-faces"


# 2: the tests pass without the data; their skip message says how to provide it.
def test_the_skip_message_says_how_to_provide_mnist():
    from test_data import NO_MNIST

    assert "FASTVAE_DATA" in NO_MNIST and "MNIST/raw" in NO_MNIST
    assert "shared" not in NO_MNIST, "a user's clone has no ../shared"


# 3: a corrupt checkpoint is one line naming the file, in every command that reads one.
def unsafe_pickle(path):
    torch.save({"epoch": 1, "payload": argparse.Namespace(code="anything")}, path)


@pytest.mark.parametrize("damage, problem", [
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), "truncated or corrupt"),
    (lambda p: p.write_bytes(b""), "empty or cut short"),
    (lambda p: p.write_bytes(b"not a checkpoint at all"), "not a torch checkpoint"),
    (unsafe_pickle, "objects other than tensors"),
    (lambda p: torch.save({"epoch": 1}, p), "not written by fastvae train"),
])
@pytest.mark.slow
def test_a_bad_checkpoint_is_one_line(tmp_path, capsys, damage, problem):
    run = tmp_path / "run"
    train_tiny(capsys, run, epochs=1)
    ckpt = run / "checkpoint.pt"
    damage(ckpt)
    for argv in (["sample", str(run), "--out", str(tmp_path / "s.png")],
                 ["sample", str(ckpt), "--out", str(tmp_path / "s.png")],
                 ["evaluate", str(run), "--k", "2", "--device", "cpu"],
                 ["train", "--resume", str(run), "--epochs", "2"],
                 ["experiment", "interpolation", "--run", str(run), "--out", str(tmp_path / "e")]):
        rc, _, err = run_cli(capsys, *argv)
        line = one_line_error(err)
        assert rc == 2 and f"cannot use checkpoint {ckpt}: " in line and problem in line, argv


@pytest.mark.slow
def test_a_truncated_checkpoint_gets_advice_that_works(tmp_path, capsys):
    """A folder whose checkpoint was cut short: a new run there is refused with --overwrite
    as the way on (not --resume, which cannot read it); --resume says so too; following the
    advice trains the run again."""
    run = tmp_path / "run"
    train_tiny(capsys, run, epochs=1)
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    rc, _, err = run_cli(capsys, "train", *TINY, "--epochs", "1", "--out", str(run))
    line = one_line_error(err)
    assert rc == 1 and "checkpoint.pt is unreadable" in line and "--overwrite" in line
    assert "--resume" not in line
    rc, _, err = run_cli(capsys, "train", "--resume", str(run))
    line = one_line_error(err)
    assert rc == 2 and f"fastvae train --overwrite --out {run}" in line
    train_tiny(capsys, run, "--overwrite", epochs=1)
    assert ftrain.read_checkpoint(run)["epoch"] == 1


@pytest.mark.slow
def test_the_lines_a_run_prints(tmp_path, capsys):
    """"after 1 epoch" (not "epochs"); an autoencoder's lines give its reconstruction loss
    and no KL (it has none)."""
    out = train_tiny(capsys, tmp_path / "vae", epochs=1)
    assert "after 1 epoch;" in out and "KL" in out
    out = train_tiny(capsys, tmp_path / "ae", "--autoencoder", epochs=2)
    final = [line for line in out.splitlines() if line.startswith("final test")][0]
    assert final.startswith("final test recon ") and "after 2 epochs;" in final
    assert "KL" not in out and "NELBO" not in out


@pytest.mark.slow
def test_evaluate_shows_a_progress_bar_on_every_loop(tmp_path, capsys, monkeypatch):
    """Every long loop of `fastvae evaluate` (the NELBO, the IWAE draws, FID's two sets) runs
    under a tqdm bar."""
    import tqdm.auto

    from fastvae.studies import evaluation

    bars = []
    real = tqdm.auto.tqdm

    def record(*args, **kwargs):
        bars.append(kwargs.get("desc"))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "tqdm", record)
    run = tmp_path / "run"
    train_tiny(capsys, run, epochs=1)

    class Pixels(torch.nn.Module):  # a stand-in feature network: 4 pooled pixel features
        num_features = 4

        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x.float(), 2).flatten(1).double()

    evaluation.evaluate_checkpoint(run, k=3, fid=Pixels(), fid_samples=8, batch_size=4)
    assert bars == ["test NELBO", "IWAE NLL (k=3)", "FID: model samples", "FID: test images"]


# 4, 5: resume semantics.
@pytest.mark.slow
def test_resume_refuses_fewer_epochs_and_does_nothing_for_a_finished_run(tmp_path, capsys):
    run = tmp_path / "run"
    train_tiny(capsys, run, epochs=3)
    before = snapshot(run)
    rc, _, err = run_cli(capsys, "train", "--resume", str(run), "--epochs", "1")
    assert rc == 2 and (f"cannot resume {run} with --epochs 1: it has already trained 3 epochs"
                        in one_line_error(err))
    rc, out, err = run_cli(capsys, "train", "--resume", str(run))
    assert rc == 0 and err == ""
    assert out.strip() == (f"{run}: already trained 3 of 3 epochs; nothing to do (--epochs N "
                           "with N above that trains it longer)")
    assert snapshot(run) == before
    # More epochs continue it (through the checkpoint's path as well as the folder).
    rc, out, err = run_cli(capsys, "train", "--resume", str(run / "checkpoint.pt"), "--epochs", "4")
    assert rc == 0 and "epoch 4/4" in out, err


# 6: every command that takes a checkpoint takes its run folder.
@pytest.mark.slow
def test_commands_take_the_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    train_tiny(capsys, run, epochs=1)
    rc, out, err = run_cli(capsys, "sample", str(run), "--n", "4", "--out", str(tmp_path / "s.png"))
    assert rc == 0 and (tmp_path / "s.png").is_file(), err
    rc, out, err = run_cli(capsys, "evaluate", str(run), "--k", "2", "--device", "cpu",
                           "--json", str(tmp_path / "e.json"))
    assert rc == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["checkpoint"] == str(run / "checkpoint.pt")
    rc, _, err = run_cli(capsys, "experiment", "loss-curves", "--run", str(run / "checkpoint.pt"),
                         "--out", str(tmp_path / "lc"))
    assert rc == 0 and (tmp_path / "lc" / "loss_curves.png").is_file(), err
    rc, _, err = run_cli(capsys, "sample", str(tmp_path))
    assert rc == 2 and f"{tmp_path} holds no checkpoint.pt" in one_line_error(err)


# 7: titles fit their figure.
def texts_inside(fig) -> None:
    """Every title and suptitle of ``fig`` (drawn) lies inside the figure."""
    fig.canvas.draw()
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    texts = list(fig.texts) + [ax.title for ax in fig.axes]
    assert any(t.get_text() for t in texts)
    for t in texts:
        if t.get_text():
            e = t.get_window_extent(renderer)
            assert box.x0 <= e.x0 and e.x1 <= box.x1 and e.y1 <= box.y1, t.get_text()


def test_titles_fit(tmp_path, monkeypatch):
    from fastvae.studies.experiments import figures

    figs = []

    real = plots.save_figure

    def keep(fig, path):
        figs.append(fig)
        return real(fig, path)

    monkeypatch.setattr(figures, "save_figure", keep)
    monkeypatch.setattr(plots, "save_figure", keep)
    long = "MLPVAE, latent 20, beta 1, 10 epochs: first two principal components of the means"
    images = torch.rand(32, 1, 28, 28)
    figures.image_panels([images], [long], tmp_path / "a.png")
    figures.image_panels([images] * 4, [long] * 4, tmp_path / "b.png", suptitle=long * 2)
    figures.latent_scatter(torch.randn(50, 2), torch.arange(50) % 10, list("0123456789"),
                           tmp_path / "c.png", title=long)
    plots.plot_loss_curves([{"epoch": 1, "train_loss": 1, "test_loss": 1, "train_kl": 0,
                             "test_kl": 0}], tmp_path / "d.png", title=long * 2)
    plots.save_grid(images, tmp_path / "e.png", title=long)
    assert len(figs) == 5
    for fig in figs:
        texts_inside(fig)
    text, points = plots.fit_title(figs[0], "x" * 300)  # one word wider than the figure
    assert "\n" not in text and points < 12


@pytest.mark.slow
def test_run_grids_say_what_and_which_epoch(tmp_path, capsys, monkeypatch):
    titles = {}
    real = plots.save_grid

    def record(images, path, nrow=8, title=None):
        titles[Path(path).name] = title
        return real(images, path, nrow=nrow, title=title)

    monkeypatch.setattr(plots, "save_grid", record)
    train_tiny(capsys, tmp_path / "run", epochs=2)
    assert titles == {
        "samples.png": "MLPVAE bernoulli, latent 2, beta 1, epoch 2: 64 samples, z ~ N(0, I)",
        "reconstructions.png": "MLPVAE bernoulli, latent 2, beta 1, epoch 2: 10 test images "
                               "(top) and their reconstructions (bottom)",
    }


# 8: originals and reconstructions aligned for any number of images.
@pytest.mark.parametrize("n", [1, 7, 8, 10, 32])
def test_reconstructions_sit_below_their_originals(n):
    x = torch.rand(n, 1, 4, 4) + 1  # > 0: distinguishable from the blank padding
    recon = -x
    grid = plots.paired_rows(x, recon, nrow=8)
    rows = -(-n // 8)
    assert grid.shape[0] == 2 * rows * 8
    for i in range(n):
        assert torch.equal(grid[i], x[i]) and torch.equal(grid[rows * 8 + i], recon[i])
    assert not grid[n:rows * 8].any() and not grid[rows * 8 + n:].any()


# 9: bad flag values are one line naming the flag; --help states each default once.
@pytest.mark.parametrize("argv, flag", [
    (["train", "--device", "gpu"], "--device must be auto, cpu, cuda"),
    (["sample", "run", "--nrow", "0"], "argument --nrow: must be an integer >= 1, got 0"),
    (["evaluate", "run", "--limit", "0"], "argument --limit: must be an integer >= 1 or 'all'"),
    (["train", "--limit-test", "0"], "argument --limit-test: must be an integer >= 1 or 'all'"),
    (["train", "--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["train", "--batch-size", "10", "--grad-accum", "3"],
     "--batch-size must be a multiple of --grad-accum: got 10 and 3"),
    (["train", "--dataset", "animal-faces", "--binarize", "static"],
     "--binarize is for MNIST; --dataset animal-faces takes none"),
    (["experiment", "latent-sweep", "--epochs", "x"], "argument --epochs: must be an integer"),
    (["experiment", "reconstructions", "--grayscale"],
     "--grayscale is for --dataset animal-faces"),
    (["train", "--logvar-floor", "low"],
     "argument --logvar-floor: must be a number, 'auto' or 'none', got 'low'"),
])
def test_bad_values_name_the_flag(tmp_path, capsys, argv, flag):
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2 and flag in one_line_error(err)


def parsers(parser):
    """``parser`` and every sub-command parser under it."""
    yield parser
    for action in parser._actions:
        for sub in getattr(action, "choices", None) or {}:
            if isinstance(action.choices, dict):
                yield from parsers(action.choices[sub])


def test_help_states_each_default_once(capsys):
    seen = 0
    for parser in parsers(cli.build_parser()):
        for action in parser._actions:
            if action.help and action.help is not argparse.SUPPRESS:
                assert action.help.lower().count("default") <= 1, (parser.prog, action.dest)
                seen += 1
    assert seen > 50
    rc, out, _ = run_cli(capsys, "train", "--help")
    assert rc == 0 and "--image-size IMAGE_SIZE" in out and "(default: None)" not in out
    assert "seed of every random stream (default: 0)" in out
    assert "MLP encoder hidden widths (the decoder mirrors them) (default: 400)" in " ".join(
        out.split())


# 10: Ctrl-C says which checkpoint is kept and how to resume.
def interrupt_at_epoch(monkeypatch, at):
    real = Engine.train_epoch

    def epoch(self, e, *args, **kwargs):
        if e == at:
            raise KeyboardInterrupt
        return real(self, e, *args, **kwargs)

    monkeypatch.setattr(Engine, "train_epoch", epoch)


@pytest.mark.slow
def test_ctrl_c_names_the_kept_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    interrupt_at_epoch(monkeypatch, 2)
    rc, _, err = run_cli(capsys, "train", *TINY, "--epochs", "3", "--out", str(run))
    assert rc == 130
    assert one_line_error(err) == (
        f"fastvae: interrupted in epoch 2 of 3; {run / 'checkpoint.pt'} (epoch 1) is kept: "
        f"continue with `fastvae train --resume {run}`")
    assert ftrain.read_checkpoint(run)["epoch"] == 1
    interrupt_at_epoch(monkeypatch, 1)
    rc, _, err = run_cli(capsys, "train", *TINY, "--out", str(tmp_path / "new"))
    assert rc == 130 and "before the first checkpoint: nothing was kept" in one_line_error(err)
    assert not (tmp_path / "new").exists()


# 11: nothing is created before the arguments and the data are checked.
@pytest.mark.slow
def test_a_failed_start_leaves_nothing(tmp_path, capsys, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    res = subprocess.run(
        [sys.executable, "-m", "fastvae", "train", "--backend", "triton", "--device", "cpu",
         "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120,
    )
    assert res.returncode == 2 and "--backend triton cannot run on --device cpu" in res.stderr
    one_line_error(res.stderr)
    assert not (tmp_path / "run").exists()
    # A failure inside epoch 1 (a non-finite loss here) removes the new folder too.
    monkeypatch.setattr(Engine, "train_epoch", lambda *a, **k: (_ for _ in ()).throw(
        ftrain.NonFiniteLossError("non-finite training loss at epoch 1")))
    rc, _, err = run_cli(capsys, "train", *TINY, "--out", str(tmp_path / "nan" / "run"))
    assert rc == 1 and not (tmp_path / "nan").exists()


def test_an_experiment_without_data_leaves_nothing(tmp_path, monkeypatch, capsys):
    from fastvae.data import DataNotFoundError

    def no_data(cfg, train, device):
        raise DataNotFoundError("MNIST was not found under nowhere")

    monkeypatch.setattr(build, "load_split", no_data)
    for name in ("latent-sweep", "reconstructions"):
        rc, _, err = run_cli(capsys, "experiment", name, "--quick", "--device", "cpu",
                             "--out", str(tmp_path / "x" / name))
        assert rc == 2 and "MNIST was not found" in one_line_error(err)
    assert not (tmp_path / "x").exists()


def test_missing_mnist_leaves_no_empty_folders(tmp_path, monkeypatch, capsys):
    import torchvision.datasets.mnist

    from fastvae.data import DataNotFoundError, load_mnist

    def no_download(self):
        (Path(self.raw_folder)).mkdir(parents=True, exist_ok=True)  # as torchvision does
        raise RuntimeError("downloads are disabled in this test")

    monkeypatch.setattr(torchvision.datasets.mnist.MNIST, "download", no_download)
    root = tmp_path / "data"
    with pytest.raises(DataNotFoundError, match="MNIST was not found"):
        load_mnist(root=root)
    assert not root.exists()


# 12: non-finite final metrics fail the run.
@pytest.mark.slow
def test_nonfinite_final_metrics_fail(tmp_path, capsys, monkeypatch):
    nan = float("nan")
    monkeypatch.setattr("fastvae.train.loop.evaluate",
                        lambda *a, **k: {"loss": nan, "recon": nan, "kl": 0.0})
    run = tmp_path / "run"
    rc, _, err = run_cli(capsys, "train", *TINY, "--nonfinite", "skip", "--out", str(run))
    line = one_line_error(err)
    assert rc == 1 and "the final test metrics are not finite (test_loss nan" in line
    assert "--nonfinite skip" in line and str(run / "checkpoint.pt") in line


# 13: training prints its thread count once.
@pytest.mark.slow
def test_training_prints_its_thread_count_once(tmp_path, capsys):
    out = train_tiny(capsys, tmp_path / "run", epochs=2)
    lines = [line for line in out.splitlines() if "CPU threads" in line]
    assert lines == [f"training on cpu; CPU threads: {torch.get_num_threads()} (set "
                     "OMP_NUM_THREADS=N to change; see the README)"]


@pytest.mark.parametrize("n, c, nrow", [(1, 1, 8), (7, 1, 8), (8, 3, 8), (10, 1, 4), (32, 3, 8)])
def test_tile_lays_images_out_as_torchvision_make_grid(n, c, nrow):
    from torchvision.utils import make_grid

    images = torch.rand(n, c, 5, 6)
    assert torch.equal(plots.tile(images, nrow=nrow), make_grid(images, nrow=nrow, padding=2))


@pytest.mark.slow
def test_training_on_mnist_does_not_import_torchvision(tmp_path):
    """MNIST is read from its checked IDX files and the run's grids are tiled without
    torchvision (whose import is 2 s of a CPU run); torchvision stays for downloads, AFHQ."""
    from test_data import HAVE_MNIST, NO_MNIST

    if not HAVE_MNIST:
        pytest.skip(NO_MNIST)
    code = ("import sys; from fastvae.cli import main; "
            f"main(['train', *{TINY!r}, '--epochs', '1', '--out', {str(tmp_path / 'run')!r}]); "
            "print('torchvision' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False"
