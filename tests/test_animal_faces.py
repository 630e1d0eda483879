"""Animal Faces: the real AFHQ sample, the class filter, odd image files, training end to end."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastvae import cli
from fastvae.data import DataNotFoundError
from fastvae.data.animal_faces import BadImageError, load_animal_faces
from fastvae.models.conv import ConvVAE
from fastvae.train import load_checkpoint

SAMPLE = Path(os.environ.get("FASTVAE_DATA") or "data") / "afhq_sample"
needs_sample = pytest.mark.skipif(
    not (SAMPLE / "train").is_dir(),
    reason="needs the AFHQ sample: a folder afhq_sample/ with train/ and val/ class folders "
    "in DIR, run as `FASTVAE_DATA=DIR pytest`",
)


@needs_sample
def test_real_sample_loads_resized_with_labels():
    train, names = load_animal_faces(True, SAMPLE, image_size=32, progress=False)
    val, _ = load_animal_faces(False, SAMPLE, image_size=32, progress=False)
    assert names == ("cat", "dog", "wild")
    assert train.images.shape == (28, 3, 32, 32) and train.images.dtype == torch.uint8
    assert val.images.shape[0] == 13
    assert train.labels.bincount().tolist() == [10, 8, 10]
    assert train.images.float().std() > 20  # real photographs, not a constant
    cats, _ = load_animal_faces(True, SAMPLE, image_size=16, classes=["cat"], progress=False)
    assert cats.images.shape == (10, 3, 16, 16) and (cats.labels == 0).all()
    assert torch.equal(cats.images, load_animal_faces(True, SAMPLE, image_size=16,
                                                      progress=False)[0].images[:10])


def _folder(tmp_path):
    cat = tmp_path / "afhq" / "train" / "cat"
    cat.mkdir(parents=True)
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(cat / "a_rgb.png")
    Image.fromarray(np.full((20, 30), 77, np.uint8), mode="L").save(cat / "b_gray.jpg")
    rgba = np.zeros((30, 20, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 150, 10  # almost transparent green
    Image.fromarray(rgba, mode="RGBA").save(cat / "c_rgba.png")
    (cat / "notes.txt").write_text("not an image")
    return tmp_path / "afhq"


def test_grayscale_and_rgba_become_rgb_and_other_files_are_skipped(tmp_path):
    split, names = load_animal_faces(True, _folder(tmp_path), image_size=8, progress=False)
    assert names == ("cat",)
    assert split.images.shape == (3, 3, 8, 8)  # notes.txt skipped
    red, gray, green = split.images.float().mean(dim=(2, 3))
    assert red.tolist() == [200, 0, 0]
    assert torch.allclose(gray, torch.full((3,), 77.0), atol=1.0)  # JPEG: within a level
    assert green.tolist() == [0, 150, 0]  # alpha dropped, not composited


def test_an_unreadable_image_is_named(tmp_path):
    folder = _folder(tmp_path)
    bad = folder / "train" / "cat" / "d_broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a JPEG")
    with pytest.raises(BadImageError, match="d_broken.jpg"):
        load_animal_faces(True, folder, image_size=8, progress=False)


def test_missing_folder_and_unknown_class(tmp_path):
    with pytest.raises(DataNotFoundError, match="download.sh afhq-dataset"):
        load_animal_faces(False, tmp_path, progress=False)
    with pytest.raises(ValueError, match="'lion'"):
        load_animal_faces(True, _folder(tmp_path), classes=["lion"], progress=False)


@needs_sample
@pytest.mark.slow
def test_train_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main([
        "train", "--dataset", "animal-faces", "--data-dir", str(SAMPLE), "--image-size", "32",
        "--model", "conv", "--classes", "cat", "dog", "--epochs", "1", "--batch-size", "8",
        "--likelihood", "mse", "--device", "cpu", "--out", str(out),
    ])
    assert rc == 0, capsys.readouterr().err
    model, ckpt = load_checkpoint(out / "checkpoint.pt")
    assert isinstance(model, ConvVAE) and model.input_shape == (3, 32, 32)
    assert ckpt["model_name"] == "conv" and tuple(ckpt["config"]["classes"]) == ("cat", "dog")
    # An 8 x 8 grid of 32-pixel RGB images (274 px square), drawn at least 400 px wide under
    # its title.
    with Image.open(out / "samples.png") as im:
        rgb = im.convert("RGB")
        assert im.size[0] >= 400 and im.size[1] > im.size[0]
    r, g, b = (rgb.getchannel(c) for c in "RGB")
    assert r.tobytes() != g.tobytes() or g.tobytes() != b.tobytes(), "colour samples"


def test_animal_faces_flags_are_checked(capsys):
    assert cli.main(["train", "--image-size", "64"]) == 2
    assert "--image-size must be 28" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", "animal-faces", "--binarize", "dynamic"]) == 2
    assert "--binarize is for MNIST" in capsys.readouterr().err
