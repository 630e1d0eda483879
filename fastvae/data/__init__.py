"""Data: MNIST and Animal Faces as device-resident uint8 tensors, and batches over them.

- :mod:`fastvae.data.mnist`: :func:`load_mnist` (torchvision's MNIST files, checked);
- :mod:`fastvae.data.animal_faces`: :func:`load_animal_faces` (AFHQ through ImageFolder);
- :mod:`fastvae.data.batches`: :class:`ImageBatches` (one ``iter()`` is one epoch, shuffled on
  the device), :class:`ShardedImageBatches` (one process's share under torchrun).
"""

from fastvae.data.animal_faces import CLASSES, BadImageError, load_animal_faces
from fastvae.data.batches import (
    BINARIZE,
    ImageBatches,
    ShardedImageBatches,
    mix_seed,
    mnist_batches,
)
from fastvae.data.mnist import (
    MNIST_FILES,
    STATIC_BINARIZE_SEED,
    DataCorruptError,
    DataNotFoundError,
    Split,
    data_root,
    load_mnist,
    static_binarize,
)

__all__ = [
    "BINARIZE", "CLASSES", "MNIST_FILES", "STATIC_BINARIZE_SEED", "BadImageError",
    "DataCorruptError", "DataNotFoundError", "ImageBatches", "ShardedImageBatches", "Split",
    "data_root", "load_animal_faces", "load_mnist", "mix_seed", "mnist_batches",
    "static_binarize",
]
