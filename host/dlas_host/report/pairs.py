"""Comparable rows: rows of one sweep that agree on every dimension (``dimensions.RESULT_AXES``, whose layer
labels come from each build's manifest) except the ones a rule studies."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Collection, Iterable

from ..dimensions import DIMENSIONS
from .findings import Pair
from .rows import AXES, Meas, latest_ok
from .stats import Comparison, compare

TVM_ONLY = tuple(d.result_column for d in DIMENSIONS if d.tvm_only)  # collapse to "n/a" for framework baselines
ASKED_ALGORITHM = "asked_algorithm"


def key_of(m: Meas, vary: Collection[str], extra: tuple[str, ...] = ()) -> tuple:
    """The row's sweep and every dimension not in ``vary`` (``extra`` adds derived keys, e.g. the asked
    algorithm, so that a sparse build is keyed by what its dense layers were asked to run)."""
    derived = tuple(m.asked_algorithm if e == ASKED_ALGORITHM else m.axes[e] for e in extra)
    return (m.sweep_id, *(m.axes[a] for a in AXES if a not in vary), *derived)


def groups(meas: Iterable[Meas], vary: Collection[str], extra: tuple[str, ...] = (),
           where: Callable[[Meas], bool] = lambda _m: True) -> dict[tuple, list[Meas]]:
    """Comparable rows: grouped by everything but ``vary``; groups keep the store's order (by id)."""
    out: dict[tuple, list[Meas]] = defaultdict(list)
    for m in latest_ok(meas):
        if where(m):
            out[key_of(m, vary, extra)].append(m)
    return {k: sorted(v, key=lambda m: m.id) for k, v in out.items()}


def comparison(base: Meas, cand: Meas) -> Comparison:
    return compare(base.samples, cand.samples, base.median, cand.median)


def pair(base: Meas, cand: Meas, base_label: str, cand_label: str, note: str = "") -> Pair:
    unstable = tuple(m.id for m in (base, cand) if m.unstable)
    return Pair(base.id, cand.id, base_label, cand_label, comparison(base, cand), unstable, note)


def fastest(members: Iterable[Meas]) -> Meas:
    return min(members, key=lambda m: (m.median, m.id))


def config_label(m: Meas, exclude: Collection[str] = (), asked: bool = False) -> str:
    """What a group holds fixed, shortly: ``resnet18/cifar10, float32, NCHW, untuned`` (``asked``: name the
    algorithm the job asked for even where ``algorithm`` is excluded)."""
    a = m.axes
    parts = [f"{a['model']}/{a['dataset']}"]
    optional = [
        ("batch", f"batch {a['batch']}", a["batch"] != 1),
        ("pruning", model_label(m), a["pruning"] != "none"),
        ("quantization", a["quantization"], True),
        ("system", a["system"], a["system"] != "tvm"),
        ("algorithm", a["algorithm"], a["system"] == "tvm" and a["algorithm"] != "n/a"),
        ("", f"{m.asked_algorithm} asked", asked and "algorithm" in exclude and a["system"] == "tvm"),
        ("layout", a["layout"], a["system"] == "tvm" and a["layout"] != "n/a"),
        ("sparse_format", a["sparse_format"] + (f" {a['sparse_block']}" if a["sparse_block"] else ""),
         a["sparse_format"] != "dense"),
        ("tuning", a["tuning"], a["system"] == "tvm" and a["tuning"] != "n/a"),
    ]
    parts += [text for axis, text, shown in optional if shown and axis not in exclude]
    return ", ".join(parts)


def model_label(m: Meas) -> str:
    """The pruning a row's model had, in words: its stored lineage's prune spec, else its name, else the label."""
    lin, pruning = m.lineage, m.axes["pruning"]
    if lin.get("prune"):
        return f"pruned {lin['prune']}"
    if pruning.startswith("model:"):
        return f"model {lin.get('name') or pruning[len('model:'):]}"
    return f"pruned {pruning}"


def system_label(m: Meas) -> str:
    """``tvm (spatial_pack, NCHW, untuned)`` or the baseline's name."""
    a = m.axes
    if a["system"] != "tvm":
        return a["system"]
    inner = [a["algorithm"], a["layout"]]
    if a["sparse_format"] != "dense":
        inner.append(a["sparse_format"])
    inner.append(a["tuning"])
    return f"tvm ({', '.join(inner)})"


def row_ids(*groups_of_meas: Iterable[Meas]) -> list[int]:
    return sorted({m.id for g in groups_of_meas for m in g})


def ranked_pairs(members: list[Meas], label: Callable[[Meas], str], limit: int = 6) -> list[Pair]:
    """Every pair among the ``limit`` fastest members, each faster one (by median) as the candidate."""
    ranked = sorted(members, key=lambda m: (m.median, m.id))[:limit]
    return [pair(slow, fast, label(slow), label(fast))
            for i, fast in enumerate(ranked) for slow in ranked[i + 1:]]
