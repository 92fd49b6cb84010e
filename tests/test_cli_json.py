"""Every listing command's ``--json``: exactly one JSON document on stdout, with what the store/registry holds;
and ``results show``, human and JSON, on new rows (build manifest) and on rows of older databases."""

from __future__ import annotations

import json
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweeptools import cli as cli_subprocess  # noqa: E402

from dlas_host.cli_common import to_json  # noqa: E402
from dlas_host.store import COLUMNS, ResultRow, ResultStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

MANIFEST = [
    {"layer": "conv2d_0", "op": "conv2d", "shape": "1x3x32x32 * 16x3x3x3", "algorithm": "spatial_pack",
     "layout": "NCHW", "format": "dense", "block": "", "density": 1.0, "dtype_in": "int8", "dtype_weight": "int8",
     "dtype_acc": "int32", "kernel": "conv2d_spatial_pack_int8", "schedule": "default"},
    {"layer": "dense_0", "op": "dense", "shape": "1x32 * 10x32", "algorithm": "sparse", "layout": "",
     "format": "csr", "block": "", "density": 0.1, "dtype_in": "float32", "dtype_weight": "float32",
     "dtype_acc": "float32", "kernel": "csr_dense", "schedule": "fixed", "note": "[bold]kept literally[/]"},
]


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private data dir, results db and tuning dir; the repository's devices.yaml."""
    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DLAS_RESULTS_DB", str(tmp_path / "results.sqlite"))
    monkeypatch.setenv("DLAS_TUNING_DIR", str(tmp_path / "tuning"))
    monkeypatch.setenv("DLAS_DEVICES", str(ROOT / "devices.yaml"))
    return tmp_path


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    """The command tree main() builds (main() itself registers on the shared app, once per process)."""
    from dlas_host.cli import devices_app, images_app, results_app
    from dlas_host.cli_sweep import sweep_app
    from dlas_host.cli_tune import tune_db_app

    root = typer.Typer()
    for sub, name in ((devices_app, "devices"), (results_app, "results"), (images_app, "images"),
                      (sweep_app, "sweep"), (tune_db_app, "tune-db")):
        root.add_typer(sub, name=name)
    return root


def invoke(app: typer.Typer, *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def as_json(app: typer.Typer, *args: str, code: int = 0):
    return json.loads(invoke(app, *args, "--json", code=code).stdout)  # the whole of stdout is one document


def _tvm_row(**kw) -> ResultRow:
    return ResultRow(dataset="cifar10", model="resnet18", system="tvm", device="local", algorithm="spatial_pack",
                     layout="NCHW", quantization="int8", tuning="untuned", target="llvm -mcpu=x86-64", median_ms=1.25,
                     mad_ms=0.01, iqr_ms=0.02, p90_ms=1.3, p99_ms=1.4, n=3, samples_ms=[1.2, 1.25, 1.3],
                     warnings=["timings spread [large]: IQR 12 % of the median"], max_abs_err=2e-3,
                     artifact_sha256="ab" * 32, artifact_key="k" * 40, threads=2,
                     host_env={"python": "3.11.9", "tvm": "0.27.0"}, device_env={"governor": "performance"},
                     built="conv: 1 spatial_pack int8; dense: 1 csr float32", manifest=MANIFEST, **kw)


def test_to_json_is_stable_and_encodes_paths_and_dataclasses() -> None:
    @dataclass
    class Point:
        y: int
        x: Path

    text = to_json({"b": Point(1, Path("/tmp/p")), "a": [1.5]})
    assert json.loads(text) == {"a": [1.5], "b": {"x": "/tmp/p", "y": 1}}
    assert text.index('"a"') < text.index('"b"') and text.index('"x"') < text.index('"y"')


def test_results_list_json_rows_are_the_stores(env: Path, app: typer.Typer) -> None:
    store = ResultStore(env / "results.sqlite")
    first = store.add(_tvm_row())
    second = store.add(ResultRow(dataset="cifar10", model="mobilenet_v2", system="torch", device="local",
                                 median_ms=2.5, n=3))
    rows = as_json(app, "results", "list")
    assert [r["id"] for r in rows] == [second, first]  # newest first, like the table
    assert set(rows[1]) == {"id"} | {name for name, _ in COLUMNS}  # every column
    assert rows[1]["samples_ms"] == [1.2, 1.25, 1.3] and rows[1]["host_env"]["tvm"] == "0.27.0"  # decoded
    assert rows[1]["manifest"] == MANIFEST
    assert [r["id"] for r in as_json(app, "results", "list", "--model", "resnet18")] == [first]
    assert [r["id"] for r in as_json(app, "results", "list", "--limit", "1")] == [second]
    assert as_json(app, "results", "list", "--device", "nowhere") == []
    assert "mobilenet_v2" in invoke(app, "results", "list").stdout  # the human table is still there


def test_results_show_by_id_and_run_id_prefix(env: Path, app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    from dlas_host import cli

    monkeypatch.setattr(cli.out, "width", 400)  # a wide terminal: no cell folded over lines
    store = ResultStore(env / "results.sqlite")
    row = _tvm_row()
    rid = store.add(row)
    shown = as_json(app, "results", "show", str(rid))
    assert shown == store.query({"id": rid})[0]
    assert shown["run_id"] == row.run_id and shown["manifest"] == MANIFEST and shown["built"] == row.built
    assert as_json(app, "results", "show", row.run_id[:5]) == shown

    text = invoke(app, "results", "show", row.run_id[:5]).stdout
    for expected in (f"result {rid} (run {row.run_id}): ok", "quantization", "int8", "spatial_pack", "p99_ms",
                     "1.25", "ab" * 32, "k" * 40, "host_env.tvm", "0.27.0", "device_env.governor", "threads",
                     "llvm -mcpu=x86-64", "warning: timings spread [large]: IQR 12 % of the median",
                     "built: conv: 1 spatial_pack int8; dense: 1 csr float32", "build manifest (2 layers)",
                     "conv2d_spatial_pack_int8", "csr_dense", "dtype_acc", "[bold]kept literally[/]"):
        assert expected in text, expected
    header = next(line for line in text.splitlines() if "layer" in line and "kernel" in line)
    keys = list(dict.fromkeys(k for layer in MANIFEST for k in layer))  # first-seen order, "note" last
    assert [header.index(k) for k in keys] == sorted(header.index(k) for k in keys)


def test_results_show_unknown_and_ambiguous_ids_are_one_line(env: Path, app: typer.Typer) -> None:
    store = ResultStore(env / "results.sqlite")
    store.add(_tvm_row(run_id="abc111"))
    store.add(_tvm_row(run_id="abc222"))
    for ident, message in (("99", "no result with id or run_id '99'"), ("zzz", "no result with id or run_id 'zzz'"),
                           ("abc", "run_id prefix 'abc' matches several results")):
        result = invoke(app, "results", "show", ident, "--json", code=1)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
    assert as_json(app, "results", "show", "abc2")["run_id"] == "abc222"


def test_results_show_row_of_an_older_database(env: Path, app: typer.Typer) -> None:
    """A database written before built/manifest (and most other columns) existed."""
    db = env / "results.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT, model TEXT, system TEXT, "
                "device TEXT, status TEXT, error TEXT, median_ms REAL, n INTEGER, warnings TEXT, run_id TEXT)")
    con.execute("INSERT INTO results (dataset, model, system, device, status, error, median_ms, n, warnings, run_id) "
                "VALUES ('imagenet', 'vgg16', 'torch', 'local', 'ok', '', 9.5, 5, '[]', 'old0001')")
    con.commit()
    con.close()
    text = invoke(app, "results", "show", "old0").stdout
    assert "result 1 (run old0001): ok" in text and "vgg16" in text and "9.5" in text
    assert "built:" not in text and "build manifest" not in text
    shown = as_json(app, "results", "show", "1")
    assert shown["model"] == "vgg16" and shown["manifest"] is None and shown["built"] is None


def test_devices_list_json(env: Path, app: typer.Typer) -> None:
    devices = {d["name"]: d for d in as_json(app, "devices", "list")}
    assert "local" in devices
    local = devices["local"]
    assert local["connection"] == {"type": "local"} and local["lock"] == "free" and local["arch"] == "x86_64"
    assert local["target"]["kind"] == "llvm" and isinstance(local["tags"], list)


def test_devices_check_json_unreachable(env: Path, app: typer.Typer) -> None:
    devices = env / "devices.yaml"
    devices.write_text("devices:\n  gone:\n    arch: x86_64\n    target: {kind: llvm}\n"
                       "    connection: {type: ssh, host: 127.0.0.1, port: 1, user: nobody}\n")
    (check,) = as_json(app, "devices", "check", "--devices", str(devices), code=1)
    assert check["device"] == "gone" and check["ok"] is False and "unreachable" in check["error"]


def test_devices_check_json_local_agent(env: Path) -> None:
    """Through the real entry point: a local agent is spawned, and nothing but the document reaches stdout."""
    proc = cli_subprocess("devices", "check", "local", "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr
    (check,) = json.loads(proc.stdout)
    assert check["device"] == "local" and check["ok"] is True
    assert check["ping"]["agent"] and check["info"]["arch"] == "x86_64" and check["info"]["cores_logical"] >= 1


def test_sweep_list_and_status_json(env: Path, app: typer.Typer) -> None:
    from dlas_host.sweep.state import SweepState

    db = env / "results.sqlite"
    store = ResultStore(db)
    sweep_id = SweepState(db).create("tiny", {"name": "tiny", "grid": {"devices": ["local"]}}, ["local"], 2)
    store.add(ResultRow(dataset="cifar10", model="resnet18", system="torch", device="local", sweep_id=sweep_id,
                        job_key="job-a"))
    sweeps = as_json(app, "sweep", "list")
    assert [s["id"] for s in sweeps] == [sweep_id] and sweeps[0]["name"] == "tiny" and sweeps[0]["total"] == 2
    for args in ((), (sweep_id[:10],)):
        status = as_json(app, "sweep", "status", *args)
        assert status["id"] == sweep_id and status["counts"] == {"ok": 1} and status["finished"] == 1
        assert status["spec"]["grid"] == {"devices": ["local"]} and status["devices"] == ["local"]
    assert sweep_id in invoke(app, "sweep", "status").stdout


def test_tune_db_list_json(env: Path, app: typer.Typer) -> None:
    from dlas_host.tune.records import RECORDS, TARGET, WORKLOADS

    assert as_json(app, "tune-db", "list") == []
    target_dir = env / "tuning" / "llvm-x86-64-abc123"
    target_dir.mkdir(parents=True)
    (target_dir / TARGET).write_text(json.dumps({"target": "llvm -mcpu=x86-64 -num-cores=2"}))
    (target_dir / WORKLOADS).write_text('["w1"]\n')
    (target_dir / RECORDS).write_text('[0, "r1"]\n[0, "r2"]\n')
    (summary,) = as_json(app, "tune-db", "list")
    assert summary["target_id"] == "llvm-x86-64-abc123" and summary["target"] == "llvm -mcpu=x86-64 -num-cores=2"
    assert summary["workloads"] == 1 and summary["records"] == 2 and summary["size_bytes"] > 0


def test_images_list_json(env: Path, app: typer.Typer) -> None:
    from dlas_host.images import ImageError, detect_engine

    try:
        detect_engine()
    except ImageError as exc:
        pytest.skip(f"no container engine: {exc}")
    images = as_json(app, "images", "list")
    assert isinstance(images, list)
    assert all({"image", "id", "size_bytes", "created", "arch", "labels"} <= set(i) for i in images)
