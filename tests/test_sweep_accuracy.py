"""The quick preset from nothing (issues #15 and #16): it trains its base, derives pruned + fine-tuned variants,
stores accuracy on every row, survives a kill with nothing retrained, and its report states the DLAS findings."""

from __future__ import annotations

import pytest

from sweeptools import ROOT, run_interrupted

PRESET = ROOT / "host" / "dlas_host" / "presets" / "quick.yaml"
KINDS = ("best-system", "algorithm", "quantization-native", "sparse-crossover", "accuracy-cost", "correlation",
         "transfer-share")


@pytest.mark.slow
def test_quick_preset_trains_derives_resumes_and_states_the_findings(registry, tmp_path, monkeypatch):
    from rich.console import Console

    from dlas_host.optimize import modelstore
    from dlas_host.report import write_report
    from dlas_host.report.context import load_sweeps
    from dlas_host.report.findings import DLAS_KINDS
    from dlas_host.store import ResultStore
    from dlas_host.sweep.runner import run_sweep

    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path / "data"))
    db = tmp_path / "r.sqlite"
    # a host crash part-way: SIGKILL of the whole run once three rows are stored (training and fine-tuning done)
    sweep_id = run_interrupted(PRESET, db, None, kill_after_rows=3, limit_s=1500)
    stored = {m["id"]: m["created"] for m in modelstore.list_models()}
    base = [m for m in modelstore.list_models() if m.get("source") == "train"]
    assert len(base) == 1 and len(stored) == 3, stored  # the base and its two variants, made before any timing

    store = ResultStore(db)
    counts = run_sweep(sweep_id, registry, store, console=Console(stderr=True), show_progress=False)
    assert {m["id"]: m["created"] for m in modelstore.list_models()} == stored  # nothing retrained or re-pruned
    rows = store.query({"sweep_id": sweep_id}, current=True)
    assert len(rows) == 15 and all(r["status"] == "ok" for r in rows), [(r["job_key"], r["error"]) for r in rows]
    assert counts.get("ok", 0) + 3 >= 15
    for r in rows:  # accuracy on every row, TVM and frameworks alike, over the same fingerprinted images
        assert r["eval_images"] == 359 and 0.0 <= r["top1"] <= 1.0, r
        assert r["extra"]["model"]["id"] in stored
    assert len({r["eval_fingerprint"] for r in rows}) == 1
    derived = [r for r in rows if r["extra"]["model"].get("base_id")]
    assert len(derived) == 10 and {r["extra"]["model"]["base_id"] for r in derived} == {base[0]["id"]}
    assert any(r["sparse_format"] == "csr" and r["sparsity"] > 0.85 for r in rows)

    result = write_report(rows, tmp_path / "report", "quick", sweeps=load_sweeps(db, rows))
    kinds = {f.rule for f in result.findings if f.rule in DLAS_KINDS}
    for f in result.findings:
        print(f"[{f.rule}] {f.text}")
    assert set(KINDS) <= kinds, kinds  # at least 6 distinct DLAS finding kinds on `local` (issue #16)
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Accuracy cost of each compression" in html and "359" in html
