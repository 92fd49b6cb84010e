"""Result rows as the report reads them: every field is checked once here, so no rule meets a None or a
value of the wrong type (old databases have NULLs in newer columns; hand-made rows may lack fields).

A ``Meas`` keeps the row's dimensions (``dimensions.RESULT_AXES``), its raw timing samples, whether its
timing was flagged unstable, and the sparsity its build manifest actually stored.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Iterable, Mapping

import numpy as np

from dlas_agent.stats import UNSTABLE_RELATIVE_SPREAD

from ..dimensions import RESULT_AXES
from ..store import ResultRow

Row = dict[str, Any]
AXES: tuple[str, ...] = RESULT_AXES
STATUSES = ("ok", "error", "skipped")
GPU_TARGETS = ("cuda", "rocm", "vulkan", "opencl", "metal")
MAX_MS = 1e9  # a timing above this (11 days) is garbage, not a measurement
# Warnings that flag a timing: a spread above the agent's threshold, other processes taking CPU meanwhile, or
# an agent running under emulation (qemu-user: its timings say nothing about the board).
FLAGS = ("unstable", "may be inflated", "emulated")


def _defaults() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(ResultRow):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
        else:
            out[f.name] = "?"  # dataset, model, system, device: required in the store, unknown here
    return out


DEFAULTS = _defaults()


@dataclass(eq=False)
class Meas:
    """One result row, normalised."""

    id: int
    axes: dict[str, Any]  # RESULT_AXES: str values, except batch (int) and sparsity (float)
    status: str
    median: float | None  # positive and finite, or None
    samples: np.ndarray  # the raw samples that are positive and finite (ms)
    unstable: bool
    warnings: list[str]
    sparsity: float  # fraction of zero weights the build stored (manifest), else the row's label
    asked: dict[str, str]  # the layer labels the job asked for (TVM rows), {} otherwise
    artifact_bytes: int
    top1: float | None
    top5: float | None
    transfer_ms: float | None
    compute_ms: float | None
    sweep_id: str
    error: str
    built: str
    device_env: dict[str, Any]
    host_env: dict[str, Any]
    superseded: bool  # an attempt a later run of the same sweep job replaced (the store's ``superseded_by``)
    row: Row = field(repr=False)
    emulated: str = ""  # the agent ran under emulation (device_env.emulation): why
    eval_images: int = 0  # images behind top1/top5 (0: no accuracy)
    eval_fingerprint: str = ""  # which images: accuracies compare only on the same fingerprint
    hits1: int | None = None  # top-1 hits the evaluation counted (else derived from top1)
    lineage: dict[str, Any] = field(default_factory=dict)  # the stored model: id, base_id, prune, finetune

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.median is not None

    def __getitem__(self, axis: str) -> Any:
        return self.axes[axis]

    @property
    def asked_algorithm(self) -> str:
        """The algorithm the job asked for (a sparse build's label says what its dense layers run)."""
        return self.asked.get("algorithm") or self.axes["algorithm"]

    @property
    def is_accelerator(self) -> bool:
        return target_kind(self.axes["target"]) in GPU_TARGETS


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, str):
        try:
            v = float(value)
        except ValueError:
            return None
        return v if math.isfinite(v) else None
    return None


def _positive(value: Any) -> float | None:
    v = _finite(value)
    return v if v is not None and v > 0 else None


def _ms(value: Any) -> float | None:
    v = _positive(value)
    return v if v is not None and v < MAX_MS else None


def _samples(value: Any) -> np.ndarray:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return np.zeros(0)
    if not isinstance(value, (list, tuple)):
        return np.zeros(0)
    vals = [v for v in (_ms(x) for x in value) if v is not None]
    return np.asarray(vals, dtype=np.float64)


def _dict(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return dict(value) if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    return list(value) if isinstance(value, (list, tuple)) else []


def _text(value: Any, default: str) -> str:
    if value is None:
        return default
    return value if isinstance(value, str) else str(value)


def _axes(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for axis in AXES:
        value = row.get(axis)
        if axis == "batch":
            v = _finite(value)
            out[axis] = int(v) if v is not None and v >= 1 else 1
        elif axis == "sparsity":
            v = _finite(value)
            out[axis] = round(min(max(v, 0.0), 1.0), 4) if v is not None else 0.0
        else:
            out[axis] = _text(value, str(DEFAULTS[axis]))
    return out


_SHAPE = re.compile(r"\*\s*([0-9x]+)\s*$")


def _weights(shape: Any) -> int | None:
    """Weight count from a manifest shape ``"1x64x8x8 * 64x64x3x3"`` (input * weight)."""
    if not isinstance(shape, str):
        return None
    m = _SHAPE.search(shape)
    if not m:
        return None
    dims = [int(d) for d in m.group(1).split("x") if d.isdigit()]
    if not dims or any(d <= 0 for d in dims):
        return None
    return int(np.prod(dims, dtype=np.float64))


def stored_sparsity(manifest: Any) -> float | None:
    """Fraction of zero weights over the manifest's conv/dense layers (weighted by layer size), or None."""
    num = den = 0.0
    plain: list[float] = []
    for layer in _list(manifest):
        if not isinstance(layer, Mapping):
            continue
        density = _finite(layer.get("density"))
        if density is None or not 0.0 <= density <= 1.0:
            continue
        plain.append(density)
        size = _weights(layer.get("shape"))
        if size:
            num += density * size
            den += size
    if den > 0:
        return round(1.0 - num / den, 4)
    if plain:
        return round(1.0 - float(np.mean(plain)), 4)
    return None


def is_unstable(warnings: Iterable[str], samples: np.ndarray) -> bool:
    """Flagged by the agent (a warning saying so: spread or competing load), or a spread above the agent's own
    threshold."""
    if any(flag in w.lower() for w in warnings for flag in FLAGS):
        return True
    if samples.size >= 4:
        q1, med, q3 = np.percentile(samples, [25, 50, 75])
        return bool(med > 0 and (q3 - q1) / med > UNSTABLE_RELATIVE_SPREAD)
    return False


def _timed(extra: Mapping[str, Any], key: str) -> float | None:
    value = extra.get(key)
    if isinstance(value, (list, tuple)):
        vals = _samples(value)
        return float(np.median(vals)) if vals.size else None
    return _ms(value)


def target_kind(target: str) -> str:
    try:
        parsed = json.loads(target)
    except ValueError:
        parsed = None
    if isinstance(parsed, Mapping):
        return _text(parsed.get("kind"), "")
    return target.split()[0] if target.strip() else ""


def measure(row: Mapping[str, Any], index: int = 0) -> Meas:
    """Normalise one store row (``index`` stands in for a missing id)."""
    rid = _finite(row.get("id"))
    samples = _samples(row.get("samples_ms"))
    warnings = [w if isinstance(w, str) else str(w) for w in _list(row.get("warnings"))]
    median = float(np.median(samples)) if samples.size else _ms(row.get("median_ms"))
    status = _text(row.get("status"), "ok")
    extra = _dict(row.get("extra"))
    asked = {str(k): _text(v, "") for k, v in _dict(extra.get("asked")).items()}
    axes = _axes(row)
    stored = stored_sparsity(row.get("manifest"))
    top1, top5 = _finite(row.get("top1")), _finite(row.get("top5"))
    return Meas(
        id=int(rid) if rid is not None else index, axes=axes, status=status,
        median=median if status == "ok" else None, samples=samples,
        unstable=is_unstable(warnings, samples), warnings=warnings,
        sparsity=stored if stored is not None else axes["sparsity"], asked=asked,
        artifact_bytes=int(_positive(row.get("artifact_bytes")) or 0),
        top1=top1 if top1 is not None and 0 <= top1 <= 1 else None,
        top5=top5 if top5 is not None and 0 <= top5 <= 1 else None,
        transfer_ms=_timed(extra, "transfer_ms"), compute_ms=_timed(extra, "compute_ms"),
        sweep_id=_text(row.get("sweep_id"), ""), error=_text(row.get("error"), ""), built=_text(row.get("built"), ""),
        device_env=_dict(row.get("device_env")), host_env=_dict(row.get("host_env")),
        superseded=_finite(row.get("superseded_by")) is not None, row=dict(row),
        **_accuracy_evidence(row, extra, top1),
        emulated=_text(_dict(row.get("device_env")).get("emulation"), ""),
    )


def _accuracy_evidence(row: Mapping[str, Any], extra: Mapping[str, Any], top1: float | None) -> dict[str, Any]:
    """How many images, which ones, how many hits, and the stored model behind a row's accuracy."""
    n = _finite(row.get("eval_images"))
    images = int(n) if n is not None and n >= 1 and top1 is not None and 0 <= top1 <= 1 else 0
    hits = _finite(_dict(extra.get("eval")).get("hits1"))
    hits1 = int(hits) if hits is not None and images and 0 <= hits <= images else (
        round(top1 * images) if images and top1 is not None else None)
    lineage = {str(k): v for k, v in _dict(extra.get("model")).items()}
    return {"eval_images": images, "eval_fingerprint": _text(row.get("eval_fingerprint"), "") if images else "",
            "hits1": hits1, "lineage": lineage}


def prepare(rows: Iterable[Mapping[str, Any] | Meas]) -> list[Meas]:
    """Normalise rows (``Meas`` pass through), giving rows without an id a unique one."""
    out: list[Meas] = []
    for i, r in enumerate(rows):
        out.append(r if isinstance(r, Meas) else measure(r, index=-(i + 1)))
    seen: set[int] = set()
    for i, m in enumerate(out):
        if m.id in seen:  # duplicate ids would make the evidence links ambiguous
            m.id = -(10**6 + i)
        seen.add(m.id)
    return out


def latest_ok(meas: Iterable[Meas]) -> list[Meas]:
    """The ok rows, one per configuration and sweep (a re-measured configuration: its newest row)."""
    best: dict[tuple, Meas] = {}
    for m in meas:
        if not m.ok:
            continue
        key = (m.sweep_id, *(m.axes[a] for a in AXES))
        if key not in best or m.id > best[key].id:
            best[key] = m
    return sorted(best.values(), key=lambda m: m.id)
