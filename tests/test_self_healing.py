"""Self-healing state (issue #20): corrupt files are replaced or moved aside atomically, never trusted,
never overwritten in place; killed builds' litter is cleaned; unusable databases are one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


# ------------------------------------------------------------------------------------------------ cache
def test_corrupt_blob_is_replaced_by_identical_rebuild(tmp_path):
    """The rebuild is byte-identical; the corrupt file must not stay (and the stored hash is the file's)."""
    from dlas_host.cache import ArtifactCache

    cache = ArtifactCache(tmp_path / "cache")
    src = tmp_path / "model.so"
    src.write_bytes(b"\x7fELF" + os.urandom(4000))
    first = cache.put("a" * 64, src)
    first.path.write_bytes(b"corrupt")
    assert cache.get("a" * 64) is None
    again = cache.put("a" * 64, src)  # what compile --force does with the identical rebuild
    assert hashlib.sha256(again.path.read_bytes()).hexdigest() == again.sha256 == first.sha256
    assert again.size == src.stat().st_size
    assert cache.get("a" * 64) is not None
    assert not list(again.path.parent.glob(".*.tmp"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_scratch_dirs_are_cleaned_when_the_cache_opens(tmp_path):
    from dlas_host import cache as cache_mod

    root = tmp_path / "cache"
    tmp = root / "tmp"
    tmp.mkdir(parents=True)
    host = cache_mod._host()
    old = time.time() - 2 * cache_mod.STALE_S
    dead_old = tmp / f"{_dead_pid()}@{host}.abc"
    alive_old = tmp / f"{os.getpid()}@{host}.def"
    dead_new = tmp / f"{_dead_pid()}@{host}.ghi"
    legacy_old = tmp / "tmpxyz"
    for d in (dead_old, alive_old, dead_new, legacy_old):
        d.mkdir()
        (d / "model.so").write_bytes(b"x" * 1000)
    for d in (dead_old, alive_old, legacy_old):
        os.utime(d / "model.so", (old, old))
        os.utime(d, (old, old))
    cache_mod._cleaned.discard(root.resolve())
    cache_mod.ArtifactCache(root)
    assert not dead_old.exists() and not legacy_old.exists()
    assert alive_old.exists() and dead_new.exists()


def test_scratch_dir_is_removed_on_error(tmp_path):
    from dlas_host.cache import ArtifactCache

    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(RuntimeError):
        with cache.scratch_dir() as scratch:
            (scratch / "model.so").write_bytes(b"half")
            raise RuntimeError("export failed")
    assert not scratch.exists()
    assert scratch.name.startswith(f"{os.getpid()}@")


# ------------------------------------------------------------------------------------------------ tuning records
def test_truncated_defaults_is_moved_aside_and_kept(tmp_path, caplog):
    from dlas_host.tune.records import DEFAULTS, TuningRecords

    recs = TuningRecords(json.dumps({"kind": "llvm"}), tmp_path)
    full = json.dumps({f"w{i}": {"task": f"t{i}", "default_s": 0.01} for i in range(18)})
    (recs.dir / DEFAULTS).write_text(full[: len(full) // 2])
    recs.set_default("w99", "t99", 0.02)
    aside = list(recs.dir.glob(f"{DEFAULTS}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == full[: len(full) // 2], "the 18 entries survive aside"
    assert [r.getMessage().count("\n") for r in caplog.records if "moved aside" in r.getMessage()] == [0]


def test_defaults_with_wrong_types_is_moved_aside(tmp_path):
    from dlas_host.tune.records import DEFAULTS, TuningRecords

    recs = TuningRecords(json.dumps({"kind": "llvm"}), tmp_path)
    (recs.dir / DEFAULTS).write_text("[1, 2, 3]")
    assert recs.defaults() == {}
    assert recs.keep_default() == set()
    assert len(list(recs.dir.glob(f"{DEFAULTS}.corrupt-*"))) == 1


def test_repair_keeps_the_original_records_file(tmp_path):
    from dlas_host.tune.records import RECORDS, TuningRecords

    recs = TuningRecords(json.dumps({"kind": "llvm"}), tmp_path)
    good = '[0, [[[], []], [1e-05], {"kind": "llvm"}, []]]\n'
    (recs.dir / RECORDS).write_text(good * 2 + '[0, [[[], [')
    TuningRecords(json.dumps({"kind": "llvm"}), tmp_path)
    assert (recs.dir / RECORDS).read_text() == good * 2
    assert [p.read_text() for p in recs.dir.glob(f"{RECORDS}.corrupt-*")] == [good * 2 + '[0, [[[], [']


@pytest.fixture(scope="module")
def real_records(tmp_path_factory) -> Path:
    """A real MetaSchedule database (one workload, one record) made by TVM, in a subprocess."""
    out = tmp_path_factory.mktemp("records")
    code = f"""
import json, tvm
from tvm import te
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir import Schedule
A = te.placeholder((4,), name="A"); B = te.compute((4,), lambda i: A[i] * 2, name="B")
f = te.create_prim_func([A, B]); mod = tvm.IRModule({{"main": f}})
db = ms.database.JSONDatabase(path_workload="{out}/database_workload.json",
                              path_tuning_record="{out}/database_tuning_record.json", allow_missing=True)
w = db.commit_workload(mod)
db.commit_tuning_record(ms.database.TuningRecord(Schedule(mod).trace, w, [1e-5], tvm.target.Target({{"kind": "llvm"}}),
                        ms.arg_info.ArgInfo.from_prim_func(f)))
open("{out}/target.json", "w").write(json.dumps({{"target": json.dumps({{"kind": "llvm"}})}}))
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    return out


def _archive(path: Path, dirs: dict[str, Path | dict[str, bytes]]) -> Path:
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for tid, src in dirs.items():
            if isinstance(src, Path):
                for f in sorted(src.iterdir()):
                    tar.add(f, arcname=f"{tid}/{f.name}")
            else:
                import io

                for name, data in src.items():
                    info = tarfile.TarInfo(f"{tid}/{name}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return path


def _import(archive: Path, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlas_host.cli", "tune-db", "import", str(archive),
                           "--records-dir", str(root)], capture_output=True, text=True, timeout=300)


def test_import_of_blank_record_lines_is_one_line_error_not_a_segfault(real_records, tmp_path):
    files = {p.name: p.read_bytes() for p in real_records.iterdir()}
    files["database_tuning_record.json"] = b"\n\n\n"
    archive = _archive(tmp_path / "a.tar.gz", {"llvm-x": files})
    proc = _import(archive, tmp_path / "root")
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "blank line" in proc.stderr and str(archive) in proc.stderr
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").iterdir())


def test_import_is_all_or_nothing(real_records, tmp_path):
    """The first target is fine; the second passes the line checks but TVM cannot read it: nothing imported."""
    import base64

    files = {p.name: p.read_bytes() for p in real_records.iterdir()}
    bad = dict(files)
    bad["target.json"] = json.dumps({"target": json.dumps({"kind": "llvm", "mcpu": "znver4"})}).encode()
    bad["database_workload.json"] = (json.dumps(["123", base64.b64encode(b"R,\0\0garbage{").decode()]) + "\n").encode()
    archive = _archive(tmp_path / "a.tar.gz", {"llvm-good": files, "llvm-zbad": bad})
    root = tmp_path / "root"
    proc = _import(archive, root)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not root.exists() or not any(root.iterdir()), list(root.rglob("*"))
    ok = _import(_archive(tmp_path / "b.tar.gz", {"llvm-good": files}), root)
    assert ok.returncode == 0 and "1 new record" in ok.stdout, ok.stderr


# ------------------------------------------------------------------------------------------------ results store
def test_corrupt_results_db_is_one_error_and_untouched(tmp_path):
    from dlas_host.errors import DlasError
    from dlas_host.store import ResultStore
    from dlas_host.sweep.state import SweepState

    db = tmp_path / "results.sqlite"
    db.write_bytes(os.urandom(8192))
    before = db.read_bytes()
    for make in (ResultStore, SweepState):
        with pytest.raises(DlasError, match="not a readable results database") as info:
            make(db)
        assert str(db) in str(info.value) and "\n" not in str(info.value)
        assert isinstance(info.value, RuntimeError)  # user_errors() already catches it
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]


# ------------------------------------------------------------------------------------------------ schedules
def test_failed_best_effort_schedule_step_is_recorded(monkeypatch):
    import tvm
    from tvm import te

    from dlas_host.lower import schedule_cpu
    from dlas_host.lower.targets import TargetInfo

    A = te.placeholder((64, 64), name="A")
    B = te.compute((64, 64), lambda i, j: A[i, j] * 2, name="B")
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func([A, B])}))

    def boom(*_a, **_k):
        raise ValueError("cannot schedule this block")

    monkeypatch.setattr(schedule_cpu, "schedule_block_generic", boom)
    info = TargetInfo.__new__(TargetInfo)
    monkeypatch.setattr(TargetInfo, "lanes", lambda self, dtype: 8, raising=False)
    with schedule_cpu.collect_warnings() as warnings:
        schedule_cpu.schedule_generic(sch, info)
    assert len(warnings) == 1 and "B" in warnings[0] and "cannot schedule this block" in warnings[0], warnings
    assert "left serial" in warnings[0]
