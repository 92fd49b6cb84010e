"""Checkpoints in the layouts weights are published in load into zoo models; misfits are refused in one line.

The files are written here from zoo models' own state_dicts, re-keyed the way published and training files are:
DenseNet's legacy ``norm.1`` / ``conv.2`` keys (torchvision's own hosted DenseNet files), DataParallel's
``module.`` and torch.compile's ``_orig_mod.`` prefixes, ``state_dict`` / ``model`` wrappers, and no BatchNorm
batch counters (files from before torch 0.4.1). Nothing is downloaded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from dlas_host import zoo

_JOINED = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")


def _legacy_densenet_keys(state: dict) -> dict:
    """What torchvision's published DenseNet files look like: norm1 -> norm.1, conv2 -> conv.2, no counters."""
    return {_JOINED.sub(r"\1.\2.", k): v for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def densenet() -> torch.nn.Module:
    return zoo.create("densenet121", "imagenet", seed=3)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_remap_matches_torchvision_densenet_keys(densenet: torch.nn.Module) -> None:
    own = densenet.state_dict()
    legacy = _legacy_densenet_keys(own)
    renamed = [k for k in legacy if k not in own]
    # 58 dense layers x (norm1, conv1, norm2, conv2): 4 + 1 + 4 + 1 tensors each
    assert len(renamed) == 58 * 10 and any(".norm.1.running_var" in k for k in renamed)
    back = zoo.remap_state_dict(legacy, set(own))
    assert set(back) == {k for k in own if not k.endswith("num_batches_tracked")}
    assert all(back[k] is legacy[j] for k, j in zip(back, legacy))


def test_published_densenet_file_loads(tmp_path: Path, densenet: torch.nn.Module) -> None:
    path = tmp_path / "densenet121-legacy.pth"
    torch.save(_legacy_densenet_keys(densenet.state_dict()), path)
    loaded = zoo.create("densenet121", "imagenet", checkpoint=path)
    _assert_same_weights(densenet, loaded)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # small: the weights are the point
    with torch.no_grad():
        assert torch.equal(densenet(x), loaded(x))


def test_training_checkpoint_of_a_dataparallel_densenet_loads(tmp_path: Path, densenet: torch.nn.Module) -> None:
    path = tmp_path / "checkpoint.pth.tar"
    keys = {f"module.{k}": v for k, v in _legacy_densenet_keys(densenet.state_dict()).items()}
    torch.save({"epoch": 90, "arch": "densenet121", "best_acc1": 74.4, "state_dict": keys}, path)
    _assert_same_weights(densenet, zoo.create("densenet121", "imagenet", checkpoint=path))


@pytest.mark.parametrize("wrap", [
    lambda s: {f"_orig_mod.{k}": v for k, v in s.items()},
    lambda s: {"model": {f"module._orig_mod.{k}": v for k, v in s.items()}, "optimizer": {}},
    lambda s: {"model_state_dict": s, "epoch": 3},
])
def test_wrapped_resnet_checkpoints_load(tmp_path: Path, wrap) -> None:  # noqa: ANN001
    src = zoo.create("resnet18", "cifar10", seed=5)
    path = tmp_path / "r18.pt"
    torch.save(wrap(src.state_dict()), path)
    _assert_same_weights(src, zoo.create("resnet18", "cifar10", checkpoint=path))


def test_misfit_is_one_line_and_leaves_the_model_alone(tmp_path: Path, densenet: torch.nn.Module) -> None:
    path = tmp_path / "imagenet-densenet.pth"
    torch.save(_legacy_densenet_keys(densenet.state_dict()), path)
    target = zoo.create("densenet121", "cifar10", seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(zoo.ZooError) as err:
        zoo.load_checkpoint(target, path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"checkpoint {path} does not fit DenseNet: ")
    assert text.endswith("3 shape mismatch(es) (features.conv0.weight [64, 3, 7, 7] in the file, [64, 3, 3, 3] in "
                         "the model, classifier.weight [1000, 1024] in the file, [10, 1024] in the model, "
                         "classifier.bias [1000] in the file, [10] in the model)")
    _assert_same_weights_dict(before, target.state_dict())


def _assert_same_weights_dict(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_and_unexpected_keys_are_counted(tmp_path: Path) -> None:
    state = zoo.create("resnet18", "cifar10").state_dict()
    del state["fc.weight"], state["layer1.0.conv1.weight"]
    state["head.weight"] = torch.zeros(3)
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(zoo.ZooError, match=re.escape(
            "does not fit ResNet: 2 missing key(s) (layer1.0.conv1.weight, fc.weight); "
            "1 unexpected key(s) (head.weight)")) as err:
        zoo.create("resnet18", "cifar10", checkpoint=path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content,pattern", [
    (None, "does not exist"),
    (b"not a torch file", "is not a readable torch file"),
    ({"epoch": 3, "note": "no tensors"}, "holds no state_dict"),
    ([torch.zeros(2)], "holds no state_dict"),
])
def test_unusable_files_are_one_line(tmp_path: Path, content: object, pattern: str) -> None:
    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(zoo.ZooError, match=pattern) as err:
        zoo.create("resnet18", "cifar10", checkpoint=path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
