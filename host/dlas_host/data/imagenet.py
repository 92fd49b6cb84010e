"""ImageNet-1k as users have it: ``train/`` and ``val/`` under one root, each in one of the usual layouts.

- ``train/``: one folder per class, named by WordNet id (``n01440764/...``). Needed only to train, fine-tune
  or calibrate; evaluation (the ``test`` split) reads ``val/`` alone.
- ``val/``: one folder per class as well, or the official flat layout (``ILSVRC2012_val_00000001.JPEG``, ...)
  with a ground-truth file (see ``imagenet_gt`` for the accepted files).
- Kaggle's download is read as it unpacks: ``ILSVRC/Data/CLS-LOC/{train,val}`` under the root, with
  ``LOC_val_solution.csv`` in the root.

Labels are always the class's index in the standard 1000-class order (``synsets.STANDARD``, torchvision's),
whatever subset of classes or images is present, so published weights score against the right labels.
Images are resized and cropped on the PIL image as torchvision's reference evaluation does, with the model's
recipe (resize, crop, interpolation).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision.transforms.v2 as T
from torch.utils.data import Dataset

from . import imagenet_gt, synsets
from .info import DatasetError
from .recipe import Recipe

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


class ImageFiles(Dataset):
    """``(image, label)`` from a list of image files; ``samples`` and ``targets`` as torchvision's ImageFolder."""

    def __init__(self, samples: list[tuple[Path, int]], transform: T.Transform) -> None:
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            why = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatasetError(f"image {path} is unreadable: {why}") from None
        return self.transform(rgb), label


def imagenet_transform(recipe: Recipe, augment: bool) -> T.Transform:
    mode = T.InterpolationMode(recipe.interpolation)
    crop = recipe.crop or recipe.image_size
    if augment:
        steps: list[T.Transform] = [T.RandomResizedCrop(crop, interpolation=mode), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(recipe.resize or crop, interpolation=mode), T.CenterCrop(crop)]
    return T.Compose([*steps, T.ToImage(), T.ToDtype(torch.float32, scale=True),
                      T.Normalize(recipe.mean, recipe.std)])


def _walk_images(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".") and _is_image(Path(f))]
    return found


def _class_folders(sub: Path, folders: list[Path]) -> list[tuple[Path, int]]:
    samples: list[tuple[Path, int]] = []
    for folder in sorted(folders):
        label = synsets.standard_index(folder.name)
        if label is None:
            raise DatasetError(f"ImageNet directory {sub} has a folder {folder.name!r} that is not an ImageNet-1k "
                               "class (class folders are named by WordNet id, like n01440764)")
        samples += [(image, label) for image in _walk_images(folder)]
    return samples


def samples(root: Path, split: str) -> list[tuple[Path, int]]:
    """``(image file, standard label)`` of ``split`` ("train" reads ``train/``, "test" reads ``val/``)."""
    if not root.is_dir():
        raise DatasetError(f"ImageNet directory {root} does not exist (expected {root}/val, and {root}/train "
                           "to train)")
    name = "train" if split == "train" else "val"
    kaggle = root / "ILSVRC" / "Data" / "CLS-LOC"
    base = kaggle if kaggle.is_dir() and not (root / "train").is_dir() and not (root / "val").is_dir() else root
    sub = base / name
    if not sub.is_dir():
        why = ("training, fine-tuning and calibration need it; evaluation needs only val/" if name == "train"
               else "evaluation needs it: one folder per class, or the flat ILSVRC2012_val_*.JPEG files with a "
                    "ground-truth file")
        raise DatasetError(f"ImageNet directory {base} has no {name}/ ({why})")
    entries = [e for e in sorted(sub.iterdir()) if not e.name.startswith(".")]
    folders = [e for e in entries if e.is_dir()]
    loose = [e for e in entries if e.is_file() and _is_image(e)]
    if loose and folders:
        raise DatasetError(f"ImageNet directory {sub} mixes class folders ({folders[0].name}, ...) and loose images "
                           f"({loose[0].name}, ...); use one layout")
    if loose:
        if name == "train":
            raise DatasetError(f"ImageNet directory {sub} holds images directly; train/ needs one folder per class")
        found = imagenet_gt.labelled(loose, sub, root)
    else:
        found = _class_folders(sub, folders)
    if not found:
        raise DatasetError(f"ImageNet directory {sub} has no images ({', '.join(IMAGE_SUFFIXES[:3])}, ...)")
    return found


def load_imagenet(root: Path, split: str, recipe: Recipe, augment: bool) -> Dataset:
    return ImageFiles(samples(root, split), imagenet_transform(recipe, augment))
