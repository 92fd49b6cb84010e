"""Sweeps through the whole pipeline (issue #15): trained bases, pruned + fine-tuned variants, accuracy on rows."""

from __future__ import annotations

import pytest

SPEC = """
name: acc-sweep
train: {epochs: 1, batch_size: 32, max_steps_per_epoch: 6}
grid:
  devices: [local]
  datasets: [digits]
  models: [resnet18]
  pruning: ["none", "unstructured:global:l1:0.5"]
  algorithms: [spatial_pack]
  layouts: [NCHW]
  systems: [tvm]
  tuning: [untuned]
run: {number: 1, repeat: 4, warmup: 1, eval_images: 64, finetune_epochs: 1}
"""


@pytest.mark.slow
def test_sweep_trains_its_base_derives_variants_and_stores_accuracy(registry, tmp_path, monkeypatch):
    from rich.console import Console

    from dlas_host.optimize import base_model, modelstore
    from dlas_host.store import ResultStore
    from dlas_host.sweep.runner import run_sweep, start_sweep
    from dlas_host.sweep.spec import parse_spec

    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path / "data"))
    store = ResultStore(tmp_path / "r.sqlite")
    spec = parse_spec(SPEC)
    sweep_id = start_sweep(spec, registry, store)
    counts = run_sweep(sweep_id, registry, store, console=Console(stderr=True), show_progress=False)
    assert counts.get("ok") == 2, counts
    rows = store.query({"sweep_id": sweep_id}, current=True)
    base = next(m for m in modelstore.list_models() if m.get("source") == "train")
    pruned = next(m for m in modelstore.list_models() if m.get("base_id") == base["id"])
    assert pruned["finetune"]["finetune_epochs"] == 1 and pruned["sparsity"] > 0.45
    for r in rows:
        assert r["eval_images"] == 64 and r["eval_fingerprint"] and 0.0 <= r["top1"] <= 1.0
    by_pruning = {r["pruning"]: r for r in rows}
    assert by_pruning[f"model:{base['id']}"]["sparsity"] < 0.05  # the trained base, built as stored
    assert by_pruning[f"model:{pruned['id']}"]["sparsity"] > 0.45

    # a second sweep over the same grid reuses the stored base and variant: nothing is retrained
    calls: list[object] = []
    monkeypatch.setattr(base_model.train, "train", lambda *a, **k: calls.append(a) or [])
    again = start_sweep(spec, registry, store)
    counts = run_sweep(again, registry, store, console=Console(stderr=True), show_progress=False)
    assert counts.get("ok") == 2 and calls == []
