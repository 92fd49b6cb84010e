"""DLAS layer 1: datasets.

``load(name, split, preprocessing=...)`` returns a torch ``Dataset`` of normalised ``(image, label)`` pairs;
``loaders`` wraps train and test splits in DataLoaders. ``preprocessing`` is a model's stored recipe
(``preprocessing(name)`` is the default; ``recipe.resolve`` checks one), so published weights are evaluated
with their own resize, crop and interpolation. Known datasets:

- ``cifar10``: the standard python-pickle batch directory (``data_batch_1..5``, ``test_batch``, ``batches.meta``),
  as downloaded (Python 2 pickles) or re-pickled.
- ``imagenet``: ``val/`` (the ``test`` split; enough to evaluate) and ``train/`` (only to train or calibrate).
  Class folders named by WordNet id, or for ``val/`` the official flat ``ILSVRC2012_val_*.JPEG`` files with
  ``ILSVRC2012_validation_ground_truth.txt``, Kaggle's ``LOC_val_solution.csv`` or a ``val_labels.txt`` /
  Caffe ``val.txt`` of ``<file> <synset or index>`` lines (``imagenet_gt``). Labels are always the standard
  1000-class index (``synsets.STANDARD``, torchvision's order), whatever subset of classes is present.
- ``digits``: scikit-learn's bundled 8x8 digits, upsampled to 32x32x3 so CIFAR-10 models run on it unchanged;
  it ships with scikit-learn, so it is the one real dataset always at hand (tests, smoke runs).

Directories come from an explicit argument, then ``$DLAS_CIFAR10_DIR`` / ``$DLAS_IMAGENET_DIR``, then
``<data dir>/datasets.json`` (``{"cifar10": "/path", ...}``).
"""

from __future__ import annotations

from .base import loaders, load, resolve_dir
from .info import DatasetError, DatasetInfo, info, model_dataset, preprocessing

__all__ = ["DatasetError", "DatasetInfo", "info", "load", "loaders", "model_dataset", "preprocessing", "resolve_dir"]
