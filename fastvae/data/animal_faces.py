"""Animal Faces (AFHQ) as device-resident uint8 tensors, through
``torchvision.datasets.ImageFolder``.

AFHQ (Choi et al., "StarGAN v2", CVPR 2020) holds 512x512 JPEG faces of cats, dogs and wild
animals in the layout ``<folder>/{train,val}/{cat,dog,wild}/*.jpg`` (about 15,000 train and
1,500 val images). The default folder is ``$FASTVAE_DATA/afhq``. To get the full data set, use
the download script of the StarGAN v2 repository (github.com/clovaai/stargan-v2:
``bash download.sh afhq-dataset``, which unpacks ``data/afhq/{train,val}``), then point
``--data-dir`` (or ``$FASTVAE_DATA/afhq``) at the unpacked ``afhq`` folder.

Every image is loaded once, resized so that its shorter side is ``image_size`` and
center-cropped to ``image_size x image_size`` (``transforms.Resize`` + ``CenterCrop``), and
stored as uint8 ``(N, 3, S, S)``: at 128 px the full training split is about 0.7 GB.

Files that are not plain RGB images are handled as documented here and tested:

- grayscale, palette, RGBA (and any other PIL mode) images are converted to RGB with
  ``PIL.Image.convert("RGB")`` (the ImageFolder loader); an alpha channel is dropped, not
  composited;
- files whose extension is not an image extension (``torchvision.datasets.folder.IMG_EXTENSIONS``:
  a README, a ``.DS_Store``) are skipped, as ImageFolder does;
- a file with an image extension that cannot be decoded (truncated, or not an image at all)
  stops loading with :class:`BadImageError`, naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from fastvae import _checks
from fastvae.data.mnist import DataNotFoundError, Split, data_root

CLASSES = ("cat", "dog", "wild")
DEFAULT_IMAGE_SIZE = 128


class BadImageError(ValueError):
    """An image file of the folder could not be decoded; the message names the file."""


def default_folder() -> Path:
    """``$FASTVAE_DATA/afhq`` (``./data/afhq`` when FASTVAE_DATA is unset)."""
    return data_root() / "afhq"


def _missing_error(split_dir: Path) -> DataNotFoundError:
    return DataNotFoundError(
        f"Animal Faces (AFHQ) was not found: {split_dir} is missing or holds no class folder "
        f"with images. Expected AFHQ's layout <folder>/{{train,val}}/{{cat,dog,wild}}/*.jpg. "
        f"Get it with the StarGAN v2 repository's script (github.com/clovaai/stargan-v2: "
        f"`bash download.sh afhq-dataset`) and pass the unpacked afhq folder as --data-dir "
        f"(default $FASTVAE_DATA/afhq)."
    )


def load_animal_faces(
    train: bool = True,
    folder: str | os.PathLike | None = None,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    classes: Sequence[str] | None = None,
    limit: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    grayscale: bool = False,
) -> tuple[Split, tuple[str, ...]]:
    """One split of AFHQ as tensors on ``device``.

    Args:
        train: the ``train`` split if True, else ``val``.
        folder: the AFHQ folder holding ``train/`` and ``val/`` (default :func:`default_folder`).
        image_size: S; images become ``S x S`` (shorter side resized to S, then center crop).
        classes: keep only these class folders (e.g. ``["cat"]``); default all of them.
        limit: keep only the first ``limit`` images (in ImageFolder's sorted order).
        device: where the tensors go.
        progress: show a tqdm bar while decoding.
        grayscale: one channel: each RGB image converted to luminance by PIL's
            ``convert("L")`` (L = 0.299 R + 0.587 G + 0.114 B, ITU-R 601-2), giving
            ``(N, 1, S, S)``.

    Returns:
        ``(split, class_names)``: :class:`fastvae.data.Split` with images uint8
        ``(N, 3, S, S)`` (``(N, 1, S, S)`` with ``grayscale``) and labels int64 ``(N,)``
        indexing ``class_names`` (all the class folders found, sorted, so labels keep their
        meaning under a class filter).

    Raises:
        DataNotFoundError: the split folder is missing or has no images (says how to get AFHQ).
        ValueError: an unknown class in ``classes``, a bad image_size or limit, or (as
            :class:`BadImageError`) an image file that cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    _checks.positive_int("image_size", image_size)
    if limit is not None:
        _checks.positive_int("limit", limit)
    folder = Path(folder) if folder is not None else default_folder()
    split_dir = folder / ("train" if train else "val")
    try:
        ds = ImageFolder(str(split_dir))
    except FileNotFoundError:
        raise _missing_error(split_dir) from None
    names = tuple(ds.classes)
    samples = ds.samples
    if classes is not None:
        unknown = sorted(set(classes) - set(names))
        if unknown:
            raise ValueError(
                f"classes must be among the class folders of {split_dir} ({', '.join(names)}); "
                f"got unknown {', '.join(map(repr, unknown))}"
            )
        keep = {ds.class_to_idx[c] for c in classes}
        samples = [s for s in samples if s[1] in keep]
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise _missing_error(split_dir)

    resize = transforms.Compose([
        transforms.Resize(image_size),
        transforms.CenterCrop(image_size),
        transforms.PILToTensor(),
    ])
    channels = 1 if grayscale else 3
    images = torch.empty((len(samples), channels, image_size, image_size), dtype=torch.uint8)
    for i, (path, _) in enumerate(tqdm(
        samples, desc=f"AFHQ {split_dir.name}", unit="img", disable=not progress or None,
        leave=False,
    )):
        try:
            image = ds.loader(path)  # PIL, converted to RGB
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise BadImageError(f"{path} is not a readable image ({exc})") from None
        images[i] = resize(image.convert("L") if grayscale else image)
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return Split(images.to(device), labels.to(device)), names
