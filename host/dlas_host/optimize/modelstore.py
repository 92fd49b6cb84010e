"""Store of optimized models: ``<data dir>/models/<id>/{model.pt, arch.json, meta.json}``.

The id is content-derived (hash of the weights and the optimization meta), so storing the same result twice
gives the same id. ``meta.json`` holds base model, dataset, pruning and quantization specs, calibration scales,
sparsity, size and accuracy. The host rebuilds the Relax module of a stored model with ``relax_module(id, batch)``.

Loading runs no code from the store: unpickling a module could run anything a planted file asks for.
``model.pt`` holds tensors only (read with ``weights_only=True``); ``arch.json`` describes the module tree: per
module its class (from torch.nn, torchvision.models or torchvision.ops only), its plain attributes (numbers,
strings, tuples, module classes) and the names of its parameters and buffers, so channel-pruned models come
back with their own shapes. A BatchNorm-folded fx ``GraphModule`` (quantization-aware training) is stored as
its submodules; its graph is re-made by folding the zoo's ``base_model`` again and must hash like the stored one.
"""

from __future__ import annotations

import builtins
import hashlib
import importlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from ..errors import DlasError

FORMAT = 1
ARCH_FILE = "arch.json"
CLASS_MODULES = ("torch.nn.modules.", "torchvision.models.", "torchvision.ops.")
_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # hooks, _parameters, _modules, training ...
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class ModelStoreError(DlasError, LookupError):
    pass


@dataclass
class StoredModel:
    id: str
    path: Path
    meta: dict

    def load_model(self) -> nn.Module:
        """The stored module, rebuilt from ``arch.json`` and the tensors of ``model.pt`` (see module docstring)."""
        try:
            arch = json.loads((self.path / ARCH_FILE).read_text())
        except FileNotFoundError:
            raise ModelStoreError(f"stored model {self.id} has no {ARCH_FILE}: it is in the old format (a pickled "
                                  "module, never loaded since unpickling can run code); re-create it with "
                                  "`dlas-host optimize`") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelStoreError(f"stored model {self.id}: unreadable {ARCH_FILE}: {exc}") from None
        if not isinstance(arch, dict) or arch.get("format") != FORMAT:
            raise ModelStoreError(f"stored model {self.id}: {ARCH_FILE} is not format {FORMAT}")
        try:
            tensors = torch.load(self.path / "model.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - every unreadable or refused file is the same error
            raise ModelStoreError(f"stored model {self.id}: model.pt is not a plain tensor file, refused "
                                  f"({_reason(exc)})") from None
        if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise ModelStoreError(f"stored model {self.id}: model.pt does not hold a name -> tensor mapping")
        try:
            model = _rebuild(arch, tensors, self.meta)
        except ModelStoreError as exc:
            raise ModelStoreError(f"stored model {self.id}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise ModelStoreError(f"stored model {self.id}: {ARCH_FILE} does not describe a loadable module "
                                  f"({_reason(exc)})") from None
        return model.eval()


def _reason(exc: BaseException) -> str:
    """The first sentence of an exception; for torch's weights-only refusal, the global it refused (torch's
    own advice that follows is how to load the file unsafely)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    refused = [ln.split("error:", 1)[1].strip() for ln in lines if ln.startswith("WeightsUnpickler error:")]
    text = (refused or lines or [""])[0].split(". ")[0]
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------- description
def _class_name(cls: type, where: str) -> str:
    name = f"{cls.__module__}:{cls.__qualname__}"
    try:
        ok = _resolve_class(name) is cls
    except ModelStoreError:
        ok = False
    if not ok:
        raise ModelStoreError(f"cannot store {where or 'the model'}: class {name} is not a module class importable "
                              f"from {', '.join(m.rstrip('.') for m in CLASS_MODULES)}")
    return name


def _resolve_class(name: str) -> type[nn.Module]:
    """An ``nn.Module`` class named ``module:qualname``, only from the allowed packages."""
    mod_name, _, qualname = name.partition(":")
    if not (_DOTTED.fullmatch(mod_name) and _DOTTED.fullmatch(qualname) and mod_name.startswith(CLASS_MODULES)):
        raise ModelStoreError(f"class {name!r} is not allowed (only from {', '.join(CLASS_MODULES)})")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise ModelStoreError(f"class {name!r} does not exist in this torch/torchvision") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)) or issubclass(obj, fx.GraphModule):
        raise ModelStoreError(f"{name!r} is not an allowed module class")
    return obj


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, builtins.list)):  # this module's `list` is list_models
        items = [_encode(v, where) for v in value]
        return {"tuple": items} if isinstance(value, tuple) else items
    if isinstance(value, type) and issubclass(value, nn.Module):
        return {"class": _class_name(value, where)}
    raise ModelStoreError(f"cannot store {where}: a {type(value).__name__} attribute (numbers, strings, tuples, "
                          "lists and module classes only)")


def _decode(value: Any) -> Any:
    if isinstance(value, builtins.list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"tuple"} and isinstance(value["tuple"], builtins.list):
            return tuple(_decode(v) for v in value["tuple"])
        if set(value) == {"class"} and isinstance(value["class"], str):
            return _resolve_class(value["class"])
        raise ModelStoreError(f"unknown attribute encoding {sorted(value)}")
    return value


def _describe(module: nn.Module, where: str, tensors: dict[str, torch.Tensor], with_class: bool = True) -> dict:
    """``module`` as JSON (see module docstring); its parameters and buffers go into ``tensors``."""
    hooks = [k for k in _MODULE_INTERNALS if k.endswith("hooks") and getattr(module, k)]
    if hooks:
        raise ModelStoreError(f"cannot store {where or 'the model'}: it has hooks ({', '.join(sorted(hooks))})")
    entry: dict[str, Any] = {}
    if with_class:
        entry["class"] = _class_name(type(module), where)
        entry["attrs"] = {k: _encode(v, f"{where}.{k}".lstrip(".")) for k, v in vars(module).items()
                          if k not in _MODULE_INTERNALS}
    prefix = f"{where}." if where else ""
    for kind, items in (("params", module._parameters), ("buffers", module._buffers)):
        entry[kind] = {n: t is not None for n, t in items.items()}
        tensors.update({prefix + n: t.detach() for n, t in items.items() if t is not None})
    entry["non_persistent"] = sorted(module._non_persistent_buffers_set)
    entry["modules"] = {n: None if m is None else _describe(m, prefix + n, tensors) for n, m in module._modules.items()}
    return entry


def _fill(module: nn.Module, entry: dict, tensors: dict[str, torch.Tensor], where: str) -> nn.Module:
    """Give ``module`` the parameters, buffers and submodules ``entry`` names."""
    prefix = f"{where}." if where else ""

    def tensor(name: str) -> torch.Tensor:
        if prefix + name not in tensors:
            raise ModelStoreError(f"model.pt lacks {prefix + name}")
        return tensors.pop(prefix + name)

    for name, present in entry["params"].items():
        module.register_parameter(name, nn.Parameter(tensor(name)) if present else None)
    for name, present in entry["buffers"].items():
        module.register_buffer(name, tensor(name) if present else None, persistent=name not in entry["non_persistent"])
    for name, child in entry["modules"].items():
        module.add_module(name, None if child is None else _build(child, tensors, prefix + name))
    return module


def _build(entry: dict, tensors: dict[str, torch.Tensor], where: str) -> nn.Module:
    cls = _resolve_class(entry["class"])
    module = cls.__new__(cls)  # what unpickling does, minus running anything the file names
    nn.Module.__init__(module)
    for key, value in entry["attrs"].items():
        if not _IDENT.fullmatch(key) or key.startswith("__") or key in _MODULE_INTERNALS:
            raise ModelStoreError(f"{where or 'model'}: attribute name {key!r} is not allowed")
        module.__dict__[key] = _decode(value)
    return _fill(module, entry, tensors, where)


def _folded_zoo_model(meta: dict) -> fx.GraphModule:
    """The graph a BatchNorm-folded model of ``meta["base_model"]`` has (weights and channel counts aside)."""
    from dlas_host import data, zoo

    if "base_model" not in meta or "dataset" not in meta:
        raise ModelStoreError("an fx GraphModule needs base_model and dataset in its meta to be re-made")
    try:
        return zoo.fold_batchnorm(zoo.create(meta["base_model"], data.model_dataset(meta["dataset"])))
    except (zoo.ZooError, KeyError, ValueError) as exc:
        raise ModelStoreError(f"cannot re-make the folded graph of {meta['base_model']}: {exc}") from None


def _code_hash(gm: fx.GraphModule) -> str:
    return hashlib.sha256(gm.code.encode()).hexdigest()


def _architecture(model: nn.Module, meta: dict, tensors: dict[str, torch.Tensor]) -> dict:
    if not isinstance(model, fx.GraphModule):
        return {"format": FORMAT, "graph": None, "module": _describe(model, "", tensors)}
    code = _code_hash(model)
    if _code_hash(_folded_zoo_model(meta)) != code:
        raise ModelStoreError(f"cannot store this fx GraphModule: its graph is not the BatchNorm-folded "
                              f"{meta['base_model']} (only that graph can be re-made without storing code)")
    return {"format": FORMAT, "graph": {"recipe": "zoo.fold_batchnorm", "code_sha256": code},
            "module": _describe(model, "", tensors, with_class=False)}


def _rebuild(arch: dict, tensors: dict[str, torch.Tensor], meta: dict) -> nn.Module:
    graph = arch.get("graph")
    if graph is None:
        model = _build(arch["module"], tensors, "")
    else:
        if graph.get("recipe") != "zoo.fold_batchnorm":
            raise ModelStoreError(f"unknown graph recipe {graph.get('recipe')!r}")
        model = _folded_zoo_model(meta)
        if _code_hash(model) != graph.get("code_sha256"):
            raise ModelStoreError(f"the folded {meta['base_model']} graph of this version differs from the stored "
                                  "one; re-create the model with `dlas-host optimize`")
        for registry in (model._parameters, model._buffers, model._modules):
            registry.clear()
        _fill(model, arch["module"], tensors, "")
    if tensors:
        raise ModelStoreError(f"model.pt holds tensors {ARCH_FILE} does not name: {', '.join(sorted(tensors)[:5])}")
    return model


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
    tensors: dict[str, torch.Tensor] = {}
    arch = _architecture(model, meta, tensors)
    dest = root() / mid
    tmp = root() / f".{mid}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(tensors, tmp / "model.pt")
    (tmp / ARCH_FILE).write_text(json.dumps(arch))
    full = {"id": mid, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta}
    (tmp / "meta.json").write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return StoredModel(mid, dest, full)


def load(model_id: str) -> StoredModel:
    """Entry by id, unique id prefix, or name (the newest entry of that name)."""
    matches = [p for p in root().iterdir() if p.is_dir() and not p.name.startswith(".")
               and p.name.startswith(model_id)] if model_id else []
    if not matches and model_id:
        named = [m for m in list_models() if m.get("name") == model_id]
        if named:
            matches = [root() / named[-1]["id"]]
    if len(matches) != 1:
        raise ModelStoreError(f"no stored model {model_id!r} (see `dlas-host models list`)" if not matches
                              else f"model id prefix {model_id!r} is ambiguous")
    path = matches[0]
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise ModelStoreError(f"stored model {path.name} has no readable meta.json") from None
    return StoredModel(path.name, path, meta)


def lineage(meta: dict) -> dict:
    """What a result row records of its stored model: which model it is, what it was derived from and how
    (the report measures each compression's accuracy against its base with this)."""
    from .spec import PruneSpec, SpecError  # noqa: PLC0415

    prune = meta.get("prune")
    if isinstance(prune, dict):
        try:
            prune = PruneSpec(**{k: tuple(v) if isinstance(v, builtins.list) else v for k, v in prune.items()}).text()
        except (TypeError, SpecError):
            prune = str(prune)
    out = {"id": meta.get("id"), "name": meta.get("name"), "base_id": meta.get("base_id"),
           "source": meta.get("source"), "prune": prune, "finetune": meta.get("finetune"),
           "quantize": meta.get("quantize"), "sparsity": meta.get("sparsity")}
    return {k: v for k, v in out.items() if v not in (None, "", {})}


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
    prep = entry.meta.get("preprocessing")
    side = prep.get("image_size") if isinstance(prep, dict) else None  # its recipe's input side (crop 240)
    if not isinstance(side, int) or side <= 0:
        side = info(entry.meta["dataset"]).image_size
    mod = to_relax(entry.load_model(), torch.zeros(batch, 3, side, side))
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
