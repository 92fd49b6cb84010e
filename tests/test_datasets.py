"""Dataset loaders on small CIFAR pickles and ImageNet folders written here; errors are one clear line."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dlas_host import data
from dlas_host.data import DatasetError


def _write_cifar(root: Path, n: int = 6, *, skip: str | None = None, bad: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        if name == skip:
            continue
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)]}
        if name == bad:
            batch = {b"data": rng.integers(0, 256, (n, 100), dtype=np.uint8), b"labels": [0] * n}
        (root / name).write_bytes(pickle.dumps(batch))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))
    return root


def test_cifar_loads_and_normalises(tmp_path: Path) -> None:
    root = _write_cifar(tmp_path / "cifar")
    train = data.load("cifar10", "train", root)
    test = data.load("cifar10", "test", root)
    assert len(train) == 30 and len(test) == 6
    x, y = test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10
    assert -3 < float(x.min()) and float(x.max()) < 3  # normalised, not 0..255
    tl, vl = data.loaders("cifar10", batch_size=4, data_dir=root)
    xb, yb = next(iter(tl))
    assert xb.shape == (4, 3, 32, 32) and yb.shape == (4,)


def test_cifar_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _write_cifar(tmp_path / "cifar")
    monkeypatch.setenv("DLAS_CIFAR10_DIR", str(root))
    assert len(data.load("cifar10", "test")) == 6


def test_cifar_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DLAS_CIFAR10_DIR", raising=False)
    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path / "state"))
    with pytest.raises(DatasetError, match="no directory for dataset 'cifar10'"):
        data.load("cifar10", "train")
    with pytest.raises(DatasetError, match="does not exist"):
        data.load("cifar10", "train", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="lacks data_batch_3"):
        data.load("cifar10", "train", _write_cifar(tmp_path / "c1", skip="data_batch_3"))
    with pytest.raises(DatasetError, match=r"expected uint8 \[N, 3072\]"):
        data.load("cifar10", "test", _write_cifar(tmp_path / "c2", bad="test_batch"))
    broken = _write_cifar(tmp_path / "c3")
    (broken / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="not a readable pickle") as err:
        data.load("cifar10", "test", broken)
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="unknown dataset"):
        data.load("mnist", "train")


def _write_imagenet(root: Path, classes: int = 3, per_class: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(d / f"{i}.JPEG")
    return root


def test_imagenet_folders(tmp_path: Path) -> None:
    root = _write_imagenet(tmp_path / "imnet")
    val = data.load("imagenet", "test", root)
    x, y = val[0]
    assert len(val) == 6 and x.shape == (3, 224, 224) and y == 0
    train = data.load("imagenet", "train", root)
    assert train[5][0].shape == (3, 224, 224) and train[5][1] == 2


def test_imagenet_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        data.load("imagenet", "test", tmp_path / "none")
    (tmp_path / "empty" / "val").mkdir(parents=True)
    with pytest.raises(DatasetError, match="malformed") as err:
        data.load("imagenet", "test", tmp_path / "empty")
    assert "\n" not in str(err.value)


def test_digits_shaped_like_cifar() -> None:
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == 359
    x, y = train[0]
    assert x.shape == (3, 32, 32) and 0 <= int(y) < 10
    assert data.model_dataset("digits") == "cifar10"
    xs = torch.stack([train[i][0] for i in range(200)])
    assert abs(float(xs.mean())) < 0.2 and 0.7 < float(xs.std()) < 1.3
