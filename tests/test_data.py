"""Data: the data root, real MNIST (when $FASTVAE_DATA has it), the batch iterator, errors."""

import os
from pathlib import Path

import pytest
import torch

from fastvae import data as fdata
from fastvae.data import DataNotFoundError, ImageBatches, data_root, load_mnist, static_binarize


def mnist_root():
    """$FASTVAE_DATA if it holds the four MNIST files, else None."""
    root = os.environ.get("FASTVAE_DATA")
    if not root:
        return None
    raw = Path(root) / "MNIST" / "raw"
    return root if all((raw / f).is_file() for f in fdata.MNIST_FILES) else None


HAVE_MNIST = mnist_root() is not None
NO_MNIST = (
    "needs MNIST: put the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte) in DIR/MNIST/raw/ and run "
    "`FASTVAE_DATA=DIR pytest` (`FASTVAE_DATA=DIR fastvae train --epochs 1` downloads them "
    "there when a network is available)"
)
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=NO_MNIST)


def synthetic(n=10, h=4, w=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, h, w), generator=g, dtype=torch.uint8)
    return images, torch.arange(n)


def test_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTVAE_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv("FASTVAE_DATA")
    assert data_root() == Path("data")


@needs_mnist
def test_real_mnist_loads():
    train = load_mnist(True)
    test = load_mnist(False)
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 28, 28) and test.images.dtype == torch.uint8
    assert train.labels.shape == (60000,) and train.labels.dtype == torch.int64
    assert test.labels.shape == (10000,)
    assert train.labels.bincount().tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the published first labels
    assert train.images.max() == 255 and train.images.min() == 0
    # Mean intensity of MNIST's training images: 0.1307 (the usual normalization constant).
    assert abs(train.images.float().mean().item() / 255 - 0.1307) < 1e-3
    small = load_mnist(False, limit=100)
    assert small.images.shape == (100, 28, 28)
    assert torch.equal(small.images, test.images[:100])


@needs_mnist
def test_real_mnist_batches():
    b = fdata.mnist_batches(True, 256, limit=1000)
    assert len(b) == 4
    x, y = next(iter(b))
    assert x.shape == (256, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (256,) and y.dtype == torch.int64
    assert 0 <= x.min() and x.max() <= 1 and x.max() > 0.99


def test_batches_cover_every_image_once_per_epoch():
    images, labels = synthetic(10)
    b = ImageBatches(images, labels, 4, seed=0)
    assert len(b) == 3
    epochs = []
    for _ in range(2):
        xs, ys = zip(*b)
        assert [x.shape[0] for x in xs] == [4, 4, 2]
        assert all(x.shape[1:] == (1, 4, 3) and x.dtype == torch.float32 for x in xs)
        y = torch.cat(ys)
        assert sorted(y.tolist()) == list(range(10))
        # Each image stays paired with its label: x == images[y] / 255.
        torch.testing.assert_close(torch.cat(xs), images[y].unsqueeze(1).float() / 255)
        epochs.append(y.tolist())
    assert epochs[0] != epochs[1], "a new order every epoch"
    again = [torch.cat([y for _, y in ImageBatches(images, labels, 4, seed=0)]).tolist()]
    assert again[0] == epochs[0], "same seed, same first epoch"
    assert len(ImageBatches(images, labels, 4, drop_last=True)) == 2
    plain = torch.cat([y for _, y in ImageBatches(images, labels, 4, shuffle=False)])
    assert plain.tolist() == list(range(10))


def test_binarization_modes():
    images, labels = synthetic(50, 8, 8)
    images[0] = 0
    images[1] = 255

    def epoch(b):
        return torch.cat([x for x, _ in b])

    cont = epoch(ImageBatches(images, labels, 16, shuffle=False))
    torch.testing.assert_close(cont, images.unsqueeze(1).float() / 255, rtol=0, atol=0)
    assert len(cont.unique()) > 2

    dyn = ImageBatches(images, labels, 16, shuffle=False, binarize="dynamic", seed=0)
    d1, d2 = epoch(dyn), epoch(dyn)
    for d in (d1, d2):
        assert set(d.unique().tolist()) == {0.0, 1.0}
        assert (d[0] == 0).all() and (d[1] == 1).all()
    assert not torch.equal(d1, d2), "dynamic binarization must resample every epoch"
    # Bernoulli(p): the mean of the binary pixels tracks the intensities.
    assert abs(d1.mean().item() - cont.mean().item()) < 0.02

    st = ImageBatches(images, labels, 16, shuffle=False, binarize="static", seed=0)
    s1, s2 = epoch(st), epoch(st)
    assert set(s1.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(s1, s2), "static binarization must not change between epochs"
    other_seed = epoch(ImageBatches(images, labels, 16, shuffle=False, binarize="static", seed=5))
    assert torch.equal(s1, other_seed), "static binarization uses its own fixed seed"
    assert abs(s1.mean().item() - cont.mean().item()) < 0.02
    torch.testing.assert_close(s1, static_binarize(images).unsqueeze(1).float(), rtol=0, atol=0)


def test_batches_reject_bad_input():
    images, labels = synthetic(4)
    with pytest.raises(TypeError, match="uint8"):
        ImageBatches(images.float(), labels, 2)
    with pytest.raises(ValueError, match="binarize"):
        ImageBatches(images, labels, 2, binarize="yes")
    with pytest.raises(ValueError, match="labels"):
        ImageBatches(images, labels[:3], 2)


def _no_download(self):
    raise RuntimeError("downloads are disabled in this test")


def test_missing_mnist_gives_a_clear_error(monkeypatch, tmp_path):
    import torchvision.datasets.mnist

    monkeypatch.setattr(torchvision.datasets.mnist.MNIST, "download", _no_download)
    monkeypatch.setenv("FASTVAE_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError) as info:
        load_mnist(True)
    err = info.value
    assert isinstance(err, FileNotFoundError)
    msg = str(err)
    assert str(tmp_path / "MNIST" / "raw") in msg
    assert "FASTVAE_DATA" in msg and "train-images-idx3-ubyte" in msg
    assert "downloads are disabled in this test" in msg  # the reason, in one line
    assert "\n" not in msg
    assert err.__cause__ is None and err.__suppress_context__  # no chained library traceback


def write_idx(path, array):
    """A uint8 IDX file (the MNIST format) holding ``array``."""
    head = bytes([0, 0, 8, array.dim()]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(head + array.numpy().tobytes())


def fake_mnist(root, n=6):
    """Four small valid MNIST files under root/MNIST/raw (n images per split)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images, labels = synthetic(n, 28, 28)
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", (labels % 10).to(torch.uint8))
    return raw, images, labels


def test_small_valid_mnist_files_load(tmp_path):
    _, images, labels = fake_mnist(tmp_path)
    split = load_mnist(True, tmp_path)
    assert torch.equal(split.images, images) and torch.equal(split.labels, labels % 10)


def _truncate(p):
    p.write_bytes(p.read_bytes()[:-100])


def _extend(p):
    p.write_bytes(p.read_bytes() + b"\0")


def _gzip(p):
    import gzip

    p.write_bytes(gzip.compress(p.read_bytes()))


def _header_only(p):
    p.write_bytes(p.read_bytes()[:6])


def _float_type(p):
    data = bytearray(p.read_bytes())
    data[2] = 0x0D
    p.write_bytes(bytes(data))


def _text(p):
    p.write_text("<html>404 Not Found</html>")


def _wrong_size(p):
    write_idx(p, torch.zeros(6, 32, 32, dtype=torch.uint8))


def _fewer_labels(p):
    write_idx(p, torch.zeros(5, dtype=torch.uint8))


def _label_12(p):
    write_idx(p, torch.full((6,), 12, dtype=torch.uint8))


CORRUPT = [
    ("truncated images", "train-images-idx3-ubyte", _truncate,
     r"is truncated \(4620 bytes; its header, shape 6 x 28 x 28, needs 4720\)"),
    ("extra bytes", "train-images-idx3-ubyte", _extend,
     r"is longer than its header says \(4721 bytes"),
    ("gzip left compressed", "train-labels-idx1-ubyte", _gzip, r"gzip-compressed; decompress it"),
    ("header cut", "train-images-idx3-ubyte", _header_only,
     r"truncated \(6 bytes, shorter than its header\)"),
    ("float data", "train-images-idx3-ubyte", _float_type,
     r"header starts with 00000d03, expected 00000803"),
    ("an HTML page", "train-labels-idx1-ubyte", _text,
     r"header starts with 3c68746d, expected 00000801"),
    ("32x32 images", "train-images-idx3-ubyte", _wrong_size,
     r"header gives shape 6 x 32 x 32, expected N x 28 x 28"),
    ("fewer labels", "train-labels-idx1-ubyte", _fewer_labels, r"header gives shape 5, expected 6"),
    ("label 12", "train-labels-idx1-ubyte", _label_12,
     r"must be digits 0..9, got values from 12 to 12"),
]


@pytest.mark.parametrize("case", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_mnist_file_is_named(tmp_path, case):
    _, name, corrupt, message = case
    raw, _, _ = fake_mnist(tmp_path)
    corrupt(raw / name)
    with pytest.raises(fdata.DataCorruptError, match=message) as info:
        load_mnist(True, tmp_path)
    assert name in str(info.value)
    load_mnist(False, tmp_path)  # the other split's files are fine and still load


def test_missing_mnist_file_is_named(monkeypatch, tmp_path):
    import torchvision.datasets.mnist

    monkeypatch.setattr(torchvision.datasets.mnist.MNIST, "download", _no_download)
    raw, _, _ = fake_mnist(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataNotFoundError, match=r"\(t10k-labels-idx1-ubyte not found\)"):
        load_mnist(False, tmp_path)


def test_corrupt_data_is_one_clear_cli_message(tmp_path, capsys, monkeypatch):
    from fastvae import cli

    raw, _, _ = fake_mnist(tmp_path)
    _truncate(raw / "train-images-idx3-ubyte")
    monkeypatch.setenv("FASTVAE_DATA", str(tmp_path))
    rc = cli.main(["train", "--device", "cpu", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"MNIST file {raw / 'train-images-idx3-ubyte'} is not a valid uint8 IDX file" in err
    assert not (tmp_path / "run").exists(), "no run folder for a run that never started"
