"""DLAS layer 1: datasets.

``load(name, split)`` returns a torch ``Dataset`` of normalised ``(image, label)`` pairs; ``loaders`` wraps
train and test splits in DataLoaders. Known datasets:

- ``cifar10``: the standard python-pickle batch directory (``data_batch_1..5``, ``test_batch``, ``batches.meta``).
- ``imagenet``: ``train/`` and ``val/`` class-folder trees (torchvision ``ImageFolder``).
- ``digits``: scikit-learn's bundled 8x8 digits, upsampled to 32x32x3 so CIFAR-10 models run on it unchanged;
  it ships with scikit-learn, so it is the one real dataset always at hand (tests, smoke runs).

Directories come from an explicit argument, then ``$DLAS_CIFAR10_DIR`` / ``$DLAS_IMAGENET_DIR``, then
``<data dir>/datasets.json`` (``{"cifar10": "/path", ...}``).
"""

from __future__ import annotations

from .base import loaders, load, resolve_dir
from .info import DatasetError, DatasetInfo, info, model_dataset

__all__ = ["DatasetError", "DatasetInfo", "info", "load", "loaders", "model_dataset", "resolve_dir"]
