"""Model zoo: torchvision architectures in their ImageNet form and the usual CIFAR-10 adaptation.

Nothing is downloaded. Weights are either a seeded random initialisation (BatchNorm statistics
randomised too, so that folding and numerics are really exercised) or a local checkpoint the user gives.
Adding a model is one entry in ``MODELS``: its torchvision constructor and its CIFAR stem adaptation.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from .data.info import DATASETS as DATA_DATASETS
from .data.info import DatasetInfo
from .errors import DlasError


class ZooError(DlasError, ValueError):
    """Unknown model or dataset, or a checkpoint that does not fit the model."""


# The dataset table is owned by the data layer (sizes, classes, normalisation, which model form each uses).
Dataset = DatasetInfo
DATASETS: dict[str, DatasetInfo] = DATA_DATASETS


def _resnet_cifar(m: nn.Module) -> None:
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()


def _first_conv_stride1(container: nn.Module) -> None:
    """MobileNets / EfficientNet: keep the 32x32 resolution in the stem."""
    conv = container[0][0]
    conv.stride = (1, 1)


def _vgg_cifar(m: nn.Module, num_classes: int) -> None:
    m.avgpool = nn.Identity()
    m.classifier = nn.Sequential(nn.Flatten(), nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Linear(512, num_classes))


def _densenet_cifar(m: nn.Module) -> None:
    m.features.conv0 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.features.pool0 = nn.Identity()


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[int], nn.Module]
    cifar_adapt: Callable[[nn.Module, int], None]
    family: str  # "resnet" (skip connections), "mobilenet" (depthwise separable), "plain", "dense"


MODELS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec("resnet18", lambda n: torchvision.models.resnet18(num_classes=n),
                          lambda m, n: _resnet_cifar(m), "resnet"),
    "resnet50": ModelSpec("resnet50", lambda n: torchvision.models.resnet50(num_classes=n),
                          lambda m, n: _resnet_cifar(m), "resnet"),
    "mobilenet_v2": ModelSpec("mobilenet_v2", lambda n: torchvision.models.mobilenet_v2(num_classes=n),
                              lambda m, n: _first_conv_stride1(m.features), "mobilenet"),
    "mobilenet_v3_large": ModelSpec("mobilenet_v3_large",
                                    lambda n: torchvision.models.mobilenet_v3_large(num_classes=n),
                                    lambda m, n: _first_conv_stride1(m.features), "mobilenet"),
    "efficientnet_b0": ModelSpec("efficientnet_b0", lambda n: torchvision.models.efficientnet_b0(num_classes=n),
                                 lambda m, n: _first_conv_stride1(m.features), "mobilenet"),
    "vgg16": ModelSpec("vgg16", lambda n: torchvision.models.vgg16(num_classes=n), _vgg_cifar, "plain"),
    "densenet121": ModelSpec("densenet121", lambda n: torchvision.models.densenet121(num_classes=n),
                             lambda m, n: _densenet_cifar(m), "dense"),
}


def dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise ZooError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ZooError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def input_shape(dataset_name: str, batch: int = 1, image_size: int | None = None) -> tuple[int, int, int, int]:
    """NCHW input of ``dataset_name``; ``image_size`` overrides the side (a stored model's recipe, e.g. crop 240)."""
    side = image_size or dataset(dataset_name).image_size
    return (batch, 3, side, side)


def create(name: str, dataset_name: str, *, checkpoint: Path | str | None = None, seed: int = 0) -> nn.Module:
    """Build ``name`` for ``dataset_name`` in eval mode, with seeded random or checkpointed weights."""
    model_spec, ds = spec(name), dataset(dataset_name)
    torch.manual_seed(seed)
    model = model_spec.build(ds.num_classes)
    if ds.model_form == "cifar10":  # 32x32 inputs (CIFAR-10, digits): the CIFAR stem
        model_spec.cifar_adapt(model, ds.num_classes)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    else:
        _randomise_batchnorm(model, seed)
    return model.eval()


def load_checkpoint(model: nn.Module, path: Path | str) -> None:
    """Load a state_dict file into ``model``, accepting the published layouts (see ``remap_state_dict``).

    A file that does not fit is refused in one line naming the missing, unexpected and misshapen keys; the
    model is left untouched then."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        first = str(exc).strip().splitlines()
        raise ZooError(f"checkpoint {path} is not a readable torch file: {first[0] if first else type(exc).__name__}"
                       ) from None
    state = _unwrap(state)
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ZooError(f"checkpoint {path} holds no state_dict (tensors by parameter name)")
    wanted = model.state_dict()
    state = remap_state_dict(state, set(wanted))
    for key, value in wanted.items():  # files from before torch 0.4.1 have no BatchNorm batch counters
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value.clone()
    misfit = _misfit(wanted, state)
    if misfit:
        raise ZooError(f"checkpoint {path} does not fit {type(model).__name__}: {misfit}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ZooError(f"checkpoint {path} does not fit {type(model).__name__}: "
                       f"{(first[1] if len(first) > 1 else first[0]).strip()[:300]}") from None


_WRAPPERS = ("state_dict", "model_state_dict", "model")
# prefixes a wrapped model adds to every key: DataParallel / DistributedDataParallel, torch.compile
_PREFIXES = ("module.", "_orig_mod.")
# torchvision's published DenseNet files use the old layout: a dense layer's modules named norm.1, conv.2, ...
_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _unwrap(state: object) -> object:
    """The state_dict inside a training checkpoint (``{"state_dict": ...}``, ``{"model": ...}``, ...)."""
    for key in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _rename(key: str, wanted: set[str]) -> str:
    changed = True
    while key not in wanted and changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    if key not in wanted:
        m = _DENSENET_LEGACY.match(key)
        if m:
            key = m.group(1) + m.group(2)
    return key


def remap_state_dict(state: dict, wanted: set[str]) -> dict:
    """``state`` with published key layouts renamed to the model's (``wanted``): wrapper prefixes stripped
    (``module.`` from DataParallel, ``_orig_mod.`` from torch.compile) and DenseNet's legacy ``norm.1`` /
    ``conv.2`` keys joined (``norm1``, ``conv2``) as torchvision's own loader does. Keys the model already
    has are never renamed."""
    out: dict = OrderedDict((_rename(k, wanted), v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # per-module versions (BatchNorm reads them), under the renamed prefixes
        renamed = OrderedDict((_rename(k, wanted) if k else k, v) for k, v in metadata.items())
        out._metadata = renamed  # type: ignore[attr-defined]
    return out


def _misfit(wanted: dict, state: dict, shown: int = 3) -> str:
    """One line describing how ``state`` differs from ``wanted`` (empty when it fits)."""
    def names(keys: list[str]) -> str:
        return ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")

    missing = [k for k in wanted if k not in state]
    unexpected = [k for k in state if k not in wanted]
    shapes = [f"{k} {list(state[k].shape)} in the file, {list(wanted[k].shape)} in the model" for k in state
              if k in wanted and isinstance(state[k], torch.Tensor) and state[k].shape != wanted[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) ({names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) ({names(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) ({names(shapes)})")
    return "; ".join(parts)


def _randomise_batchnorm(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                mod.weight.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                mod.bias.copy_(torch.randn(c, generator=gen) * 0.1)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold eval-mode BatchNorm into the preceding convolution (TVM's importer does not)."""
    from torch.fx.experimental.optimization import fuse

    return fuse(model.eval(), inplace=False)


def example_input(dataset_name: str, batch: int = 1, seed: int = 0, image_size: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*input_shape(dataset_name, batch, image_size), generator=gen)
