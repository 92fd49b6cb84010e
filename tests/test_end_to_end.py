"""The foundation's vertical slice against a real agent process on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlas_host.bench import RunOptions, bench_tvm
from dlas_host.compile import BuildSpec, compile_artifact, example_inputs
from dlas_host.devices import Device, TrackerConnection
from dlas_host.lower.policy import LoweringPolicy
from dlas_host.transport import AgentError, Timeouts, connect

ROOT = Path(__file__).resolve().parents[1]
FAST = RunOptions(number=1, repeat=3, warmup=0)


@pytest.fixture(scope="module")
def spec():
    return BuildSpec(model="resnet18", dataset="cifar10", policy=LoweringPolicy(algorithm="spatial_pack"))


@pytest.fixture(scope="module")
def artifact(spec, local_device):
    return compile_artifact(spec, local_device)


def test_compile_is_cached_by_content(spec, local_device, artifact):
    again = compile_artifact(spec, local_device)
    assert again.cached and again.sha256 == artifact.sha256 and again.path == artifact.path
    assert artifact.size > 1_000_000
    assert artifact.meta["inputs"] == [{"shape": [1, 3, 32, 32], "dtype": "float32"}]


def test_bench_on_local_agent_matches_torch(spec, local_device, store, artifact):
    row = bench_tvm(spec, local_device, store, FAST)
    assert row.status == "ok", row.error
    assert row.max_abs_err is not None and row.max_abs_err < 1e-4
    assert row.n == 3 and row.median_ms > 0 and len(row.samples_ms) == 3
    assert row.artifact_sha256 == artifact.sha256
    assert row.device_env["tvm_runtime_only"] is True  # the agent never loads the compiler
    assert row.device_env["cpu_model"]
    stored = store.query({"run_id": row.run_id})
    assert len(stored) == 1 and stored[0]["max_abs_err"] == row.max_abs_err


def test_agent_refuses_tampered_artifact(spec, local_device, artifact, tmp_path):
    tampered = tmp_path / "model.so"
    data = bytearray(artifact.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with connect(local_device) as client:
        result, outputs = client.benchmark(tampered, artifact.sha256, example_inputs(spec), number=1, repeat=1)
    assert not result.ok
    assert "refused to load" in result.error
    assert outputs == []


def test_unreachable_agent_is_a_clear_error_and_an_error_row(spec, store):
    dead = Device(name="ghost", arch="x86_64", target={"kind": "llvm"},
                  connection=TrackerConnection(type="tracker", host="127.0.0.1", port=9, key="ghost"))
    with pytest.raises(AgentError):
        with connect(dead, Timeouts(queue_s=5, connect_s=5)):
            pass
    before = store.count()
    row = bench_tvm(spec, dead, store, FAST, timeouts=Timeouts(queue_s=5, connect_s=5))
    assert row.status == "error" and "ghost" in row.error
    assert store.count() == before + 1


def test_agent_package_stays_free_of_torch_and_compiler():
    code = ("import sys, dlas_agent.server, dlas_agent.runner, dlas_agent.devinfo; "
            "bad = [m for m in ('torch', 'torchvision', 'dlas_host') if m in sys.modules]; "
            "assert not bad, bad; print('clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "clean" in out.stdout


def cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlas_host.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ), check=check, timeout=600)


def test_cli_bench_json_is_one_object(tmp_path, artifact):
    proc = cli("bench", "--device", "local", "--model", "resnet18", "--dataset", "cifar10", "--system", "tvm",
               "--algorithm", "spatial_pack", "--json", "--repeat", "3", "--number", "1", "--db", str(tmp_path / "r.sqlite"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {"median_ms", "p90_ms", "n", "max_abs_err"} <= set(data)
    assert data["n"] == 3 and data["max_abs_err"] < 1e-4


def test_cli_torch_baseline_json(tmp_path):
    proc = cli("bench", "--system", "torch", "--json", "--repeat", "3", "--number", "1",
               "--db", str(tmp_path / "r.sqlite"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["system"] == "torch" and data["n"] == 3 and data["max_abs_err"] == 0.0


@pytest.mark.parametrize("args, message", [
    (("bench", "--model", "resnet19"), "unknown model 'resnet19'; known: resnet18"),
    (("bench", "--dataset", "mnist"), "unknown dataset 'mnist'"),
    (("bench", "--device", "jetsn"), "no device named 'jetsn'"),
    (("bench", "--algorithm", "winograd"), "unknown algorithm 'winograd'; supported: direct, gemm, spatial_pack"),
])
def test_cli_bad_input_is_one_line(args, message, tmp_path):
    proc = cli(*args, "--db", str(tmp_path / "r.sqlite"))
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_malformed_devices_file(tmp_path):
    bad = tmp_path / "devices.yaml"
    bad.write_text("devices:\n  local: {arch: x86_64, target: {kind: llvm}, threds: 2}\n")
    proc = cli("devices", "list", "--devices", str(bad))
    assert proc.returncode == 1
    assert f"{bad}: device 'local': field threds: unknown key" in proc.stderr.replace("\n", "")


def test_cli_results_export_keeps_rows(tmp_path):
    db = tmp_path / "r.sqlite"
    cli("bench", "--system", "torch", "--repeat", "2", "--number", "1", "--db", str(db), check=True)
    cli("bench", "--model", "nope", "--db", str(db))  # rejected before anything runs: no row
    out = cli("results", "export", "--format", "json", "--db", str(db), check=True)
    rows = json.loads(out.stdout)
    assert len(rows) == 1 and rows[0]["system"] == "torch"
    csv_out = cli("results", "export", "--format", "csv", "--db", str(db), check=True)
    assert len(csv_out.stdout.strip().splitlines()) == 2


def test_devices_check_local_agent():
    proc = cli("devices", "check", "local")
    assert proc.returncode == 0, proc.stderr
    assert "ok local: agent" in proc.stdout and "runtime-only" in proc.stdout


def test_missing_capability_is_a_stored_skipped_row_not_a_failure(local_device, store, tmp_path, monkeypatch):
    monkeypatch.setenv("DLAS_TUNING_DIR", str(tmp_path / "no-records"))  # tuned, but nothing tuned yet
    spec = BuildSpec(model="resnet18", dataset="cifar10", tuning="tuned")
    row = bench_tvm(spec, local_device, store, FAST)
    assert row.status == "skipped" and "no tuning records" in row.error
    assert store.query({"run_id": row.run_id})[0]["status"] == "skipped"
