"""Trained base models: a training recipe becomes a model-store entry that bench, optimize and sweeps reuse.

Training runs on the host's GPU when torch sees one, else on the CPU, and resumes from a per-recipe
checkpoint after a kill (``<data dir>/train/<recipe hash>.pt``, tensors and plain values only, read with
``weights_only=True``). The stored entry records the recipe, the data fingerprint, the preprocessing and the
accuracy measured by torch on the whole test split, so a later on-device evaluation can be compared with it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .. import data, train, zoo
from ..paths import sub_dir
from . import modelstore


@dataclass(frozen=True)
class Recipe:
    """What a base model is trained with; its hash names the resumable checkpoint."""

    model: str
    dataset: str
    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 64
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    max_steps_per_epoch: int | None = None
    train_limit: int | None = None

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def default_name(self) -> str:
        return f"{self.model}-{self.dataset}-e{self.epochs}"


def checkpoint_path(recipe: Recipe) -> Path:
    return sub_dir("train") / f"{recipe.key()}.pt"


def dataset_fingerprint(ds: torch.utils.data.Dataset) -> str:
    """A cheap, stable identity of a dataset split: its length, every label, and the first and last images."""
    h = hashlib.sha256()
    n = len(ds)  # type: ignore[arg-type]
    h.update(str(n).encode())
    labels = _labels(ds)
    h.update(json.dumps(labels).encode())
    for i in sorted({0, n // 2, n - 1} if n else set()):
        image = ds[i][0]
        h.update(torch.as_tensor(image).float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _labels(ds: Any) -> list[int]:
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            return [int(t) for t in getattr(ds, attr)]
    if isinstance(ds, torch.utils.data.TensorDataset):
        return [int(t) for t in ds.tensors[1]]
    if isinstance(ds, torch.utils.data.Subset):
        inner = _labels(ds.dataset)
        return [inner[i] for i in ds.indices]
    return [int(ds[i][1]) for i in range(len(ds))]


def train_base(recipe: Recipe, *, name: str | None = None, data_dir: Path | None = None, device: str | None = None,
               progress: bool = True, force: bool = False) -> modelstore.StoredModel:
    """Train ``recipe`` from seeded random weights (resuming its checkpoint) and store the result.

    A recipe already stored is not retrained (``force`` retrains it)."""
    zoo.spec(recipe.model)
    if not force:
        done = find_trained(recipe)
        if done is not None:
            return done
    ds = data.info(recipe.dataset)
    torch.manual_seed(recipe.seed)
    model = zoo.create(recipe.model, data.model_dataset(recipe.dataset), seed=recipe.seed)
    train_loader, test_loader = data.loaders(recipe.dataset, recipe.batch_size, data_dir,
                                             train_limit=recipe.train_limit, seed=recipe.seed)
    ckpt = checkpoint_path(recipe)
    cfg = train.TrainConfig(epochs=recipe.epochs, lr=recipe.lr, momentum=recipe.momentum,
                            weight_decay=recipe.weight_decay, schedule=recipe.schedule,
                            max_steps_per_epoch=recipe.max_steps_per_epoch, checkpoint=ckpt, device=device,
                            progress=progress)
    history = train.train(model, train_loader, cfg)
    model = model.cpu().eval()
    top1, top5 = train.evaluate(model, test_loader)
    test_set = test_loader.dataset
    meta = {
        "base_model": recipe.model, "dataset": recipe.dataset, "prune": None, "quantize": None, "calibration": None,
        "source": "train", "name": name or recipe.default_name(), "recipe": asdict(recipe),
        "trained_on": str(cfg.device or train.default_device()),
        "preprocessing": data.preprocessing(recipe.dataset),
        "data_fingerprint": {"train": dataset_fingerprint(train_loader.dataset), "test": dataset_fingerprint(test_set)},
        "accuracy": {"top1": round(top1, 6), "top5": round(top5, 6), "samples": len(test_set),  # type: ignore[arg-type]
                     "dataset": recipe.dataset, "engine": "torch", "split": "test"},
        "sparsity": 0.0, "params": sum(p.numel() for p in model.parameters()),
        "history": history, "image_size": ds.image_size,
    }
    entry = modelstore.save(model, meta)
    ckpt.unlink(missing_ok=True)  # the stored entry is the result; a re-run with the same recipe retrains
    return entry


def find_trained(recipe: Recipe) -> modelstore.StoredModel | None:
    """The newest stored entry trained with exactly ``recipe``, if any."""
    wanted = asdict(recipe)
    for meta in reversed(modelstore.list_models()):
        if meta.get("source") == "train" and meta.get("recipe") == wanted:
            return modelstore.load(meta["id"])
    return None
