"""Training behaviour that single-point mutants once changed without failing a test
(tests/mutation/mutants.py names them): each data-order and binarization seed changes what
it seeds, a resumed run continues from the checkpoint's generator states and bitwise with
dropout on, and resuming refuses one epoch fewer than the checkpoint holds, or another seed."""

import csv
import json
import random
import shutil

import numpy as np
import pytest
import torch
from test_data import HAVE_MNIST, NO_MNIST

from fastvae import train as ftrain
from fastvae.data import ImageBatches, ShardedImageBatches
from fastvae.train import ConfigError, TrainConfig, resume_config
from fastvae.train import checkpoint as ckpt_io
from fastvae.train import engine as engine_mod

needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=NO_MNIST)


def _images(n=64, value=None):
    g = torch.Generator().manual_seed(0)
    if value is None:
        images = torch.randint(0, 256, (n, 4, 4), generator=g, dtype=torch.uint8)
    else:
        images = torch.full((n, 4, 4), value, dtype=torch.uint8)
    return images, torch.arange(n)


def _order(batches, epoch=None):
    if epoch is not None:
        batches.set_epoch(epoch)
    return torch.cat([y for _, y in batches])


def test_the_seed_of_image_batches_sets_the_order():
    images, labels = _images()
    a, b, c = (ImageBatches(images, labels, 16, seed=s) for s in (1, 1, 2))
    for _ in range(2):  # two epochs: the same seed, the same orders
        first = _order(a)
        assert torch.equal(first, _order(b))
        assert not torch.equal(first, _order(c)), "another seed, another order"


def test_the_seed_of_image_batches_sets_the_dynamic_pixels():
    """Dynamic binarization draws from the batches' own generator (seeded by ``seed``), not
    from torch's global one: grey images (p = 128/255) make the pixels that stream alone."""
    grey, labels = _images(value=128)

    def pixels(seed, global_seed):
        torch.manual_seed(global_seed)
        batches = ImageBatches(grey, labels, 16, shuffle=False, binarize="dynamic", seed=seed)
        return torch.cat([x for x, _ in batches])

    base = pixels(1, 0)
    assert torch.equal(base, pixels(1, 1)), "the global generator must not matter"
    assert not torch.equal(base, pixels(2, 0)), "another seed, other pixels"


def test_the_seed_of_sharded_batches_sets_the_order_and_the_pixels():
    images, labels = _images()
    for epoch in (1, 2):
        a, b, c = (ShardedImageBatches(images, labels, 16, seed=s) for s in (1, 1, 2))
        first = _order(a, epoch)
        assert torch.equal(first, _order(b, epoch))
        assert not torch.equal(first, _order(c, epoch)), "another seed, another order"
    # Dynamic binarization draws from (seed, epoch, rank): grey images (p = 128/255) make the
    # pixels depend on that stream alone.
    grey, labels = _images(value=128)

    def pixels(seed, rank, epoch=1):
        batches = ShardedImageBatches(grey, labels, 16, rank=rank, world_size=2, seed=seed,
                                      binarize="dynamic")
        batches.set_epoch(epoch)
        return torch.cat([x for x, _ in batches])

    base = pixels(1, 0)
    assert torch.equal(base, pixels(1, 0))
    for other in (pixels(2, 0), pixels(1, 1), pixels(1, 0, epoch=2)):
        assert not torch.equal(base, other)


def _tiny(out, **kw):
    return TrainConfig(**{
        "epochs": 2, "batch_size": 32, "limit_train": 128, "limit_test": 100,
        "test_batch_size": 100, "hidden_dims": (32,), "latent_dim": 4, "device": "cpu",
        "out": str(out), **kw,
    })


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """A finished 2-epoch run (copy it before changing it)."""
    if not HAVE_MNIST:
        pytest.skip(NO_MNIST)
    return ftrain.train(_tiny(tmp_path_factory.mktemp("runs") / "two"))


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


def _rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in csv.DictReader(f)]


@needs_mnist
@pytest.mark.slow
def test_resume_refuses_one_epoch_fewer_than_the_checkpoint_holds(two_epochs, tmp_path, capsys):
    run = _copy(two_epochs, tmp_path)
    config = (run / "config.json").read_text()
    with pytest.raises(ConfigError, match=r"has already trained 2 epochs \(give 2 or more\)"):
        ftrain.train(resume_config(run, epochs=1), resume=True)
    assert (run / "config.json").read_text() == config, "a refused resume changes nothing"
    ftrain.train(resume_config(run, epochs=2), resume=True)  # the boundary itself: nothing to do
    assert "already trained 2 of 2 epochs; nothing to do" in capsys.readouterr().out
    assert (run / "config.json").read_text() == config


@needs_mnist
@pytest.mark.slow
def test_resume_refuses_another_seed(two_epochs, tmp_path):
    run = _copy(two_epochs, tmp_path)
    with pytest.raises(ConfigError, match=r"differs in seed \(checkpoint 0, now 1\)"):
        ftrain.train(_tiny(run, seed=1), resume=True)


def _draws():
    return random.random(), float(np.random.random()), torch.rand(1).item()


@needs_mnist
@pytest.mark.slow
def test_a_resumed_run_continues_from_the_checkpoints_generator_states(two_epochs, tmp_path,
                                                                        monkeypatch):
    """The global generators (Python, NumPy, torch) hold the checkpoint's states when the
    resumed epochs begin, not the states a fresh process seeds: checkpoint states from
    another seed are put into the checkpoint, and the resumed run must start from them."""
    run = _copy(two_epochs, tmp_path)
    saved = ckpt_io.read_checkpoint(run)
    outside = ckpt_io.rng_state(torch.device("cpu"))
    random.seed(4242)
    np.random.seed(4242)
    torch.manual_seed(4242)
    injected = ckpt_io.rng_state(torch.device("cpu"))
    expected = _draws()
    ckpt_io.set_rng_state(outside, torch.device("cpu"))
    saved["rng_states"] = [injected]
    ckpt_io.save_checkpoint(saved, run / "checkpoint.pt")
    seen = []
    original = engine_mod.Engine.train_epoch

    def first_epoch_draws(self, epoch, batches, **kwargs):
        if not seen:
            state = ckpt_io.rng_state(torch.device("cpu"))
            seen.append(_draws())
            ckpt_io.set_rng_state(state, torch.device("cpu"))  # the epoch itself as it was
        return original(self, epoch, batches, **kwargs)

    monkeypatch.setattr(engine_mod.Engine, "train_epoch", first_epoch_draws)
    ftrain.train(resume_config(run, epochs=3), resume=True)
    assert seen == [expected]


@needs_mnist
@pytest.mark.slow
def test_resume_with_dropout_is_bitwise(tmp_path):
    """Dropout draws from the global generator: a run stopped after epoch 1 and resumed ends
    with bitwise the weights, optimizer state and metrics of the uninterrupted run (same
    process, same operations)."""
    cfg = dict(dropout=0.3, binarize="dynamic")
    full = ftrain.train(_tiny(tmp_path / "full", **cfg))
    part = ftrain.train(_tiny(tmp_path / "part", epochs=1, **cfg))
    torch.manual_seed(99)  # whatever the caller's generators hold
    ftrain.train(resume_config(part, epochs=2), resume=True)
    a, b = ckpt_io.read_checkpoint(full), ckpt_io.read_checkpoint(part)
    assert a["epoch"] == b["epoch"] == 2
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    assert _rows(full) == _rows(part)
    assert json.loads((part / "config.json").read_text())["epochs"] == 2
