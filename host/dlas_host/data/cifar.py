"""CIFAR-10 from its python-pickle batch directory."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as T
from torch.utils.data import Dataset

from .info import DatasetError
from .recipe import Recipe

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]


def _get(d: dict, key: str):
    """Pickles written by Python 2 (the official ones) have bytes keys, re-pickled ones str keys."""
    if key in d:
        return d[key]
    return d.get(key.encode())


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as exc:  # noqa: BLE001 - any unreadable pickle is the same user error
        raise DatasetError(f"CIFAR-10 batch {path} is not a readable pickle: {type(exc).__name__}") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"CIFAR-10 batch {path} is not a dict of data/labels")
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if data is None or labels is None:
        raise DatasetError(f"CIFAR-10 batch {path} lacks 'data' or 'labels'")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DatasetError(f"CIFAR-10 batch {path} has data {data.dtype}{list(data.shape)} and {len(labels)} "
                           "labels; expected uint8 [N, 3072] and N labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"CIFAR-10 batch {path} has labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


class TensorImages(Dataset):
    """uint8 NCHW images + labels with a tensor transform applied per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: T.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.labels[i])


def cifar_transform(recipe: Recipe, augment: bool) -> T.Transform:
    steps: list[T.Transform] = []
    if augment:
        steps += [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(recipe.mean, recipe.std)]
    return T.Compose(steps)


def load_cifar10(root: Path, split: str, recipe: Recipe, augment: bool) -> Dataset:
    if not root.is_dir():
        raise DatasetError(f"CIFAR-10 directory {root} does not exist (expected data_batch_1..5, test_batch)")
    files = TRAIN_FILES if split == "train" else TEST_FILES
    missing = [f for f in files + ["batches.meta"] if not (root / f).is_file()]
    if missing:
        raise DatasetError(f"CIFAR-10 directory {root} lacks {', '.join(missing)} (is it cifar-10-batches-py?)")
    parts = [_read_batch(root / f) for f in files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return TensorImages(images, labels, cifar_transform(recipe, augment))
