"""Multi-process training: the sharded batch order, and 2 Gloo processes under torchrun against
one process with the same global batch."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_data import HAVE_MNIST, NO_MNIST

from fastvae.data import ShardedImageBatches

pytestmark = pytest.mark.slow  # every test here trains or starts processes

REPO = Path(__file__).resolve().parent.parent


def images(n):
    return torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1), torch.arange(n)


@pytest.mark.parametrize("n", [48, 50])
def test_ranks_share_each_global_batch(n):
    """W ranks' k-th batches are exactly the k-th global batch of one process (rows r::W),
    epoch by epoch; with N mod W != 0 the last N mod W images of the order are dropped."""
    imgs, labels = images(n)
    one = ShardedImageBatches(imgs, labels, 8, seed=3)
    ranks = [ShardedImageBatches(imgs, labels, 8, rank=r, world_size=2, seed=3) for r in range(2)]
    for epoch in (1, 2):
        for b in (one, *ranks):
            b.set_epoch(epoch)
        globals_ = [y for _, y in one]
        shards = [[y for _, y in r] for r in ranks]
        assert len(shards[0]) == len(shards[1]) == len(ranks[0])
        kept = n - n % 2
        for k, (s0, s1) in enumerate(zip(*shards)):
            g = torch.cat(globals_)[k * 8:min((k + 1) * 8, kept)]
            assert torch.equal(s0, g[0::2]) and torch.equal(s1, g[1::2]), (epoch, k)
    one.set_epoch(1)
    first = torch.cat([y for _, y in one])
    one.set_epoch(2)
    assert not torch.equal(first, torch.cat([y for _, y in one])), "a new order every epoch"


def test_global_batch_must_split_evenly():
    with pytest.raises(ValueError, match="must be a multiple of the number of processes: got "
                       "batch_size 9 for 2 processes"):
        ShardedImageBatches(*images(20), 9, rank=0, world_size=2)


def metrics(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.skipif(not HAVE_MNIST, reason=NO_MNIST)
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="no Gloo")
def test_two_gloo_processes_match_one_process(tmp_path):
    """torchrun with 2 processes of batch 32 each vs 1 process with the global batch of 64 in
    2 micro-batches: the same images and noise per micro-batch, so the loss curves agree up to
    the order of float sums (DDP's all-reduce against accumulation). The 2-process run stops
    after 2 epochs and is resumed under torchrun for the third."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    args = [
        "train", "--limit-train", "1024", "--limit-test", "200", "--batch-size", "64",
        "--hidden-dims", "64", "--latent-dim", "8", "--device", "cpu",
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    two = subprocess.run(
        [*torchrun, "-m", "fastvae", *args, "--epochs", "2", "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert two.returncode == 0, two.stdout + two.stderr
    resumed = subprocess.run(
        [*torchrun, "-m", "fastvae", "train", "--resume", str(tmp_path / "two"), "--epochs", "3"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    one = subprocess.run(
        [sys.executable, "-m", "fastvae", *args, "--epochs", "3", "--grad-accum", "2",
         "--out", str(tmp_path / "one")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert one.returncode == 0, one.stdout + one.stderr
    # Rank 0 alone printed: one summary line per epoch.
    assert two.stdout.count("epoch 1/2:") == 1 and resumed.stdout.count("epoch 3/3:") == 1
    rows_two, rows_one = metrics(tmp_path / "two"), metrics(tmp_path / "one")
    assert len(rows_two) == len(rows_one) == 3
    worst = 0.0
    for r2, r1 in zip(rows_two, rows_one):
        for col in r1:
            if "seconds" in col or col == "epoch":
                continue
            a, b = float(r2[col]), float(r1[col])
            worst = max(worst, abs(a - b) / abs(b))
            assert a == pytest.approx(b, rel=1e-5), (r2["epoch"], col)
    print(f"largest relative difference between the curves: {worst:.2e}")
    config = (tmp_path / "two" / "config.json").read_text()
    assert '"world_size": 2' in config
    ckpt = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_states"]) == 2
