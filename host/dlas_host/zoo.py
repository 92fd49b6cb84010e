"""Model zoo: torchvision architectures in their ImageNet form and the usual CIFAR-10 adaptation.

Nothing is downloaded. Weights are either a seeded random initialisation (BatchNorm statistics
randomised too, so that folding and numerics are really exercised) or a local checkpoint the user gives.
Adding a model is one entry in ``MODELS``: its torchvision constructor and its CIFAR stem adaptation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn
from .errors import DlasError


class ZooError(DlasError, ValueError):
    """Unknown model or dataset, or a checkpoint that does not fit the model."""


@dataclass(frozen=True)
class Dataset:
    name: str
    image_size: int
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset("cifar10", 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": Dataset("imagenet", 224, 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


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


def input_shape(dataset_name: str, batch: int = 1) -> tuple[int, int, int, int]:
    ds = dataset(dataset_name)
    return (batch, 3, ds.image_size, ds.image_size)


def create(name: str, dataset_name: str, *, checkpoint: Path | str | None = None, seed: int = 0) -> nn.Module:
    """Build ``name`` for ``dataset_name`` in eval mode, with seeded random or checkpointed weights."""
    model_spec, ds = spec(name), dataset(dataset_name)
    torch.manual_seed(seed)
    model = model_spec.build(ds.num_classes)
    if ds.name == "cifar10":
        model_spec.cifar_adapt(model, ds.num_classes)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    else:
        _randomise_batchnorm(model, seed)
    return model.eval()


def load_checkpoint(model: nn.Module, path: Path | str) -> None:
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ZooError(f"checkpoint {path} is not a readable torch file: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ZooError(f"checkpoint {path} does not fit {type(model).__name__}: {first[1] if len(first) > 1 else first[0]}") from None


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


def example_input(dataset_name: str, batch: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*input_shape(dataset_name, batch), generator=gen)
