"""Sweeps: spec validation and expansion, and a real sweep on `local` that is killed and resumed."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweeptools import cli, final_rows, run_interrupted  # noqa: E402

from dlas_host.sweep.spec import SweepSpecError, expand, load_spec, parse_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_presets_expand(registry):
    quick = expand(load_spec("quick"), registry)
    assert len(quick) == 3 and {j.system for j in quick} == {"tvm", "torch"}
    paper = expand(load_spec("dlas-paper"), registry)
    assert len(paper) == 1008
    # Baselines do not vary the TVM-only dimensions, and sparse formats appear only with unstructured pruning.
    assert all(j.algorithm == "n/a" and j.tuning == "n/a" for j in paper if j.system != "tvm")
    assert {j.pruning for j in paper if j.sparse_format == "csr"} == {"unstructured:global:l1:0.8"}
    assert len({j.key for j in paper}) == len(paper)
    assert {j.model for j in paper} == {"resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large",
                                        "efficientnet_b0", "vgg16", "densenet121"}


@pytest.mark.parametrize("text, message", [
    ("name: x\ngrid: {models: [resnet18], colour: [red]}\n", "field grid.colour: unknown key"),
    ("name: x\n", "give a 'grid' or a list of 'jobs'"),
    ("name: x\ngrid: {models: [resnet19]}\n", "unknown model 'resnet19'"),
    ("name: x\ngrid: {algorithms: [winograd]}\n", "unknown algorithm 'winograd'"),
    ("name: x\ngrid: {devices: [jetsn]}\n", "no device named 'jetsn'"),
    ("name: x\ngrid: {}\nexclude: [{flavour: x}]\n", "exclude: unknown dimension(s) ['flavour']"),
    ("grid: {}\n", "field name: Field required"),
])
def test_bad_specs_give_one_line(registry, text, message):
    with pytest.raises(SweepSpecError) as info:
        expand(parse_spec(text, "spec.yaml"), registry)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_exclusions_and_explicit_jobs(registry):
    spec = parse_spec("""
name: t
grid: {algorithms: [direct, gemm, spatial_pack], systems: [tvm, torch]}
exclude: [{algorithm: gemm}]
jobs: [{model: mobilenet_v2, system: onnxruntime, algorithm: direct}]
""")
    jobs = expand(spec, registry)
    labels = sorted(j.label() for j in jobs)
    assert labels == ["mobilenet_v2 cifar10 onnxruntime", "resnet18 cifar10 torch",
                      "resnet18 cifar10 tvm direct/NCHW/dense untuned",
                      "resnet18 cifar10 tvm spatial_pack/NCHW/dense untuned"]


SPEC = """name: test-local
grid:
  devices: [local]
  models: [resnet18]
  datasets: [cifar10]
  algorithms: [direct, gemm, spatial_pack]
  systems: [tvm, torch]
run: {number: 1, repeat: 3, warmup: 0}
"""


def test_local_sweep_killed_and_resumed_loses_nothing(tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SPEC)
    db = tmp_path / "results.sqlite"
    sweep_id = run_interrupted(spec, db, None, kill_after_rows=1)
    before = final_rows(db)
    assert 1 <= len(before) < 4, before
    status = cli("sweep", "status", sweep_id, "--db", str(db))
    assert status.returncode == 0 and sweep_id in status.stdout

    resumed = cli("sweep", "resume", sweep_id, "--db", str(db))
    assert resumed.returncode == 0, resumed.stderr
    after = final_rows(db)
    assert after[: len(before)] == before  # nothing recorded before the crash was lost or rewritten
    ok_keys = Counter(key for sid, key, st in after if sid == sweep_id and st == "ok")
    assert len(ok_keys) == 4 and set(ok_keys.values()) == {1}  # every job once, none twice
    again = cli("sweep", "resume", sweep_id, "--db", str(db))
    assert "0 to run" in again.stderr and len(final_rows(db)) == len(after)

    report_dir = tmp_path / "report"
    rep = cli("report", "--sweep", sweep_id, "--db", str(db), "--out", str(report_dir))
    assert rep.returncode == 0, rep.stderr
    html = (report_dir / "report.html").read_text()
    assert html.count("<img") >= 2 and "runs fastest with" in html


def test_dead_device_is_retried_then_quarantined(tmp_path):
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  ghost:\n    arch: x86_64\n    target: {kind: llvm}\n"
                       "    connection: {type: tracker, host: 127.0.0.1, port: 9, key: ghost}\n")
    spec = tmp_path / "sweep.yaml"
    spec.write_text("name: ghost\ngrid: {devices: [ghost], algorithms: [direct, gemm, spatial_pack]}\n"
                    "run: {number: 1, repeat: 2, warmup: 0, retries: 1, quarantine_after: 2}\n")
    db = tmp_path / "r.sqlite"
    proc = cli("sweep", "run", str(spec), "--db", str(db), "--devices", str(devices))
    assert proc.returncode == 0, proc.stderr
    statuses = [st for _, _, st in final_rows(db)]
    assert statuses == ["error", "error", "skipped"]
    assert "quarantined after 2 failed jobs" in proc.stderr.replace("\n", " ")


def test_only_runs_the_named_devices_jobs(tmp_path):
    """`sweep run --only NAME` keeps that device's jobs (repeatable, comma-separated); --devices stays the file."""
    import sqlite3

    from typer.testing import CliRunner

    from dlas_host.cli_sweep import sweep_app

    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  local:\n    arch: x86_64\n    target: {kind: llvm}\n    threads: 2\n"
                       "  ghost:\n    arch: x86_64\n    target: {kind: llvm}\n"
                       "    connection: {type: tracker, host: 127.0.0.1, port: 9, key: ghost}\n")
    spec = tmp_path / "sweep.yaml"
    spec.write_text("name: only\ngrid: {devices: [local, ghost], systems: [torch]}\n"
                    "run: {number: 1, repeat: 2, warmup: 0, retries: 0}\n")
    db = tmp_path / "r.sqlite"
    common = [str(spec), "--db", str(db), "--devices", str(devices)]
    runner = CliRunner()
    for only, jobs in ((["--only", "local"], 1), (["--only", "ghost,local"], 2),
                       (["--only", "local", "--only", "ghost"], 2), ([], 2)):
        res = runner.invoke(sweep_app, ["run", *common, *only, "--dry-run"])
        assert res.exit_code == 0 and f"only: {jobs} jobs" in res.stdout, (only, res.output)
    res = runner.invoke(sweep_app, ["run", *common, "--only", "nosuch", "--dry-run"])
    assert res.exit_code == 1 and "no device named 'nosuch'" in res.stderr

    proc = cli("sweep", "run", *common, "--only", "local")
    assert proc.returncode == 0, proc.stderr
    con = sqlite3.connect(db)
    rows = con.execute("SELECT device, system, status FROM results").fetchall()
    (total,) = con.execute("SELECT total FROM sweeps").fetchone()
    con.close()
    assert rows == [("local", "torch", "ok")] and total == 1
