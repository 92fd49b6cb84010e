"""The model store loads without running code: tensors through ``weights_only``, the architecture from JSON.

A stored model.pt used to be a pickled module loaded with ``weights_only=False``: a planted file ran whatever
its ``__reduce__`` named. These tests plant such files and check that nothing runs and the error is one line,
and that every kind of model the project stores (zoo, channel-pruned, BatchNorm-folded) still comes back.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from dlas_host import zoo
from dlas_host.optimize import modelstore
from dlas_host.optimize.prune import prune
from dlas_host.optimize.spec import PruneSpec


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path / "state"))


class _Planted:
    """Unpickling this creates ``path``: what an attacker's model.pt would do (with any command instead)."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pruned_resnet18() -> nn.Module:
    model = zoo.create("resnet18", "cifar10")
    prune(model, PruneSpec.parse("channel:layer:l1:0.5"), example_input=zoo.example_input("cifar10"))
    return model


def _one_line_error(entry: modelstore.StoredModel) -> str:
    with pytest.raises(modelstore.ModelStoreError) as info:
        entry.load_model()
    message = str(info.value)
    assert "\n" not in message and entry.id in message
    return message


def test_planted_pickle_is_refused_and_never_runs(tmp_path):
    payload = tmp_path / "payload.pt"
    torch.save(_Planted(tmp_path / "proof"), payload)
    torch.load(payload, weights_only=False)  # the payload works: the old loader would have run it
    assert (tmp_path / "proof").exists()

    marker = tmp_path / "pwned"
    torch.save(_Planted(marker), payload)
    entry = modelstore.save(zoo.create("resnet18", "cifar10"), {"base_model": "resnet18", "dataset": "cifar10"})
    shutil.copy(payload, entry.path / "model.pt")
    message = _one_line_error(modelstore.load(entry.id))
    assert "model.pt is not a plain tensor file, refused" in message
    with pytest.raises(modelstore.ModelStoreError):
        modelstore.relax_module(entry.id)
    assert not marker.exists()


def test_old_format_entry_is_refused_without_reading_the_pickle(tmp_path):
    marker = tmp_path / "pwned"
    old = modelstore.root() / "0123456789abcdef"
    old.mkdir(parents=True)
    torch.save(_Planted(marker), old / "model.pt")
    (old / "meta.json").write_text(json.dumps({"id": old.name, "base_model": "resnet18", "dataset": "cifar10"}))
    message = _one_line_error(modelstore.load("0123"))
    assert "old format" in message and "dlas-host optimize" in message
    assert not marker.exists()


@pytest.mark.parametrize("bad_class", ["builtins:eval", "os:system", "subprocess:Popen", "torch:load",
                                       "torch.nn.modules.conv:F", "torchvision.models.resnet:resnet18",
                                       "torch.nn.modules.linear:Linear.__init__.__globals__"])
def test_arch_json_cannot_name_anything_but_module_classes(tmp_path, bad_class):
    entry = modelstore.save(zoo.create("resnet18", "cifar10"), {"base_model": "resnet18", "dataset": "cifar10"})
    arch = json.loads((entry.path / "arch.json").read_text())
    arch["module"]["class"] = bad_class
    (entry.path / "arch.json").write_text(json.dumps(arch))
    assert "allowed" in _one_line_error(entry)


def test_arch_json_cannot_set_module_internals(tmp_path):
    entry = modelstore.save(zoo.create("resnet18", "cifar10"), {"base_model": "resnet18", "dataset": "cifar10"})
    arch = json.loads((entry.path / "arch.json").read_text())
    arch["module"]["attrs"]["_forward_hooks"] = {"tuple": ["os:system"]}
    (entry.path / "arch.json").write_text(json.dumps(arch))
    assert "attribute name '_forward_hooks' is not allowed" in _one_line_error(entry)


def test_model_file_holds_only_tensors():
    entry = modelstore.save(zoo.create("mobilenet_v2", "cifar10"), {"base_model": "mobilenet_v2",
                                                                     "dataset": "cifar10"})
    tensors = torch.load(entry.path / "model.pt", weights_only=True)
    assert isinstance(tensors, dict) and all(isinstance(t, torch.Tensor) for t in tensors.values())


def test_channel_pruned_model_comes_back_with_its_shapes():
    model = _pruned_resnet18().eval()
    entry = modelstore.save(model, {"base_model": "resnet18", "dataset": "cifar10", "prune": {"kind": "channel"}})
    loaded = modelstore.load(entry.id).load_model()
    assert loaded.layer1[0].conv1.out_channels == model.layer1[0].conv1.out_channels < 64
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    x = zoo.example_input("cifar10", batch=2)
    torch.testing.assert_close(loaded(x), model(x))
    assert not loaded.training


def test_batchnorm_folded_graph_module_round_trips():
    """Quantization-aware training stores the fx GraphModule of zoo.fold_batchnorm (here of a pruned model)."""
    folded = zoo.fold_batchnorm(_pruned_resnet18())
    entry = modelstore.save(folded, {"base_model": "resnet18", "dataset": "digits"})
    loaded = modelstore.load(entry.id).load_model()
    assert isinstance(loaded, torch.fx.GraphModule) and loaded.code == folded.code
    x = zoo.example_input("cifar10")
    torch.testing.assert_close(loaded(x), folded(x))


def test_models_the_store_cannot_rebuild_are_refused_at_save():
    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(modelstore.ModelStoreError, match="is not a module class importable"):
        modelstore.save(nn.Sequential(nn.Conv2d(3, 4, 3), Custom()), {"base_model": "x", "dataset": "cifar10"})
    other = torch.fx.symbolic_trace(zoo.create("resnet18", "cifar10"))  # not the folded graph
    with pytest.raises(modelstore.ModelStoreError, match="not the BatchNorm-folded resnet18"):
        modelstore.save(other, {"base_model": "resnet18", "dataset": "cifar10"})
    assert not any(modelstore.root().iterdir())
