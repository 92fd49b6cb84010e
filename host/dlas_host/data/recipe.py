"""Evaluation preprocessing recipes: what a model's stored ``preprocessing`` may say, checked before use.

A recipe is the dict ``info.preprocessing(name)`` makes and model metadata stores: ``image_size``, ``mean``,
``std`` and, for ImageNet, ``resize`` (shorter side), ``crop`` (centre crop, the model's input size) and
``interpolation``. Published weights differ in it (torchvision's ResNet-50 V2 weights evaluate at resize 232,
EfficientNet at bicubic), so a stored recipe overrides the dataset's default key by key. Imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .info import DatasetError, info, preprocessing

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
_IMAGENET_KEYS = ("image_size", "mean", "std", "resize", "crop", "interpolation")
_SMALL_KEYS = ("image_size", "mean", "std")  # CIFAR-10 and digits: images are used at their stored size


@dataclass(frozen=True)
class Recipe:
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: int | None = None
    crop: int | None = None
    interpolation: str = "bilinear"


def _positive_int(dataset: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 4096:
        raise DatasetError(f"preprocessing for {dataset}: {key} must be a whole number of pixels in 1..4096, "
                           f"not {value!r}")
    return value


def _triple(dataset: str, key: str, value: Any, positive: bool) -> tuple[float, float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 or not positive) for v in value)
    if not ok:
        raise DatasetError(f"preprocessing for {dataset}: {key} must be 3 {'positive ' if positive else ''}"
                           f"numbers (one per RGB channel), not {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def resolve(dataset: str, given: dict | None = None) -> Recipe:
    """The recipe for ``dataset``: its default, overridden key by key by ``given`` (e.g. a model's metadata).

    Unknown keys are refused rather than ignored: a recipe this code cannot honour would score the model
    on other inputs than its own. For ImageNet a ``crop`` sets ``image_size`` unless both are given."""
    ds = info(dataset)
    given = dict(given or {})
    allowed = _IMAGENET_KEYS if dataset == "imagenet" else _SMALL_KEYS
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise DatasetError(f"preprocessing for {dataset} has unknown key(s) {', '.join(unknown)}; "
                           f"known: {', '.join(allowed)}")
    if "crop" in given and "image_size" not in given:
        given["image_size"] = given["crop"]
    merged = {**preprocessing(dataset), **given}
    size = _positive_int(dataset, "image_size", merged["image_size"])
    mean = _triple(dataset, "mean", merged["mean"], positive=False)
    std = _triple(dataset, "std", merged["std"], positive=True)
    if dataset != "imagenet":
        if size != ds.image_size:
            raise DatasetError(f"preprocessing for {dataset}: image_size is {size}, but {dataset} images are "
                               f"{ds.image_size}x{ds.image_size}")
        return Recipe(size, mean, std)
    resize = _positive_int(dataset, "resize", merged["resize"])
    crop = _positive_int(dataset, "crop", merged["crop"])
    if crop != size:
        raise DatasetError(f"preprocessing for {dataset}: crop {crop} and image_size {size} differ (the centre "
                           "crop is the model's input)")
    interpolation = merged["interpolation"]
    if interpolation not in INTERPOLATIONS:
        raise DatasetError(f"preprocessing for {dataset}: unknown interpolation {interpolation!r}; "
                           f"known: {', '.join(INTERPOLATIONS)}")
    return Recipe(size, mean, std, resize, crop, interpolation)
