"""Report figures (matplotlib, Agg): each returns (title, PNG bytes) or nothing when the data is absent."""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .observations import Row, ok_rows, tvm_config  # noqa: E402

Figure = tuple[str, bytes]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _label(r: Row) -> str:
    if r["system"] != "tvm":
        return r["system"]
    return f"tvm {tvm_config(r)} {r['tuning']}"


def _heatmap(matrix: np.ndarray, rows: list[str], cols: list[str], title: str, cbar: str) -> bytes:
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cols) + 3), max(2.5, 0.5 * len(rows) + 1.5)))
    finite = matrix[np.isfinite(matrix)]
    vmax = max(2.0, float(finite.max())) if finite.size else 2.0
    im = ax.imshow(matrix, cmap="RdYlGn", vmin=0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}x", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label=cbar)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def speedup_heatmaps(rows: list[Row]) -> list[Figure]:
    """Per device: speedup over torch eager for each configuration (float32, unpruned)."""
    figures = []
    plain = [r for r in ok_rows(rows) if r["pruning"] == "none" and r["quantization"] == "float32"]
    for dev in sorted({r["device"] for r in plain}):
        grp = [r for r in plain if r["device"] == dev]
        torch_ms = {(r["model"], r["dataset"]): r["median_ms"] for r in grp if r["system"] == "torch"}
        if not torch_ms:
            continue
        cells: dict[tuple[str, str], float] = {}
        for r in grp:
            key = (r["model"], r["dataset"])
            if key in torch_ms and r["system"] != "torch":
                cell = (f"{key[0]}/{key[1]}", _label(r))
                cells[cell] = max(cells.get(cell, 0.0), torch_ms[key] / r["median_ms"])
        if not cells:
            continue
        row_names = sorted({c[0] for c in cells})
        col_names = sorted({c[1] for c in cells})
        m = np.full((len(row_names), len(col_names)), np.nan)
        for (rn, cn), v in cells.items():
            m[row_names.index(rn), col_names.index(cn)] = v
        figures.append((f"Speedup over torch eager on {dev}",
                        _heatmap(m, row_names, col_names, f"{dev}: speedup vs torch eager (>1 = faster)", "x torch")))
    return figures


def quantization_heatmap(rows: list[Row]) -> list[Figure]:
    tvm = [r for r in ok_rows(rows) if r["system"] == "tvm"]
    best: dict[tuple, float] = {}
    for r in tvm:
        key = (r["device"], r["model"], r["dataset"], r["quantization"])
        best[key] = min(best.get(key, np.inf), r["median_ms"])
    cells = {}
    for (dev, model, ds, q), ms in best.items():
        base = best.get((dev, model, ds, "float32"))
        if base and q != "float32":
            cells[(f"{dev}: {model}/{ds}", q)] = base / ms
    if not cells:
        return []
    rn, cn = sorted({c[0] for c in cells}), sorted({c[1] for c in cells})
    m = np.full((len(rn), len(cn)), np.nan)
    for (r, c), v in cells.items():
        m[rn.index(r), cn.index(c)] = v
    return [("Quantization speedup over float32 (best TVM configuration each)",
             _heatmap(m, rn, cn, "speedup of quantized over float32 (TVM, best config)", "x float32"))]


def pareto(rows: list[Row]) -> list[Figure]:
    figures = []
    acc = [r for r in ok_rows(rows) if r.get("top1") is not None]
    for dev in sorted({r["device"] for r in acc}):
        grp = [r for r in acc if r["device"] == dev]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in grp:
            ax.scatter(r["median_ms"], 100 * r["top1"], s=30)
            ax.annotate(f"{r['model']} {r['pruning'] if r['pruning'] != 'none' else ''} {r['quantization']}".strip(),
                        (r["median_ms"], 100 * r["top1"]), fontsize=6)
        front, best_acc = [], -1.0
        for r in sorted(grp, key=lambda r: r["median_ms"]):
            if r["top1"] > best_acc:
                front.append(r)
                best_acc = r["top1"]
        ax.plot([r["median_ms"] for r in front], [100 * r["top1"] for r in front], "k--", lw=1, label="Pareto front")
        ax.set_xlabel("median latency (ms)")
        ax.set_ylabel("top-1 (%)")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
        ax.set_title(f"{dev}: accuracy vs latency", fontsize=10)
        figures.append((f"Accuracy vs latency on {dev}", _png(fig)))
    return figures


def _bars(groups: dict[str, dict[str, float]], title: str, ylabel: str) -> bytes:
    names = sorted(groups)
    series = sorted({s for g in groups.values() for s in g})
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) + 2), 4))
    x = np.arange(len(names))
    for i, s in enumerate(series):
        ax.bar(x + i * width, [groups[n].get(s, np.nan) for n in names], width, label=s)
    ax.set_xticks(x + width * (len(series) - 1) / 2, names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def tuned_vs_untuned(rows: list[Row]) -> list[Figure]:
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for r in ok_rows(rows):
        if r["system"] == "tvm" and r["tuning"] in ("tuned", "untuned"):
            name = f"{r['device']}: {r['model']}/{r['dataset']} {tvm_config(r)}"
            groups[name][r["tuning"]] = min(groups[name].get(r["tuning"], np.inf), r["median_ms"])
    groups = {k: v for k, v in groups.items() if len(v) == 2}
    if not groups:
        return []
    return [("Tuned vs untuned TVM", _bars(groups, "tuned vs untuned (median ms, lower is better)", "ms"))]


def algorithm_comparison(rows: list[Row]) -> list[Figure]:
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for r in ok_rows(rows):
        if r["system"] == "tvm" and r["pruning"] == "none" and r["quantization"] == "float32":
            name = f"{r['device']}: {r['model']}/{r['dataset']}"
            key = f"{tvm_config(r)} {r['tuning']}"
            groups[name][key] = min(groups[name].get(key, np.inf), r["median_ms"])
    groups = {k: v for k, v in groups.items() if len(v) >= 2}
    if not groups:
        return []
    return [("Algorithms and data formats", _bars(groups, "algorithm / layout / format (median ms)", "ms"))]


def timing_spread(rows: list[Row], limit: int = 24) -> list[Figure]:
    with_samples = [r for r in ok_rows(rows) if r.get("samples_ms")][:limit]
    if not with_samples:
        return []
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(with_samples) + 2), 4.5))
    ax.boxplot([np.asarray(r["samples_ms"]) / r["median_ms"] for r in with_samples], showfliers=True)
    ax.set_xticks(range(1, len(with_samples) + 1), [f"#{r['id']}" for r in with_samples], rotation=60, fontsize=7)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_ylabel("sample / median")
    ax.set_title("timing spread per measurement (row ids)", fontsize=10)
    return [("Timing spread", _png(fig))]


ALL = [speedup_heatmaps, quantization_heatmap, algorithm_comparison, tuned_vs_untuned, pareto, timing_spread]


def make_figures(rows: list[Row]) -> list[Figure]:
    figures: list[Figure] = []
    for fn in ALL:
        figures.extend(fn(rows))
    return figures
