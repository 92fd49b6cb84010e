"""scikit-learn's bundled digits (1797 8x8 images), shaped like CIFAR-10 (3x32x32, 10 classes)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from .recipe import Recipe

TEST_FRACTION = 0.2


@lru_cache(maxsize=1)
def _tensors() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # N,1,8,8 in [0,1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return x, y


def load_digits(split: str, recipe: Recipe) -> Dataset:
    """Deterministic split: a seeded permutation, last 20 % is the test split. No augmentation (digits are
    not flip-invariant and the images are already centred)."""
    x, y = _tensors()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    n_test = int(len(y) * TEST_FRACTION)
    idx = perm[n_test:] if split == "train" else perm[:n_test]
    mean = torch.tensor(recipe.mean).view(1, 3, 1, 1)
    std = torch.tensor(recipe.std).view(1, 3, 1, 1)
    return TensorDataset((x[idx] - mean) / std, y[idx])
