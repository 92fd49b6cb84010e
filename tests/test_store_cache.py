import json
import sqlite3

import pytest

from dlas_agent.protocol import BenchmarkRequest, BenchmarkResult, ProtocolError
from dlas_agent.stats import summarize
from dlas_host.cache import ArtifactCache, key_of
from dlas_host.store import DIMENSIONS, ResultRow, ResultStore


def row(**kw) -> ResultRow:
    base = dict(dataset="cifar10", model="resnet18", system="tvm", device="local")
    base.update(kw)
    return ResultRow(**base)


def test_store_roundtrip_and_every_dimension_is_a_column(store):
    r = row(algorithm="gemm", layout="NHWC", sparse_format="csr", sparsity=0.9, quantization="int8", tuning="tuned",
            pruning="unstructured:global:l1:0.9", target='{"kind":"llvm"}')
    r.set_stats(summarize([1.0, 1.1, 0.9, 1.0, 1.05]))
    r.max_abs_err = 1e-6
    r.device_env = {"cpu_model": "x"}
    rid = store.add(r)
    got = store.query({"id": rid})[0]
    for dim in DIMENSIONS:
        assert dim in got
    assert got["algorithm"] == "gemm" and got["sparse_format"] == "csr" and got["tuning"] == "tuned"
    assert got["median_ms"] == pytest.approx(1.0)
    assert got["samples_ms"] == [1.0, 1.1, 0.9, 1.0, 1.05]
    assert got["device_env"] == {"cpu_model": "x"}
    assert got["n"] == 5


def test_store_export_csv_json(store):
    store.add(row(median_ms=2.0))
    store.add(row(status="error", error="device unreachable"))
    data = json.loads(store.export("json"))
    assert [d["status"] for d in data] == ["ok", "error"]
    csv_text = store.export("csv")
    assert csv_text.splitlines()[0].startswith("id,dataset,model,system,device")
    assert len(csv_text.strip().splitlines()) == 3
    with pytest.raises(ValueError, match="supported: csv, json"):
        store.export("xml")


def test_store_resume_keys_and_unknown_column(store):
    store.add(row(sweep_id="s1", job_key="a"))
    store.add(row(sweep_id="s1", job_key="b", status="error"))
    store.add(row(sweep_id="s1", job_key="c", status="skipped"))
    assert store.job_keys("s1") == {"a", "c"}
    with pytest.raises(ValueError, match="unknown result column"):
        store.query({"colour": "red"})


def test_store_migrates_old_database(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT, model TEXT, system TEXT, device TEXT)")
    db.execute("INSERT INTO results (dataset, model, system, device) VALUES ('cifar10', 'vgg16', 'torch', 'pi')")
    db.commit()
    db.close()
    store = ResultStore(path)
    store.add(row())
    models = [r["model"] for r in store.query(order="id ASC")]
    assert models == ["vgg16", "resnet18"]


def test_cache_hit_miss_and_corruption(tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    src = tmp_path / "lib.so"
    src.write_bytes(b"\x7fELF" + b"x" * 100)
    key = key_of({"model": "resnet18", "target": "llvm"})
    assert key == key_of({"target": "llvm", "model": "resnet18"})
    assert cache.get(key) is None
    entry = cache.put(key, src, {"compile_s": 1.5})
    hit = cache.get(key)
    assert hit is not None and hit.sha256 == entry.sha256 and hit.meta["compile_s"] == 1.5
    # Same content under another key is stored once.
    entry2 = cache.put(key_of({"other": 1}), src)
    assert entry2.path == entry.path
    # A corrupted blob is detected, evicted and reported as a miss.
    entry.path.write_bytes(b"tampered")
    assert cache.get(key) is None
    assert not (cache.index / key[:2] / f"{key}.json").exists()


def test_stats_and_warnings():
    stats = summarize([10.0] * 9 + [30.0])
    assert stats.median_ms == 10.0 and stats.n == 10 and stats.p99_ms > 20
    assert stats.mad_ms == 0.0
    noisy = summarize([1, 2, 3, 4, 5, 6])
    assert any("unstable" in w for w in noisy.warnings)
    few = summarize([1.0, 1.0])
    assert any("only 2 samples" in w for w in few.warnings)


def test_protocol_roundtrip_and_rejects_unknown_keys():
    req = BenchmarkRequest(artifact="a.so", sha256="0" * 64, inputs="in.npz", repeat=5)
    assert BenchmarkRequest.from_json(req.to_json()) == req
    res = BenchmarkResult(ok=True, stats=summarize([1.0, 2.0, 3.0]))
    again = BenchmarkResult.from_json(res.to_json())
    assert again.stats.median_ms == 2.0
    with pytest.raises(ProtocolError, match="unknown keys"):
        BenchmarkRequest.from_json(json.dumps({"artifact": "a", "sha256": "b", "inputs": "c", "evil": 1}))


def test_superseded_attempts_are_not_current_results(store, tmp_path):
    from typer.testing import CliRunner

    from dlas_host.cli import app

    first = row(status="error", error="agent went away", sweep_id="s1", job_key="k1", extra={"transient": True})
    first_id, added = store.add_job_row(first)
    assert added
    final_id, added = store.add_job_row(row(status="ok", median_ms=2.0, sweep_id="s1", job_key="k1"))
    assert added and final_id != first_id
    assert [r["id"] for r in store.query({"sweep_id": "s1"}, current=True)] == [final_id]
    assert {r["id"] for r in store.query({"sweep_id": "s1"})} == {first_id, final_id}
    listed = CliRunner().invoke(app, ["results", "list", "--json", "--db", str(store.path)])
    assert [r["id"] for r in json.loads(listed.output) if r["sweep_id"] == "s1"] == [final_id]
    listed = CliRunner().invoke(app, ["results", "list", "--json", "--attempts", "--db", str(store.path)])
    assert {r["id"] for r in json.loads(listed.output) if r["sweep_id"] == "s1"} == {first_id, final_id}
