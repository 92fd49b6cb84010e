"""The report never breaks: hypothesis generates result sets from the store's schema (missing values, NULL
columns of old databases, failed and skipped rows, one row, thousands of rows, every dimension mixed, several
devices and sweeps) and the whole report renders for every one of them, with findings that only compare
comparable rows and only state differences their samples support.

Profiles: ``report-ci`` (500 result sets plus one of thousands of rows, the CI target; marked slow) is the
default; ``DLAS_REPORT_PROFILE=report-dev`` runs 60 while iterating. A 40-set subset runs with `-m "not slow"`.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from dataclasses import fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dlas_host.dimensions import QUANTIZATIONS, SPARSE_FORMATS
from dlas_host.report import findings as fk
from dlas_host.report import write_report
from dlas_host.report.pairs import TVM_ONLY
from dlas_host.report.rows import AXES, prepare
from dlas_host.store import ResultRow
from reportrows import ARM_FLAGS, X86_FLAGS, device_env, manifest, paper_like_rows

_COMMON = dict(deadline=None, derandomize=True, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                      HealthCheck.large_base_example])
settings.register_profile("report-ci", max_examples=500, **_COMMON)
settings.register_profile("report-dev", max_examples=60, **_COMMON)
PROFILE = settings.get_profile(os.environ.get("DLAS_REPORT_PROFILE", "report-ci"))

# What each finding kind may vary between the two rows of a pair; every other dimension must agree.
MAY_DIFFER = {
    fk.BEST_SYSTEM: {"system", *TVM_ONLY},
    fk.ALGORITHM: {"algorithm"},
    fk.TUNING: {"algorithm", "tuning"},
    fk.QUANTIZATION: {"quantization"},
    fk.SPARSE: {"sparse_format", "sparse_block", "algorithm"},
    fk.COMPRESSION: {"pruning", "quantization", "sparse_format", "sparse_block", "sparsity", "algorithm"},
}
CLAIM = re.compile(r"\d\.\d\dx (faster|slower) than|runs fastest|is the fastest|(?<!never )beats dense|pays off|"
                   r"changes the best|keeps \S+ as the best|depends on the device|are correlated")

WEIRD_FLOATS = [0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e-12, 1e300]
NASTY_TEXT = ["", "<script>alert(1)</script> & 'quotes' \"x\"", "timeout\nsecond line", "\x00\x1b[31m", "é漢字🙂",
              "a" * 300, "|pipe|", "n/a", "none", "4x1", "{not json"]
CUDA = json.dumps({"kind": "cuda"})
VOCAB: dict[str, list[Any]] = {
    "device": ["local", "pi", "jetson"],
    "model": ["resnet18", "mobilenet_v2", "vgg16"],
    "dataset": ["cifar10", "imagenet"],
    "batch": [1, 8],
    "pruning": ["none", "model:p80", "random:0.5"],
    "quantization": list(QUANTIZATIONS) + ["mixed:float32+int8"],
    "algorithm": ["direct", "gemm", "spatial_pack", "sparse", "n/a"],
    "layout": ["NCHW", "NHWC", "n/a"],
    "sparse_format": list(SPARSE_FORMATS),
    "sparse_block": ["", "4x1"],
    "sparsity": [0.0, 0.5, 0.8, 0.9],
    "system": ["tvm", "tvm", "torch", "onnxruntime"],
    "tuning": ["untuned", "tuned", "n/a"],
    "target": [json.dumps({"kind": "llvm"}), CUDA, "", "{not json", "llvm -mcpu=cortex-a72"],
}
ENVS = [{}, None, device_env(X86_FLAGS), device_env(ARM_FLAGS, "aarch64"),
        device_env([], gpus=[{"name": "Orin", "compute_capability": "8.7"}, {"name": "?", "compute_capability": "x"}]),
        {"cpu_flags": "not a list", "gpus": "nope"}, {**device_env([], "aarch64"), "emulation": "qemu-user"},
        {"emulation": 3}]
ROW_FIELDS = {f.name for f in fields(ResultRow)}
STUDIED = ("algorithm", "tuning", "quantization", "system", "sparse_format", "pruning", "device")  # rules vary these
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")  # no overflow or NaN arithmetic either


def _odd(rnd: random.Random) -> Any:
    return rnd.choice([None, rnd.choice(NASTY_TEXT), rnd.randint(-3, 3), rnd.choice(WEIRD_FLOATS), [], {}])


def _samples(rnd: random.Random) -> Any:
    kind = rnd.choice(["realistic"] * 5 + ["raw", "none", "broken", "empty"])
    if kind == "realistic":
        ms, noise, n = rnd.choice([1.0, 5.0, 9.0, 10.0, 50.0]), rnd.choice([0.005, 0.02, 0.3]), rnd.choice([0, 1, 2,
                                                                                                            3, 5, 10])
        return [ms * (1 + noise * rnd.gauss(0, 1)) for _ in range(n)]
    if kind == "raw":
        return [rnd.choice([*WEIRD_FLOATS, rnd.uniform(-5, 50), "x", None]) for _ in range(rnd.randint(0, 12))]
    return {"none": None, "broken": "[1, 2", "empty": []}[kind]


def _manifest(rnd: random.Random) -> Any:
    kind = rnd.choice(["empty", "good", "good", "bad", "none"])
    if kind == "good":
        return manifest(rnd.choice([0.1, 0.2, 0.5, 1.0]), fmt=rnd.choice(["dense", "csr", "bsr"]))
    if kind == "bad":
        return [rnd.choice([None, "x", {"density": rnd.choice([*WEIRD_FLOATS, "x", 0.5]),
                                         "shape": rnd.choice(["1x3 * 0x3", None, "1x3*3x3x3x3", "garbage"])}])
                for _ in range(rnd.randint(0, 3))]
    return {"empty": [], "none": None}[kind]


def _timed(rnd: random.Random) -> Any:
    return rnd.choice([None, rnd.uniform(0, 5), [rnd.uniform(0, 3) for _ in range(3)], "n/a", -1.0,
                       float("nan")])


def _extra(rnd: random.Random) -> Any:
    kind = rnd.choice(["empty", "none", "broken", "full", "full"])
    if kind != "full":
        return {"empty": {}, "none": None, "broken": "{oops"}[kind]
    out: dict[str, Any] = {}
    if rnd.random() < 0.7:
        out["asked"] = rnd.choice([{"algorithm": rnd.choice(VOCAB["algorithm"]),
                                    "sparse_format": rnd.choice(VOCAB["sparse_format"])}, None, "x", {"algorithm": 3}])
    if rnd.random() < 0.3:
        out["transfer_ms"], out["compute_ms"] = _timed(rnd), _timed(rnd)
    if rnd.random() < 0.4:
        out["eval"] = rnd.choice([{"hits1": rnd.choice([0, 5, 90, 100, 359, -1, 10**9, "x", None])}, None, "x", []])
    if rnd.random() < 0.4:
        out["model"] = rnd.choice([{"id": "p80", "base_id": rnd.choice(["b1", "p80", None, 3]),
                                    "prune": rnd.choice(["unstructured:global:l1:0.8", None, {"x": 1}]),
                                    "finetune": rnd.choice([{"finetune_epochs": 1}, None, "x", {"finetune_epochs": []}]),
                                    "name": rnd.choice(["base-e3", None, 7])},
                                   {"id": "b1", "name": "base-e3"}, None, "x", {}])
    return out


def random_row(rnd: random.Random, rid: int, odd: float, bases: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of the store's schema; ``odd`` is the chance that a field holds something the store never wrote
    (None as from an old database's NULL column, a wrong type, NaN, hostile text). Most rows copy one of
    ``bases`` and change one or two dimensions, so that rows meet comparable partners."""
    def pick(name: str, choices: list[Any]) -> Any:
        return _odd(rnd) if rnd.random() < odd else rnd.choice(choices)

    r: dict[str, Any] = {"id": rid}
    if bases and rnd.random() < 0.75:
        r.update(rnd.choice(bases))
        for name in rnd.sample(STUDIED if rnd.random() < 0.8 else AXES, rnd.choice([1, 1, 2])):
            r[name] = pick(name, VOCAB[name])
    else:
        for name in AXES:
            r[name] = pick(name, VOCAB[name])
    r["status"] = pick("status", ["ok", "ok", "ok", "ok", "error", "skipped", "weird"])
    r["error"] = rnd.choice(NASTY_TEXT[:4]) if rnd.random() < 0.5 else ""
    r["samples_ms"] = _samples(rnd)
    s = r["samples_ms"]
    valid = [v for v in s if isinstance(v, float) and np.isfinite(v) and v > 0] if isinstance(s, list) else []
    r["median_ms"] = float(np.median(valid)) if valid and rnd.random() > odd else rnd.choice([None, *WEIRD_FLOATS])
    r["iqr_ms"] = rnd.choice([None, rnd.uniform(0, 5)])
    r["warnings"] = rnd.choice([[], [], ["unstable: IQR is 40% of the median"], None, [3, None], "unstable"])
    r["manifest"] = _manifest(rnd)
    r["built"] = rnd.choice(["", "conv: 4 direct float32", None])
    r["artifact_bytes"] = rnd.choice([0, rnd.randint(1, 2**31), None, -5])
    r["top1"] = rnd.choice([None, None, rnd.random(), *WEIRD_FLOATS])
    r["top5"] = rnd.choice([None, rnd.uniform(-1, 2)])
    r["eval_images"] = rnd.choice([None, 0, 100, 359, -4, "x", float("nan")])
    r["eval_fingerprint"] = rnd.choice(["", "fp1", "fp1", "fp2", None])
    r["extra"] = _extra(rnd)
    r["device_env"] = rnd.choice(ENVS)
    r["host_env"] = rnd.choice([{}, None, {"tvm": "0.27.0", "dlas": "0.1.0"}])
    r["sweep_id"] = r.get("sweep_id", rnd.choice(["", "s1", "s2", None])) if rnd.random() < 0.9 else None
    r["superseded_by"] = rnd.choice([None, None, None, None, rid + 1, "x"])  # a store-managed column
    for name in rnd.sample(sorted(ROW_FIELDS | {"id", "superseded_by"}), rnd.choice([0, 0, 0, 1, 3])):  # columns an old DB lacks
        r.pop(name, None)
    return r


@lru_cache(maxsize=4)
def _paper(seed: int) -> tuple[dict[str, Any], ...]:
    return tuple(paper_like_rows(seed=seed))


@st.composite
def result_set(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Mostly small sets of generated rows (hypothesis draws their number, seeds and oddness; a seeded RNG fills
    the fields, which keeps a draw cheap); one in eight is a slice of a realistic dlas-paper-like sweep."""
    if draw(st.sampled_from(["generated"] * 7 + ["sweep"])) == "sweep":
        # one model of a realistic sweep, most of its rows: dense comparable structure on three devices
        model, dataset = draw(st.sampled_from(["resnet18", "mobilenet_v2", "vgg16"])), draw(st.sampled_from(
            ["cifar10", "imagenet"]))
        rows = [r for r in _paper(draw(st.integers(0, 3))) if r["model"] == model and r["dataset"] == dataset]
        rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
        keep = rnd.sample(rows, max(1, int(len(rows) * draw(st.sampled_from([0.2, 0.5, 0.8, 1.0])))))
        return [dict(r) for r in sorted(keep, key=lambda r: r["id"])]
    n = draw(st.sampled_from([0, 1, 1, 2, 3, 5, 8, 12, 20, 30, 60]))
    odd = draw(st.sampled_from([0.0, 0.0, 0.05, 0.2, 0.6]))
    duplicated_ids = draw(st.sampled_from([False, False, False, True]))
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    bases = [{**{name: rnd.choice(VOCAB[name]) for name in AXES}, "sweep_id": rnd.choice(["", "s1"])}
             for _ in range(draw(st.integers(0, 3)))]
    return [random_row(random.Random(draw(st.integers(0, 2**32 - 1))), i % 3 if duplicated_ids else i + 1, odd,
                       bases) for i in range(n)]


def _check(rows: list[dict[str, Any]], out: Path) -> None:
    report = write_report(rows, out)
    html = report.html_path.read_text()
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "<script>" not in html  # every value is escaped
    assert html.count("<img") == report.figures == len(list(out.glob("*.svg")))
    assert "## Findings" in report.markdown_path.read_text()
    meas = {m.id: m for m in prepare(rows)}
    for n, f in enumerate(report.findings, 1):
        assert f.text and set(f.rows) <= set(meas), f.text
        assert f"id='finding-{n}'" in html
        if f.pairs and not any(p.comparison.significant for p in f.pairs):
            assert not CLAIM.search(f.text), f.text  # no difference stated without significance
        for p in f.pairs:
            a, b = meas[p.base].axes, meas[p.cand].axes
            differ = {k for k in AXES if a[k] != b[k]}
            assert differ <= MAY_DIFFER[f.rule] and meas[p.base].sweep_id == meas[p.cand].sweep_id, (f.rule, differ)
            assert {p.base, p.cand} <= set(f.rows)
            assert set(p.unstable) == {i for i in (p.base, p.cand) if meas[i].unstable}
        if f.pairs:
            assert f"fig-evidence-{f.rule}" in html


@pytest.mark.slow
@PROFILE
@given(result_set())
@example(paper_like_rows())  # thousands of rows: every dimension crossed on three devices
def test_report_renders_for_any_result_set(rows):
    with tempfile.TemporaryDirectory() as tmp:
        _check(rows, Path(tmp) / "out")


@settings(PROFILE, max_examples=40)
@given(result_set())
def test_report_renders_for_generated_result_sets_quick(rows):
    """The everyday subset of the property above (`-m "not slow"`)."""
    with tempfile.TemporaryDirectory() as tmp:
        _check(rows, Path(tmp) / "out")
