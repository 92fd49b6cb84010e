"""The dataset table (sizes, classes, normalisation, model form) and its errors; imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass
from ..errors import DlasError


class DatasetError(DlasError, ValueError):
    """A dataset that is unknown, missing or malformed; the message is one line that says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    image_size: int
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # zoo dataset whose model form (stem, classifier width) this dataset uses
    model_form: str
    env_var: str | None


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           "cifar10", "DLAS_CIFAR10_DIR"),
    "imagenet": DatasetInfo("imagenet", 224, 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                            "imagenet", "DLAS_IMAGENET_DIR"),
    "digits": DatasetInfo("digits", 32, 10, (0.3053, 0.3053, 0.3053), (0.3236, 0.3236, 0.3236), "cifar10", None),
}

SPLITS = ("train", "test")


def info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def model_dataset(name: str) -> str:
    """The zoo dataset name to build models for ``name`` with (digits uses the CIFAR-10 form)."""
    return info(name).model_form


def preprocessing(name: str) -> dict:
    """The evaluation preprocessing of ``name``, stored with every model trained or imported on it."""
    ds = info(name)
    out = {"image_size": ds.image_size, "mean": list(ds.mean), "std": list(ds.std)}
    if name == "imagenet":
        out.update(resize=256, crop=ds.image_size, interpolation="bilinear")
    return out
