"""MNIST as device-resident uint8 tensors (47 MB for the whole set), read through torchvision.

The data root is ``$FASTVAE_DATA`` if set, else ``./data``; MNIST is read from
``<root>/MNIST/raw`` in torchvision's layout. Batches over the tensors:
:mod:`fastvae.data.batches`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from fastvae import _checks

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Seed of the one-off Bernoulli draw behind binarize="static": fixed, so every run and every
# training seed sees the same binary images.
STATIC_BINARIZE_SEED = 0


class DataNotFoundError(FileNotFoundError):
    """A data set is not on disk and could not be downloaded; the message says where it goes."""


class DataCorruptError(ValueError):
    """A data file is on disk but unreadable (truncated, wrong format); the message names it."""


def data_root() -> Path:
    """``$FASTVAE_DATA`` if set (and non-empty), else ``./data`` (relative to the cwd)."""
    return Path(os.environ.get("FASTVAE_DATA") or "data")


class Split(NamedTuple):
    """One split of an image data set as tensors.

    images: uint8 ``(N, H, W)`` (or ``(N, C, H, W)``), values 0..255.
    labels: int64 ``(N,)``.
    """

    images: torch.Tensor
    labels: torch.Tensor


def _missing_mnist_error(root: Path, reason: str) -> DataNotFoundError:
    raw = root / "MNIST" / "raw"
    missing = [f for f in MNIST_FILES if not (raw / f).is_file()]
    which = f" ({', '.join(missing)} not found)" if missing else ""
    return DataNotFoundError(
        f"MNIST was not found under {raw}{which} and could not be downloaded ({reason}). "
        f"Put the four uncompressed IDX files ({', '.join(MNIST_FILES)}; torchvision's layout) in "
        f"{raw}{os.sep}, or set the environment variable "
        f"FASTVAE_DATA to a folder that holds MNIST/raw/ with them (for example "
        f"`export FASTVAE_DATA=/path/to/data`); the default root is ./data."
    )


def load_mnist(
    train: bool = True,
    root: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    device: str | torch.device = "cpu",
) -> Split:
    """MNIST's train (60,000) or test (10,000) split as tensors on ``device``.

    The files in torchvision's layout (``<root>/MNIST/raw``) are checked (:func:`_check_idx`)
    and read as they are (uint8 IDX: a header, then the bytes); when one is missing,
    ``torchvision.datasets.MNIST(root, download=True)`` fetches them once (torchvision is only
    imported then).

    Args:
        train: the training split if True, else the test split.
        root: data root (default :func:`data_root`); the files live in ``<root>/MNIST/raw``.
        limit: keep only the first ``limit`` images (quick runs and tests).
        device: where the tensors go.

    Returns:
        :class:`Split` with images uint8 ``(N, 28, 28)`` and labels int64 ``(N,)``.

    Raises:
        DataNotFoundError: a file is absent and the download failed (the folders the attempt
            made are removed again); the message names the missing files, says where the four
            files must go and how to set ``FASTVAE_DATA``.
        DataCorruptError: a file of the split is there but not a complete MNIST IDX file
            (truncated, extra bytes, gzip-compressed, wrong header, labels that do not match
            the images); the message names the file and what is wrong.
    """
    if limit is not None:
        _checks.positive_int("limit", limit)
    root = Path(root) if root is not None else data_root()
    raw = root / "MNIST" / "raw"
    if not all((raw / f).is_file() for f in MNIST_FILES):
        _download(root)
    prefix = "train" if train else "t10k"
    images = _read_idx(raw / f"{prefix}-images-idx3-ubyte", (None, 28, 28))
    labels = _read_idx(raw / f"{prefix}-labels-idx1-ubyte", (images.shape[0],)).long()
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) <= 9):
        raise DataCorruptError(
            f"MNIST labels in {raw / f'{prefix}-labels-idx1-ubyte'} must be digits 0..9, got "
            f"values from {int(labels.min())} to {int(labels.max())}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return Split(images.to(device).contiguous(), labels.to(device))


def _download(root: Path) -> None:
    """Fetch MNIST into ``<root>/MNIST/raw`` with torchvision; on failure remove the folders
    the attempt made and raise DataNotFoundError."""
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    new_dirs = [d for d in (raw, raw.parent, root) if not d.exists()]
    try:
        for train in (True, False):
            MNIST(str(root), train=train, download=True)
    except Exception as exc:  # network errors, checksum errors, read-only folders...
        for d in new_dirs:  # deepest first; only the ones still empty
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _missing_mnist_error(root, f"download failed: {reason}") from None


def _read_idx(path: Path, dims: tuple[int | None, ...]) -> torch.Tensor:
    """The uint8 data of the IDX file ``path`` (checked by :func:`_check_idx`) as a tensor."""
    n = _check_idx(path, dims)
    shape = (n, *dims[1:])
    data = np.fromfile(path, dtype=np.uint8, offset=4 + 4 * len(dims))
    return torch.from_numpy(data.reshape(shape))


def _check_idx(path: Path, dims: tuple[int | None, ...]) -> int:
    """Check that ``path`` is a complete uint8 IDX file with the given dims (None: any size);
    return its first dim. The format (LeCun et al.'s MNIST page): bytes 0, 0, type 0x08
    (uint8), number of dims; then each dim as a big-endian uint32; then the data."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4 + 4 * len(dims))
    what = f"MNIST file {path} is not a valid uint8 IDX file"
    if head[:2] == b"\x1f\x8b":
        raise DataCorruptError(f"{what}: it is gzip-compressed; decompress it (gunzip) in place")
    if len(head) < 4 + 4 * len(dims):
        raise DataCorruptError(f"{what}: it is truncated ({size} bytes, shorter than its header)")
    if head[:3] != b"\x00\x00\x08" or head[3] != len(dims):
        raise DataCorruptError(
            f"{what}: its header starts with {head[:4].hex()}, expected 000008"
            f"{len(dims):02x} (uint8 data in {len(dims)} dims)"
        )
    shape = [int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(len(dims))]
    if any(want is not None and got != want for got, want in zip(shape, dims)):
        expected = " x ".join("N" if d is None else str(d) for d in dims)
        raise DataCorruptError(
            f"{what}: its header gives shape {' x '.join(map(str, shape))}, expected {expected}"
        )
    expected_size = len(head) + math.prod(shape)
    if size != expected_size:
        state = "truncated" if size < expected_size else "longer than its header says"
        raise DataCorruptError(
            f"{what}: it is {state} ({size} bytes; its header, shape "
            f"{' x '.join(map(str, shape))}, needs {expected_size}); replace the file"
        )
    return shape[0]

def static_binarize(images: torch.Tensor, seed: int = STATIC_BINARIZE_SEED) -> torch.Tensor:
    """Binarize uint8 images once: pixel ~ Bernoulli(intensity / 255), from a fixed seed.

    Returns uint8 0/1 of the input's shape and device. This is a fixed sample drawn here, NOT
    the binarized MNIST file of Larochelle & Murray (2011) used by some papers; numbers on the
    two are close but not identical.
    """
    gen = torch.Generator(device=images.device).manual_seed(seed)
    probs = images.to(torch.float32).div_(255.0)
    return torch.bernoulli(probs, generator=gen).to(torch.uint8)
