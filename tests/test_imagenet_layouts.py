"""ImageNet as users have it, on tiny trees written here with PIL: class folders and the official flat validation
layout with each accepted ground-truth file, evaluation from val/ alone, labels in the standard 1000-class order
for any subset of classes, each model's preprocessing recipe, and one-line errors naming what is missing."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T1

from dlas_host import data
from dlas_host.data import DatasetError, recipe, synsets

# three classes far apart in both orders: sea snake (standard 65, devkit id 490), kit fox (devkit id 1),
# toilet tissue (standard 999)
SEA_SNAKE, KIT_FOX, TOILET_TISSUE = "n01751748", "n02119789", "n15075141"


def _image(path: Path, seed: int, size: tuple[int, int] = (300, 260)) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 20, size[0] // 20, 3), dtype=np.uint8)  # smooth-ish, so
    Image.fromarray(small).resize(size, Image.BILINEAR).save(path)  # interpolations differ visibly


def _folders(root: Path, split: str, classes: dict[str, int]) -> None:
    """``classes``: synset -> number of images."""
    for k, (wnid, n) in enumerate(sorted(classes.items())):
        d = root / split / wnid
        d.mkdir(parents=True)
        for i in range(n):
            _image(d / f"{wnid}_{i}.JPEG", 100 * k + i)


def _flat(root: Path, numbers: list[int]) -> Path:
    val = root / "val"
    val.mkdir(parents=True)
    for n in numbers:
        _image(val / f"ILSVRC2012_val_{n:08d}.JPEG", n)
    return val


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text.strip() == text
    return text


def test_synset_table_is_the_standard_order() -> None:
    assert len(synsets.STANDARD) == 1000 and len(set(synsets.DEVKIT)) == 1000
    assert list(synsets.STANDARD) == sorted(synsets.DEVKIT)
    assert synsets.STANDARD[0] == "n01440764" and synsets.STANDARD[-1] == TOILET_TISSUE
    assert all(synsets.is_wnid(w) for w in synsets.STANDARD)
    # the list itself is pinned: a damaged table changes every label silently
    assert hashlib.sha256(" ".join(synsets.STANDARD).encode()).hexdigest() == \
        "791ce0333040dd249d13133f90d28ef0263ffc01e5de0afd85b3e32048d7d456"
    assert synsets.DEVKIT[0] == KIT_FOX and synsets.devkit_to_standard(490) == synsets.INDEX[SEA_SNAKE] == 65


def test_synset_order_agrees_with_torchvision() -> None:
    """Independent offline check: torchvision's category names (its class index order) at our indices of the
    ten Imagenette synsets, whose names torchvision also ships."""
    from torchvision.datasets import Imagenette
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    names = getattr(Imagenette, "_WNID_TO_CLASS", None)
    if not names:
        pytest.skip("this torchvision has no Imagenette synset table")
    for wnid, aliases in names.items():
        assert _IMAGENET_CATEGORIES[synsets.INDEX[wnid]].lower() in {a.lower() for a in aliases}, wnid


def test_subset_of_class_folders_keeps_standard_labels(tmp_path: Path) -> None:
    root = tmp_path / "imnet"
    _folders(root, "val", {SEA_SNAKE: 2, KIT_FOX: 1, TOILET_TISSUE: 2})
    val = data.load("imagenet", "test", root)  # no train/: evaluation needs val/ only
    assert val.targets == [65, 65, synsets.INDEX[KIT_FOX], 999, 999]
    x, y = val[4]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 999
    assert len(data.load("imagenet", "test", root, limit=2)) == 2
    with pytest.raises(DatasetError, match=r"has no train/ \(.*evaluation needs only val/\)") as err:
        data.load("imagenet", "train", root)
    assert str(root) in _one_line(err)
    _folders(root, "train", {TOILET_TISSUE: 1})
    train = data.load("imagenet", "train", root)
    assert train.targets == [999] and train[0][0].shape == (3, 224, 224)


def test_flat_val_with_official_ground_truth(tmp_path: Path) -> None:
    root = tmp_path / "imnet"
    _flat(root, [1, 2, 4])  # a subset of the images the file covers
    devkit_of = {w: i + 1 for i, w in enumerate(synsets.DEVKIT)}
    ids = [490, devkit_of[KIT_FOX], devkit_of[SEA_SNAKE], devkit_of[TOILET_TISSUE], 7]
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(map(str, ids)) + "\n\n")
    val = data.load("imagenet", "test", root)
    assert val.targets == [65, synsets.INDEX[KIT_FOX], 999]
    assert [p.name for p, _ in val.samples] == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in (1, 2, 4)]
    assert val[2][0].shape == (3, 224, 224)
    # the devkit's own folder is a place the file is looked for too
    (root / "ILSVRC2012_validation_ground_truth.txt").rename(root / "gt.txt")
    (root / "ILSVRC2012_devkit_t12" / "data").mkdir(parents=True)
    (root / "gt.txt").rename(root / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt")
    assert data.load("imagenet", "test", root).targets == [65, synsets.INDEX[KIT_FOX], 999]


@pytest.mark.parametrize("name,text", [
    ("LOC_val_solution.csv", "ImageId,PredictionString\n"
                             f"ILSVRC2012_val_00000002,{KIT_FOX} 1 2 30 40 {KIT_FOX} 5 6 7 8\n"
                             f"ILSVRC2012_val_00000001,{SEA_SNAKE} 10 10 90 90\n"
                             f"ILSVRC2012_val_00000009,{TOILET_TISSUE} 1 1 2 2\n"),
    ("val.txt", f"ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG {synsets.INDEX[KIT_FOX]}\n"),
    ("val_labels.txt", f"ILSVRC2012_val_00000002\t{KIT_FOX}\nILSVRC2012_val_00000001,{SEA_SNAKE}\n"),
])
def test_flat_val_with_other_ground_truth_files(tmp_path: Path, name: str, text: str) -> None:
    root = tmp_path / "imnet"
    val_dir = _flat(root, [1, 2])
    (val_dir / name).write_text(text)  # beside the images this time
    assert data.load("imagenet", "test", root).targets == [65, synsets.INDEX[KIT_FOX]]


def test_kaggle_download_as_unpacked(tmp_path: Path) -> None:
    root = tmp_path / "imagenet-object-localization-challenge"
    cls_loc = root / "ILSVRC" / "Data" / "CLS-LOC"
    _flat(cls_loc, [3, 1])
    _folders(cls_loc, "train", {KIT_FOX: 1, SEA_SNAKE: 1})
    (root / "LOC_val_solution.csv").write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000001,{KIT_FOX} 1 1 5 5\n"
                                               f"ILSVRC2012_val_00000003,{TOILET_TISSUE} 1 1 5 5\n")
    assert data.load("imagenet", "test", root).targets == [synsets.INDEX[KIT_FOX], 999]
    assert data.load("imagenet", "train", root).targets == [65, synsets.INDEX[KIT_FOX]]


def test_both_layouts_give_the_same_items(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    _flat(flat, [1, 2, 3])
    (flat / "val" / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG 999\nILSVRC2012_val_00000002.JPEG 65\n"
                                          "ILSVRC2012_val_00000003.JPEG 999\n")
    folders = tmp_path / "folders"
    for number, wnid in ((1, TOILET_TISSUE), (2, SEA_SNAKE), (3, TOILET_TISSUE)):
        (folders / "val" / wnid).mkdir(parents=True, exist_ok=True)
        name = f"ILSVRC2012_val_{number:08d}.JPEG"
        (folders / "val" / wnid / name).write_bytes((flat / "val" / name).read_bytes())
    a, b = data.load("imagenet", "test", flat), data.load("imagenet", "test", folders)
    by_name_a = {p.name: (i, y) for i, (p, y) in enumerate(a.samples)}
    assert len(a) == len(b) == 3
    for j, (path, label) in enumerate(b.samples):
        i, y = by_name_a[path.name]
        assert y == label
        assert torch.equal(a[i][0], b[j][0])


def test_recipe_from_model_metadata(tmp_path: Path) -> None:
    """resize/crop/interpolation come from the stored recipe and equal torchvision's reference evaluation."""
    from PIL import Image

    root = tmp_path / "imnet"
    _folders(root, "val", {SEA_SNAKE: 1})
    path = root / "val" / SEA_SNAKE / f"{SEA_SNAKE}_0.JPEG"
    ds = data.info("imagenet")

    def reference(resize: int, crop: int, mode: T1.InterpolationMode) -> torch.Tensor:
        ref = T1.Compose([T1.Resize(resize, interpolation=mode), T1.CenterCrop(crop), T1.ToTensor(),
                          T1.Normalize(ds.mean, ds.std)])
        return ref(Image.open(path).convert("RGB"))

    default = data.load("imagenet", "test", root)[0][0]
    assert torch.allclose(default, reference(256, 224, T1.InterpolationMode.BILINEAR), atol=1e-5)
    stored = data.preprocessing("imagenet") | {"resize": 232, "interpolation": "bicubic"}
    v2 = data.load("imagenet", "test", root, preprocessing=stored)[0][0]
    assert torch.allclose(v2, reference(232, 224, T1.InterpolationMode.BICUBIC), atol=1e-5)
    assert (v2 - default).abs().max() > 0.05  # the recipes really differ on this image
    big = data.load("imagenet", "test", root, preprocessing={"resize": 272, "crop": 240})[0][0]
    assert big.shape == (3, 240, 240)
    assert torch.allclose(big, reference(272, 240, T1.InterpolationMode.BILINEAR), atol=1e-5)


@pytest.mark.parametrize("dataset,given,pattern", [
    ("imagenet", {"resize": 256, "antialias": False}, "unknown key.*antialias"),
    ("imagenet", {"interpolation": "lanczos"}, "unknown interpolation 'lanczos'"),
    ("imagenet", {"resize": 0}, "resize must be a whole number"),
    ("imagenet", {"resize": "256"}, "resize must be a whole number"),
    ("imagenet", {"crop": 240, "image_size": 224}, "crop 240 and image_size 224 differ"),
    ("imagenet", {"std": [0.2, 0.0, 0.2]}, "std must be 3 positive numbers"),
    ("cifar10", {"image_size": 64}, "cifar10 images are 32x32"),
    ("cifar10", {"resize": 36}, "unknown key.*resize"),
    ("digits", {"mean": [0.5]}, "mean must be 3 numbers"),
])
def test_bad_recipes_are_one_line(dataset: str, given: dict, pattern: str) -> None:
    with pytest.raises(DatasetError, match=pattern) as err:
        recipe.resolve(dataset, given)
    assert _one_line(err).startswith(f"preprocessing for {dataset}")


def test_recipe_defaults_are_the_stored_ones() -> None:
    r = recipe.resolve("imagenet", data.preprocessing("imagenet"))
    assert (r.image_size, r.resize, r.crop, r.interpolation) == (224, 256, 224, "bilinear")
    assert recipe.resolve("imagenet", None) == r
    assert recipe.resolve("digits", data.preprocessing("digits")).image_size == 32


def _ground_truth_case(root: Path, case: str) -> str:
    """Plant a damaged piece; return a pattern the one-line error must match."""
    val = _flat(root, [1, 2])
    gt = root / "ILSVRC2012_validation_ground_truth.txt"
    if case == "no ground truth":
        return r"holds images directly but no ground-truth file: put one of ILSVRC2012_validation_ground_truth"
    if case == "official not a number":
        gt.write_text("490\nkit fox\n")
        return re.escape(f"ground-truth file {gt} line 2: expected an ILSVRC2012 class id 1..1000, got 'kit fox'")
    if case == "official id out of range":
        gt.write_text("490\n1001\n")
        return "line 2: expected an ILSVRC2012 class id 1..1000, got '1001'"
    if case == "official too short":
        gt.write_text("490\n")
        return re.escape(f"image {val / 'ILSVRC2012_val_00000002.JPEG'} has no label in ground-truth file {gt}")
    if case == "official blank line":
        gt.write_text("490\n\n3\n")
        return "line 2: expected an ILSVRC2012 class id"
    if case == "official odd file name":
        gt.write_text("490\n490\n")
        (val / "ILSVRC2012_val_00000002.JPEG").rename(val / "photo.JPEG")
        return r"photo.JPEG is not named ILSVRC2012_val_<8 digits>"
    if case == "empty":
        gt.write_text("\n \n")
        return "is empty"
    if case == "binary":
        gt.write_bytes(b"\xff\xfe\x00\x81")
        return "is not text"
    csv = root / "LOC_val_solution.csv"
    if case == "csv header":
        csv.write_text(f"ILSVRC2012_val_00000001,{SEA_SNAKE} 1 1 2 2\n")
        return "does not start with the header ImageId,PredictionString"
    if case == "csv unknown synset":
        csv.write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000001,{SEA_SNAKE} 1 2 3 4\n"
                       "ILSVRC2012_val_00000002,n99999999 1 2 3 4\n")
        return "line 3: n99999999 is not an ImageNet-1k class"
    if case == "csv no prediction":
        csv.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,\n")
        return "line 2: expected ImageId,<synset>"
    pairs = val / "val.txt"
    if case == "pairs three words":
        pairs.write_text("ILSVRC2012_val_00000001.JPEG 65 extra\n")
        return "line 1: expected '<file name> <label>'"
    if case == "pairs index 1000":
        pairs.write_text("ILSVRC2012_val_00000001.JPEG 1000\n")
        return "line 1: expected a WordNet id .* or a class index 0..999, got '1000'"
    if case == "pairs image missing":
        pairs.write_text("ILSVRC2012_val_00000001.JPEG 65\n")
        return "ILSVRC2012_val_00000002.JPEG has no label in ground-truth file"
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "no ground truth", "official not a number", "official id out of range", "official too short",
    "official blank line", "official odd file name", "empty", "binary", "csv header", "csv unknown synset",
    "csv no prediction", "pairs three words", "pairs index 1000", "pairs image missing"])
def test_malformed_ground_truth_is_one_line(tmp_path: Path, case: str) -> None:
    root = tmp_path / "imnet"
    pattern = _ground_truth_case(root, case)
    with pytest.raises(DatasetError, match=pattern) as err:
        data.load("imagenet", "test", root)
    _one_line(err)


def test_missing_and_malformed_dirs_are_one_line(tmp_path: Path) -> None:
    cases: list[tuple[Path, str]] = []
    missing = tmp_path / "missing"
    cases.append((missing, re.escape(f"ImageNet directory {missing} does not exist")))
    no_val = tmp_path / "no_val"
    _folders(no_val, "train", {SEA_SNAKE: 1})
    cases.append((no_val, re.escape(f"ImageNet directory {no_val} has no val/ (evaluation needs it")))
    renumbered = tmp_path / "renumbered"
    (renumbered / "val" / "class_0").mkdir(parents=True)
    cases.append((renumbered, "has a folder 'class_0' that is not an ImageNet-1k class"))
    unknown = tmp_path / "unknown"
    (unknown / "val" / "n99999999").mkdir(parents=True)
    cases.append((unknown, "has a folder 'n99999999' that is not an ImageNet-1k class"))
    mixed = tmp_path / "mixed"
    _folders(mixed, "val", {SEA_SNAKE: 1})
    _image(mixed / "val" / "ILSVRC2012_val_00000001.JPEG", 0)
    cases.append((mixed, re.escape(f"ImageNet directory {mixed / 'val'} mixes class folders ({SEA_SNAKE}, ...) "
                                   "and loose images (ILSVRC2012_val_00000001.JPEG, ...)")))
    empty = tmp_path / "empty"
    (empty / "val" / SEA_SNAKE).mkdir(parents=True)
    (empty / "val" / SEA_SNAKE / "notes.txt").write_text("not an image")
    cases.append((empty, "has no images"))
    for root, pattern in cases:
        with pytest.raises(DatasetError, match=pattern) as err:
            data.load("imagenet", "test", root)
        _one_line(err)
    flat_train = tmp_path / "flat_train"
    (flat_train / "train").mkdir(parents=True)
    _image(flat_train / "train" / "a.JPEG", 0)
    with pytest.raises(DatasetError, match="train/ needs one folder per class") as err:
        data.load("imagenet", "train", flat_train)
    _one_line(err)


def test_unreadable_image_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "imnet"
    _folders(root, "val", {SEA_SNAKE: 2})
    bad = root / "val" / SEA_SNAKE / f"{SEA_SNAKE}_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:20])
    val = data.load("imagenet", "test", root)
    assert val[0][1] == 65
    with pytest.raises(DatasetError, match=re.escape(f"image {bad} is unreadable")) as err:
        val[1]
    _one_line(err)
