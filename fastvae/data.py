"""Data: MNIST as device-resident uint8 tensors, and a fast batch iterator over them.

The whole of MNIST is 47 MB as uint8, so it lives on the training device; batches are cut
from it by index with a permutation drawn from a ``torch.Generator``, converted to float in
[0, 1] on the fly and optionally binarized. There are no DataLoader workers and no per-item
PIL transforms (which dominate the epoch time of the usual torchvision pipeline on MNIST).

The data root is ``$FASTVAE_DATA`` if set, else ``./data``; MNIST is read from
``<root>/MNIST/raw`` in torchvision's layout.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch

from fastvae import _checks

BINARIZE = ("none", "dynamic", "static")
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

    Reads through ``torchvision.datasets.MNIST(root, train=train, download=False)``; if the
    files are missing, tries ``download=True`` once.

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
    from torchvision.datasets import MNIST

    root = Path(root) if root is not None else data_root()
    if all((root / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES):
        # Present: check the split's two files ourselves before torchvision parses them (its
        # parser asserts or reshapes without naming the file).
        prefix = "train" if train else "t10k"
        raw = root / "MNIST" / "raw"
        n_images = _check_idx(raw / f"{prefix}-images-idx3-ubyte", (None, 28, 28))
        _check_idx(raw / f"{prefix}-labels-idx1-ubyte", (n_images,))
    try:
        ds = MNIST(str(root), train=train, download=False)
    except RuntimeError:
        # The download makes <root>/MNIST/raw first; a failed one must not leave it behind.
        raw = root / "MNIST" / "raw"
        new_dirs = [d for d in (raw, raw.parent, root) if not d.exists()]
        try:
            ds = MNIST(str(root), train=train, download=True)
        except Exception as exc:  # network errors, checksum errors, read-only folders...
            for d in new_dirs:  # deepest first; only the ones still empty
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise _missing_mnist_error(root, f"download failed: {reason}") from None
    images, labels = ds.data, ds.targets
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) <= 9):
        raise DataCorruptError(
            f"MNIST labels in {ds.raw_folder}/{'train' if train else 't10k'}-labels-idx1-ubyte "
            f"must be digits 0..9, got values from {int(labels.min())} to {int(labels.max())}"
        )
    if limit is not None:
        _checks.positive_int("limit", limit)
        images, labels = images[:limit], labels[:limit]
    return Split(images.to(device).contiguous(), labels.to(device=device, dtype=torch.int64))


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


class ImageBatches:
    """Re-iterable batches from uint8 images resident on a device; one ``iter()`` = one epoch.

    Each epoch draws a permutation with ``torch.randperm`` from the iterator's generator (when
    ``shuffle``), cuts batches by index, and yields ``(x, y)``:

    - ``x``: float32 ``(B, C, H, W)`` in [0, 1] (``(B, 1, 28, 28)`` for MNIST), on the images'
      device. binarize="none": intensity / 255 (continuous); "dynamic": a fresh
      Bernoulli(intensity / 255) draw every time a batch is produced, from the generator;
      "static": binarized once at construction by :func:`static_binarize` (fixed seed
      ``STATIC_BINARIZE_SEED``, independent of ``seed``), the same values every epoch.
    - ``y``: int64 ``(B,)`` labels.

    Args:
        images: uint8 ``(N, H, W)`` or ``(N, C, H, W)``, values 0..255.
        labels: ``(N,)``.
        batch_size: B; the last batch is smaller unless ``drop_last``.
        shuffle: draw a new order every epoch (else the stored order).
        binarize: "none", "dynamic" or "static".
        seed: seeds the generator (shuffling and dynamic binarization) when ``generator`` is
            None. A generator made here lives on the images' device.
        generator: use this torch.Generator instead (same device type as the images).
        drop_last: skip a final partial batch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        binarize: str = "none",
        seed: int = 0,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ):
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 (0..255), got {images.dtype}")
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4:
            raise ValueError(f"images must be (N, H, W) or (N, C, H, W), got {tuple(images.shape)}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        _checks.choice("binarize", binarize, BINARIZE)
        _checks.positive_int("batch_size", batch_size)
        self.binarize = binarize
        self.images = static_binarize(images) if binarize == "static" else images
        # Static images are 0/1 already; the others are divided by 255 per batch (exactly as
        # torchvision's ToTensor does).
        self.divisor = 1.0 if binarize == "static" else 255.0
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator or torch.Generator(device=images.device).manual_seed(seed)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = self.num_images, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.num_images
        images, labels = self.images, self.labels
        if self.shuffle:
            # One gather of the whole (uint8) set per epoch, then contiguous slices: much
            # cheaper than a small gather per batch.
            order = torch.randperm(n, generator=self.generator, device=self.device)
            images, labels = images[order], labels[order]
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            x, y = images[lo:hi], labels[lo:hi]
            x = x.to(torch.float32).div_(self.divisor)
            if self.binarize == "dynamic":
                x = torch.bernoulli(x, generator=self.generator)
            yield x, y


def mnist_batches(
    train: bool = True,
    batch_size: int = 128,
    *,
    binarize: str = "none",
    shuffle: bool | None = None,
    seed: int = 0,
    limit: int | None = None,
    device: str | torch.device = "cpu",
    root: str | os.PathLike | None = None,
) -> ImageBatches:
    """:func:`load_mnist` then :class:`ImageBatches`: ``(x, y)`` with x ``(B, 1, 28, 28)``.

    ``shuffle`` defaults to ``train``. See :class:`ImageBatches` for binarize and seed.
    """
    split = load_mnist(train, root, limit=limit, device=device)
    return ImageBatches(
        split.images, split.labels, batch_size,
        shuffle=train if shuffle is None else shuffle, binarize=binarize, seed=seed,
    )


def mix_seed(*values: int) -> int:
    """A 64-bit seed from a tuple of integers, by NumPy's ``SeedSequence`` hashing (the
    streams of neighbouring tuples are independent; negative values are taken mod 2**63)."""
    a, b = np.random.SeedSequence([v % 2**63 for v in values]).generate_state(2)
    return int(a) << 32 | int(b)


class ShardedImageBatches(ImageBatches):
    """One process's share of the training batches, in an order that does not depend on the
    number of processes (``torch.utils.data.DistributedSampler`` over device-resident images).

    Every epoch, :meth:`set_epoch` seeds the sampler with ``seed + epoch``: all ranks draw the
    same permutation of the N images (the same one for any world size W) and rank r keeps the
    images at positions r, r + W, r + 2W, ... of it (the sampler drops the last ``N mod W`` so
    that all ranks hold ``N // W``). Cut into per-rank batches of ``global_batch_size // W``,
    the k-th batches of all ranks together are exactly the images at positions
    ``k * global_batch_size ...`` of the permutation: the k-th global batch of a
    single-process run, rank r holding its rows ``r::W``. With ``N mod W == 0`` every world
    size sees the same global batches.

    ``binarize="dynamic"`` draws its Bernoulli pixels from a generator reseeded every epoch
    from ``(seed, epoch, rank)``: reproducible and resumable, but not the same pixels for
    different world sizes. Nothing here keeps state between epochs except ``set_epoch``'s
    argument, so a resumed run continues the same order.

    Args:
        images, labels, binarize: as :class:`ImageBatches`.
        global_batch_size: images per optimizer step over all ranks; a multiple of
            ``world_size``.
        rank, world_size: this process's place in the job.
        seed: seeds the permutation (with the epoch) and the dynamic binarization.

    Raises:
        ValueError: ``global_batch_size`` is not a multiple of ``world_size``; fewer images
            than ranks.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        global_batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        binarize: str = "none",
        seed: int = 0,
    ):
        from torch.utils.data import DistributedSampler

        _checks.positive_int("global_batch_size", global_batch_size)
        if global_batch_size % world_size:
            raise ValueError(
                f"batch_size (the global batch) must be a multiple of the number of processes: "
                f"got batch_size {global_batch_size} for {world_size} processes"
            )
        if images.shape[0] < world_size:
            raise ValueError(f"{images.shape[0]} images cannot be shared by {world_size} processes")
        super().__init__(
            images, labels, global_batch_size // world_size, shuffle=True, binarize=binarize,
            seed=seed,
        )
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.sampler = DistributedSampler(
            range(self.num_images), num_replicas=world_size, rank=rank, shuffle=True,
            seed=seed, drop_last=True,
        )
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Select the order (and dynamic-binarization stream) of epoch ``epoch``."""
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(mix_seed(self.seed, epoch, self.rank))

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.int64).to(self.device)
        images, labels = self.images[order], self.labels[order]
        for i in range(len(self)):
            lo = i * self.batch_size
            x, y = images[lo:lo + self.batch_size], labels[lo:lo + self.batch_size]
            x = x.to(torch.float32).div_(self.divisor)
            if self.binarize == "dynamic":
                x = torch.bernoulli(x, generator=self.generator)
            yield x, y
