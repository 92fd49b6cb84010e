"""Dataset loaders on small CIFAR pickles and ImageNet folders written here; errors are one clear line."""

from __future__ import annotations

import io
import pickle
import struct
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


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes what Python 2's cPickle wrote for the official CIFAR-10 batches: str as BINSTRING (which Python 3
    must decode) and numpy's classes under their Python 2 module (numpy.core)."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes | str) -> None:
        raw = obj.encode() if isinstance(obj, str) else obj
        op = pickle.SHORT_BINSTRING + bytes([len(raw)]) if len(raw) < 256 else \
            pickle.BINSTRING + struct.pack("<i", len(raw))
        self.write(op + raw)
        self.memoize(obj)

    def save_global(self, obj, name=None) -> None:  # noqa: ANN001
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str
    dispatch[type] = save_global
    dispatch[type(len)] = save_global


def test_cifar_python2_batches(tmp_path: Path) -> None:
    """Batches as downloaded (cifar-10-batches-py): Python 2 pickles with data, labels, batch_label, filenames."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    wanted = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, 4)]
        wanted[name] = (images, labels)
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump({"batch_label": f"{name} of 5", "data": images, "labels": labels,
                                           "filenames": [f"img_{i}.png" for i in range(4)]})
        raw = buf.getvalue()
        assert pickle.SHORT_BINSTRING + bytes([4]) + b"data" in raw and b"numpy.core" in raw
        (root / name).write_bytes(raw)
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump({"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": 4})
    (root / "batches.meta").write_bytes(buf.getvalue())
    test = data.load("cifar10", "test", root)
    images, labels = wanted["test_batch"]
    assert [test[i][1] for i in range(4)] == labels
    ds = data.info("cifar10")
    raw0 = torch.from_numpy(images[0].reshape(3, 32, 32)).float() / 255
    expect = (raw0 - torch.tensor(ds.mean).view(3, 1, 1)) / torch.tensor(ds.std).view(3, 1, 1)
    assert torch.allclose(test[0][0], expect, atol=1e-5)
    assert len(data.load("cifar10", "train", root)) == 20
    # a model's stored recipe: its own normalisation is used
    plain = data.load("cifar10", "test", root, preprocessing={"mean": [0, 0, 0], "std": [1, 1, 1]})
    assert torch.allclose(plain[0][0], raw0, atol=1e-6)


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

    from dlas_host.data.synsets import STANDARD

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / STANDARD[c]
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
    with pytest.raises(DatasetError, match="has no images") as err:
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
