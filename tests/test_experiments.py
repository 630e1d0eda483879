"""`fastvae experiment NAME`: each one writes its PNGs and a report.md that embeds them with
the numbers (tiny --quick runs on real MNIST)."""

import re

import pytest
import torch
from PIL import Image
from test_data import HAVE_MNIST, NO_MNIST

from fastvae import cli
from fastvae.studies.experiments import EXPERIMENTS, figures
from fastvae.studies.experiments.common import read_metrics

# every test here trains or starts processes
pytestmark = [pytest.mark.skipif(not HAVE_MNIST, reason=NO_MNIST), pytest.mark.slow]
TINY = ["--quick", "--limit-train", "256", "--limit-test", "100", "--device", "cpu"]


def run(*args):
    rc = cli.main(["experiment", *args])
    assert rc == 0


def check_report(folder, pngs):
    text = (folder / "report.md").read_text()
    assert text.startswith("# ") and "fastvae experiment" in text
    for name in pngs:
        assert f"]({name})" in text, f"report.md does not embed {name}"
        with Image.open(folder / name) as im:
            assert im.format == "PNG" and min(im.size) > 100
    return text


def table_rows(text):
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if re.match(r"\| [0-9]", line)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exp")
    run("latent-scatter", *TINY, "--out", str(folder / "scatter"))  # trains its own model
    return folder, folder / "scatter" / "run"


def test_every_experiment_has_a_command():
    parser = cli.build_parser()
    experiment = parser._subparsers._group_actions[0].choices["experiment"]
    names = experiment._subparsers._group_actions[0].choices
    assert set(names) == set(EXPERIMENTS)


def test_latent_sweep(tmp_path):
    run("latent-sweep", *TINY, "--latent-dims", "2", "3", "--out", str(tmp_path))
    text = check_report(tmp_path, ["samples.png"])
    rows = table_rows(text)
    assert [r[0] for r in rows] == ["2", "3"]
    for dims, row in zip((2, 3), rows):
        last = read_metrics(tmp_path / f"latent-{dims}" / "metrics.csv")[-1]
        assert float(row[1]) == pytest.approx(last["test_loss"], abs=0.006)
        assert float(row[3]) == pytest.approx(last["test_kl"], abs=0.006)


def test_beta_sweep(tmp_path):
    run("beta-sweep", *TINY, "--betas", "1", "4", "--out", str(tmp_path))
    text = check_report(tmp_path, ["latent_grids.png"])
    assert [r[0] for r in table_rows(text)] == ["1", "4"]
    assert (tmp_path / "beta-4" / "checkpoint.pt").is_file()


def test_latent_scatter_trained_a_2d_model(tiny_run):
    folder, run_dir = tiny_run
    check_report(folder / "scatter", ["latent_scatter.png"])
    assert (run_dir / "checkpoint.pt").is_file()


@pytest.mark.parametrize("name, png", [
    ("reconstructions", "reconstructions.png"),
    ("interpolation", "interpolation.png"),
    ("loss-curves", "loss_curves.png"),
])
def test_single_model_experiments_reuse_a_run(tiny_run, name, png):
    folder, run_dir = tiny_run
    run(name, "--run", str(run_dir), "--out", str(folder / name))
    check_report(folder / name, [png])
    assert not (folder / name / "run").exists(), "--run must not train again"


def test_decoded_grid_and_pca():
    torch.manual_seed(0)
    from fastvae.models import MLPVAE

    m = MLPVAE((1, 4, 4), (8,), latent_dim=2)
    grid = figures.decoded_latent_grid(m, n=5, limit=4.0)
    assert grid.shape == (25, 1, 4, 4)
    # Row-major with z2 decreasing down the rows: the centre image decodes z = (0, 0).
    centre = m.to_data_space(m.decode_params(torch.zeros(1, 2))[0])
    torch.testing.assert_close(grid[12], centre[0])
    with pytest.raises(ValueError, match="latent_dim 2"):
        figures.decoded_latent_grid(MLPVAE((1, 4, 4), (8,), latent_dim=3))
    pts = torch.randn(200, 3) * torch.tensor([5.0, 1.0, 0.1])
    proj, explained = figures.pca_2d(pts)
    assert proj.shape == (200, 2) and explained[0] > 0.9 and explained[0] > explained[1]
