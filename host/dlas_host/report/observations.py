"""Automatic observations in the style of the DLAS study.

Each rule is a small function over result rows (dicts from the store) that returns findings; a finding
names the rows that support it, so the report can link the sentence to the evidence.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

Row = dict[str, Any]


@dataclass
class Finding:
    rule: str
    text: str
    rows: list[int] = field(default_factory=list)


def ok_rows(rows: Iterable[Row]) -> list[Row]:
    return [r for r in rows if r.get("status") == "ok" and r.get("median_ms")]


def tvm_config(r: Row) -> str:
    return f"{r['algorithm']}/{r['layout']}/{r['sparse_format']}"


def _group(rows: Iterable[Row], *keys: str) -> dict[tuple, list[Row]]:
    out: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def _best(rows: list[Row]) -> Row:
    return min(rows, key=lambda r: r["median_ms"])


def best_algorithm_changes_after_tuning(rows: list[Row]) -> list[Finding]:
    found = []
    tvm = [r for r in ok_rows(rows) if r["system"] == "tvm"]
    for (dev, model, ds, prune, quant), grp in _group(tvm, "device", "model", "dataset", "pruning", "quantization").items():
        untuned = [r for r in grp if r["tuning"] == "untuned"]
        tuned = [r for r in grp if r["tuning"] == "tuned"]
        if len({tvm_config(r) for r in untuned}) < 2 or len({tvm_config(r) for r in tuned}) < 2:
            continue
        bu, bt = _best(untuned), _best(tuned)
        if tvm_config(bu) != tvm_config(bt):
            found.append(Finding("tuning-changes-best", (
                f"On {dev}, the best algorithm for {model}/{ds} changes after tuning: {tvm_config(bu)} "
                f"({bu['median_ms']:.2f} ms) untuned, {tvm_config(bt)} ({bt['median_ms']:.2f} ms) tuned."),
                [bu["id"], bt["id"]]))
    return found


def quantization_effects(rows: list[Row]) -> list[Finding]:
    found = []
    tvm = [r for r in ok_rows(rows) if r["system"] == "tvm"]
    for quant in ("int8", "float16", "bfloat16"):
        speeds, slows = [], []
        for key, grp in _group(tvm, "device", "model", "dataset", "algorithm", "layout", "sparse_format", "tuning",
                               "pruning").items():
            base = [r for r in grp if r["quantization"] == "float32"]
            low = [r for r in grp if r["quantization"] == quant]
            if base and low:
                b, q = _best(base), _best(low)
                ratio = b["median_ms"] / q["median_ms"]
                (speeds if ratio > 1.05 else slows if ratio < 0.95 else []).append((key, ratio, b["id"], q["id"]))
        if speeds and slows:
            s, w = max(speeds, key=lambda x: x[1]), min(slows, key=lambda x: x[1])
            found.append(Finding(f"{quant}-mixed", (
                f"{quant} speeds up {s[0][1]}/{s[0][3]} on {s[0][0]} ({s[1]:.2f}x) but slows down "
                f"{w[0][1]}/{w[0][3]} on {w[0][0]} ({w[1]:.2f}x)."), [s[2], s[3], w[2], w[3]]))
        elif speeds and len(speeds) >= 1:
            ratios = [x[1] for x in speeds]
            found.append(Finding(f"{quant}-speedup", (
                f"{quant} is faster than float32 in all {len(speeds)} comparable configuration(s) "
                f"({min(ratios):.2f}x to {max(ratios):.2f}x)."), [i for x in speeds for i in x[2:]]))
        elif slows:
            found.append(Finding(f"{quant}-slowdown", (
                f"{quant} gives no speedup over float32 here: slower in {len(slows)} configuration(s) — the "
                f"hardware or the kernels do not exploit it."), [i for x in slows for i in x[2:]]))
    return found


def size_vs_latency(rows: list[Row]) -> list[Finding]:
    found = []
    tvm = [r for r in ok_rows(rows) if r["system"] == "tvm" and r.get("artifact_bytes")]
    for (dev, ds), grp in _group(tvm, "device", "dataset").items():
        per_model: dict[str, Row] = {}
        for r in grp:
            if r["model"] not in per_model or r["median_ms"] < per_model[r["model"]]["median_ms"]:
                per_model[r["model"]] = r
        if len(per_model) < 3:
            continue
        best = list(per_model.values())
        size = np.array([r["artifact_bytes"] for r in best], dtype=float)
        lat = np.array([r["median_ms"] for r in best], dtype=float)
        rho = _spearman(size, lat)
        verdict = "not correlated" if abs(rho) < 0.5 else "correlated"
        found.append(Finding("size-latency", (
            f"On {dev} ({ds}), model size and latency are {verdict} (Spearman rho {rho:+.2f} over "
            f"{len(best)} models): {', '.join(_size_text(r) for r in best)}."),
            [r["id"] for r in best]))
    return found


def _size_text(r: Row) -> str:
    return f"{r['model']} {r['artifact_bytes'] / 2**20:.0f} MiB/{r['median_ms']:.1f} ms"


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = a.argsort().argsort().astype(float), b.argsort().argsort().astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def sparse_crossover(rows: list[Row]) -> list[Finding]:
    found = []
    tvm = [r for r in ok_rows(rows) if r["system"] == "tvm"]
    for (dev, model, ds, fmt), grp in _group([r for r in tvm if r["sparse_format"] != "dense"], "device", "model",
                                               "dataset", "sparse_format").items():
        dense = {round(r["sparsity"], 3): r for r in tvm if r["sparse_format"] == "dense" and r["device"] == dev
                 and r["model"] == model and r["dataset"] == ds}
        pairs = sorted((round(r["sparsity"], 3), r, dense[round(r["sparsity"], 3)]) for r in grp
                       if round(r["sparsity"], 3) in dense)
        if not pairs:
            continue
        wins = [s for s, sp, de in pairs if sp["median_ms"] < de["median_ms"]]
        ids = [i for _, sp, de in pairs for i in (sp["id"], de["id"])]
        if wins:
            found.append(Finding("sparse-crossover", (
                f"On {dev}, {fmt.upper()} beats dense for {model}/{ds} only from {100 * min(wins):.0f} % sparsity "
                f"(measured at {', '.join(f'{100 * s:.0f} %' for s, _, _ in pairs)})."), ids))
        else:
            found.append(Finding("sparse-never", (
                f"On {dev}, {fmt.upper()} never beats dense for {model}/{ds} at the measured sparsities "
                f"({', '.join(f'{100 * s:.0f} %' for s, _, _ in pairs)})."), ids))
    return found


def fastest_system(rows: list[Row]) -> list[Finding]:
    found = []
    for (dev, model, ds), grp in _group(ok_rows(rows), "device", "model", "dataset").items():
        by_system = {}
        for r in grp:
            if r["pruning"] == "none" and r["quantization"] == "float32":
                if r["system"] not in by_system or r["median_ms"] < by_system[r["system"]]["median_ms"]:
                    by_system[r["system"]] = r
        if len(by_system) < 2:
            continue
        ranked = sorted(by_system.values(), key=lambda r: r["median_ms"])
        first, second = ranked[0], ranked[1]
        label = lambda r: r["system"] + (f" ({tvm_config(r)}, {r['tuning']})" if r["system"] == "tvm" else "")  # noqa: E731
        found.append(Finding("fastest-system", (
            f"On {dev}, {model}/{ds} runs fastest with {label(first)} at {first['median_ms']:.2f} ms, "
            f"{second['median_ms'] / first['median_ms']:.2f}x ahead of {label(second)}."),
            [r["id"] for r in ranked]))
    return found


def best_algorithm_differs_across_devices(rows: list[Row]) -> list[Finding]:
    found = []
    tvm = [r for r in ok_rows(rows) if r["system"] == "tvm" and r["tuning"] == "untuned" and r["pruning"] == "none"
           and r["quantization"] == "float32"]
    for (model, ds), grp in _group(tvm, "model", "dataset").items():
        best_per_device = {dev: _best(g) for (dev,), g in _group(grp, "device").items()
                           if len({tvm_config(r) for r in g}) >= 2}
        if len({tvm_config(r) for r in best_per_device.values()}) >= 2:
            found.append(Finding("best-differs-by-device", (
                f"The best untuned algorithm for {model}/{ds} depends on the device: "
                + "; ".join(f"{dev}: {tvm_config(r)}" for dev, r in best_per_device.items()) + "."),
                [r["id"] for r in best_per_device.values()]))
    return found


def unstable_timings(rows: list[Row]) -> list[Finding]:
    noisy = [r for r in ok_rows(rows) if any("unstable" in w for w in (r.get("warnings") or []))]
    if not noisy:
        return []
    return [Finding("unstable", (
        f"{len(noisy)} measurement(s) are unstable (IQR above 10 % of the median): treat their ratios with care "
        f"and re-run them on a quiet device."), [r["id"] for r in noisy])]


def failures(rows: list[Row]) -> list[Finding]:
    bad = [r for r in rows if r.get("status") in ("error", "skipped")]
    if not bad:
        return []
    reasons: dict[str, list[int]] = defaultdict(list)
    for r in bad:
        reasons[f"{r['status']}: {(r.get('error') or '')[:120]}"].append(r["id"])
    top = sorted(reasons.items(), key=lambda kv: -len(kv[1]))[:3]
    return [Finding("failures", f"{len(bad)} job(s) did not produce a timing; most common: "
                    + "; ".join(f"{len(ids)}x {why}" for why, ids in top) + ".", [r["id"] for r in bad])]


RULES: list[Callable[[list[Row]], list[Finding]]] = [
    fastest_system, best_algorithm_changes_after_tuning, best_algorithm_differs_across_devices,
    quantization_effects, sparse_crossover, size_vs_latency, unstable_timings, failures,
]


def observe(rows: list[Row]) -> list[Finding]:
    findings: list[Finding] = []
    for rule in RULES:
        findings.extend(rule(rows))
    return findings
