"""ImageNet (or any ImageNet-shaped dataset) from train/ and val/ class-folder trees."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision.transforms.v2 as T
from torch.utils.data import Dataset

from .info import DatasetError, DatasetInfo



def imagenet_transform(ds: DatasetInfo, augment: bool) -> T.Transform:
    if augment:
        steps: list[T.Transform] = [T.RandomResizedCrop(ds.image_size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(256), T.CenterCrop(ds.image_size)]
    return T.Compose([T.ToImage(), *steps, T.ToDtype(torch.float32, scale=True), T.Normalize(ds.mean, ds.std)])


def load_imagenet(root: Path, split: str, ds: DatasetInfo, augment: bool) -> Dataset:
    from torchvision.datasets import ImageFolder

    sub = root / ("train" if split == "train" else "val")
    if not sub.is_dir():
        raise DatasetError(f"ImageNet directory {sub} does not exist (expected {root}/train and {root}/val "
                           "with one folder per class)")
    try:
        folder = ImageFolder(str(sub), transform=imagenet_transform(ds, augment))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DatasetError(f"ImageNet directory {sub} is malformed: {str(exc).splitlines()[0]}") from None
    if len(folder.classes) > ds.num_classes:
        raise DatasetError(f"ImageNet directory {sub} has {len(folder.classes)} classes, more than "
                           f"{ds.num_classes}")
    return folder
