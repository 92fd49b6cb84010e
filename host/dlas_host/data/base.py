"""Dataset registry, directory resolution and loaders (see the package docstring)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from . import recipe
from .cifar import load_cifar10
from .digits import load_digits
from .imagenet import load_imagenet
from .info import SPLITS, DatasetError, info


def _config_file() -> Path:
    from dlas_host import paths

    return paths.data_dir() / "datasets.json"


def resolve_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """Directory of dataset ``name``: argument, then environment variable, then datasets.json."""
    ds = info(name)
    if data_dir:
        return Path(data_dir).expanduser()
    if ds.env_var and os.environ.get(ds.env_var):
        return Path(os.environ[ds.env_var]).expanduser()
    cfg = _config_file()
    if cfg.is_file():
        try:
            entry = json.loads(cfg.read_text()).get(name)
        except (json.JSONDecodeError, AttributeError):
            raise DatasetError(f"{cfg} is not a JSON object of dataset directories") from None
        if entry:
            return Path(entry).expanduser()
    raise DatasetError(f"no directory for dataset {name!r}: pass --data-dir, set ${ds.env_var} "
                       f"or add it to {cfg}")


def load(name: str, split: str = "train", data_dir: str | Path | None = None, *, augment: bool | None = None,
         limit: int | None = None, preprocessing: dict | None = None) -> Dataset:
    """Dataset ``name``/``split`` (augmented on train unless ``augment=False``).

    ``preprocessing`` is a model's stored recipe (``info.preprocessing`` keys: image_size, mean, std and for
    ImageNet resize, crop, interpolation); it overrides the dataset's default key by key."""
    info(name)  # an unknown dataset is named before the split
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    prep = recipe.resolve(name, preprocessing)
    augment = (split == "train") if augment is None else augment
    if name == "digits":
        out: Dataset = load_digits(split, prep)
    elif name == "cifar10":
        out = load_cifar10(resolve_dir(name, data_dir), split, prep, augment)
    else:
        out = load_imagenet(resolve_dir(name, data_dir), split, prep, augment)
    if limit is not None and limit < len(out):  # type: ignore[arg-type]
        out = torch.utils.data.Subset(out, range(limit))
    return out


def loaders(name: str, batch_size: int = 128, data_dir: str | Path | None = None, *, workers: int = 0,
            train_limit: int | None = None, test_limit: int | None = None, augment: bool = True,
            seed: int = 0, preprocessing: dict | None = None) -> tuple[DataLoader, DataLoader]:
    """(train loader shuffled with a seeded generator, test loader in order)."""
    train = load(name, "train", data_dir, augment=augment, limit=train_limit, preprocessing=preprocessing)
    test = load(name, "test", data_dir, limit=test_limit, preprocessing=preprocessing)
    gen = torch.Generator().manual_seed(seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=workers, generator=gen),
            DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=workers))

