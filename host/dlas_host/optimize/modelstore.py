"""Store of optimized models: ``<data dir>/models/<id>/{model.pt, meta.json}``.

The id is content-derived (hash of the weights and the optimization meta), so storing the same result twice
gives the same id. ``model.pt`` holds the whole torch module (channel-pruned models have their own shapes);
``meta.json`` holds base model, dataset, pruning and quantization specs, calibration scales, sparsity, size and
accuracy. The host rebuilds the Relax module of a stored model with ``relax_module(id, batch)``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class ModelStoreError(LookupError):
    pass


@dataclass
class StoredModel:
    id: str
    path: Path
    meta: dict

    def load_model(self) -> nn.Module:
        return torch.load(self.path / "model.pt", map_location="cpu", weights_only=False).eval()


def root() -> Path:
    from dlas_host import paths

    return paths.sub_dir("models")


def _content_id(model: nn.Module, meta: dict) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    ident = {k: meta.get(k) for k in ("base_model", "dataset", "prune", "quantize", "calibration")}
    h.update(json.dumps(ident, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def save(model: nn.Module, meta: dict) -> StoredModel:
    """Store ``model`` with ``meta`` (JSON-serialisable); returns the stored entry (same content -> same id)."""
    model = model.cpu().eval()
    mid = _content_id(model, meta)
    dest = root() / mid
    tmp = root() / f".{mid}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(model, tmp / "model.pt")
    full = {"id": mid, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta}
    (tmp / "meta.json").write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return StoredModel(mid, dest, full)


def load(model_id: str) -> StoredModel:
    """Entry by id or unique id prefix."""
    matches = [p for p in root().iterdir() if p.is_dir() and not p.name.startswith(".")
               and p.name.startswith(model_id)] if model_id else []
    if len(matches) != 1:
        raise ModelStoreError(f"no stored model {model_id!r}" if not matches
                              else f"model id prefix {model_id!r} is ambiguous")
    path = matches[0]
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise ModelStoreError(f"stored model {path.name} has no readable meta.json") from None
    return StoredModel(path.name, path, meta)


def list_models() -> list[dict]:
    out = []
    for p in sorted(root().iterdir()):
        if p.is_dir() and not p.name.startswith(".") and (p / "meta.json").is_file():
            try:
                out.append(json.loads((p / "meta.json").read_text()))
            except json.JSONDecodeError:
                continue
    return sorted(out, key=lambda m: m.get("created", ""))


def relax_module(model_id: str, batch: int = 1):
    """The stored model as the Relax module the host lowers: imported, and quantized if the meta says so."""
    from dlas_host.data import info

    from .calibrate import Calibration
    from .quantize import quantize_relax
    from .relax_io import to_relax
    from .spec import QuantSpec

    entry = load(model_id)
    ds = info(entry.meta["dataset"])
    mod = to_relax(entry.load_model(), torch.zeros(batch, 3, ds.image_size, ds.image_size))
    q = entry.meta.get("quantize")
    if q:
        spec = QuantSpec(**q)
        cal = None
        if spec.dtype == "int8":
            c = entry.meta["calibration"]
            cal = Calibration([x["name"] for x in c["layers"]], [x["scale"] for x in c["layers"]], c["method"],
                              c["samples"])
        mod = quantize_relax(mod, spec, cal)
    return mod


list = list_models  # noqa: A001 - the public name the brief asks for; builtins stay reachable in callers
