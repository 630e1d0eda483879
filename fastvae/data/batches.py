"""Batches over device-resident uint8 images: one epoch is one ``iter()``, no DataLoader.

Batches are cut by index from a permutation drawn from a ``torch.Generator`` on the images'
device, converted to float in [0, 1] on the fly and optionally binarized. There are no
DataLoader workers and no per-item PIL transforms (which dominate the epoch time of the usual
torchvision pipeline on MNIST).
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch

from fastvae import _checks
from fastvae.data.mnist import load_mnist, static_binarize

BINARIZE = ("none", "dynamic", "static")


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
