"""``dlas-host sweep plan``: counts from the expanded jobs (distinct builds as the runner dedupes them), and
estimates from earlier rows' costs when the results database has them, stated defaults when it has none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dlas_host.devices import load
from dlas_host.store import ResultRow, ResultStore
from dlas_host.sweep import plan as plan_mod
from dlas_host.sweep.plan import plan_sweep
from dlas_host.sweep.spec import expand, load_spec

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


def test_quick_preset_counts(registry) -> None:
    plan = plan_sweep(load_spec("quick"), registry)
    assert (plan.jobs, plan.tvm_jobs, plan.builds, plan.saved_builds) == (15, 9, 9, 0)
    assert plan.jobs_by_system == {"onnxruntime": 3, "torch": 3, "tvm": 9}
    assert (plan.tuning_tasks, plan.bases_to_train, plan.pruned_models, plan.devices) == (0, 1, 2, 1)
    assert [p.name for p in plan.phases] == ["models", "tune", "compile", "run"]


def test_dlas_paper_counts(registry) -> None:
    spec = load_spec("dlas-paper")
    jobs = expand(spec, registry)
    plan = plan_sweep(spec, registry, jobs=jobs)
    tvm = [j for j in jobs if j.system == "tvm"]
    assert plan.jobs == 1008 and plan.tvm_jobs == len(tvm) == 924
    # on one device no two TVM jobs share a build: every job differs in a dimension the build depends on
    assert plan.builds == 924 and plan.saved_builds == 0
    assert plan.tuning_tasks == sum(j.tuning == "tuned" for j in tvm) == 462
    assert plan.bases_to_train == 7 and plan.pruned_models == 28  # cifar10 bases; imagenet ones are named


def test_devices_sharing_a_target_share_builds(tmp_path: Path) -> None:
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  a:\n    arch: x86_64\n    target: {kind: llvm, mcpu: znver4}\n    threads: 2\n"
                       "  b:\n    arch: x86_64\n    target: {kind: llvm, mcpu: znver4}\n    threads: 4\n"
                       "  c:\n    arch: x86_64\n    target: {kind: llvm, mcpu: skylake}\n    threads: 2\n")
    registry = load(devices)
    spec = load_spec("quick").model_copy(update={"grid": load_spec("quick").grid.model_copy(
        update={"devices": ["a", "b", "c"]})})
    plan = plan_sweep(spec, registry)
    assert plan.jobs == 45 and plan.tvm_jobs == 27 and plan.builds == 18 and plan.saved_builds == 9
    assert "18 distinct TVM builds for 27 TVM jobs (9 saved by de-duplication)" in plan.summary()


def test_estimates_use_defaults_without_rows(registry, tmp_path: Path) -> None:
    plan = plan_sweep(load_spec("quick"), registry, db_path=tmp_path / "none.sqlite")
    phases = {p.name: p for p in plan.phases}
    assert phases["compile"].host_s == 9 * plan_mod.DEFAULT_BUILD_S and phases["compile"].source == "default"
    assert phases["run"].device_s == 15 * plan_mod.DEFAULT_TIMING_S and phases["run"].source == "default"
    assert plan.disk_bytes == 9 * plan_mod.DEFAULT_ARTIFACT_BYTES and plan.disk_source == "default"
    assert phases["tune"].count == 0 and phases["tune"].source == "none"


def test_estimates_use_measured_costs(registry, tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.sqlite")
    target = json.dumps(registry.get("local").target, sort_keys=True)  # as bench records it
    for compile_s in (10.0, 20.0, 90.0):  # median 20
        store.add(ResultRow(dataset="digits", model="resnet18", system="tvm", device="local", target=target,
                            compile_s=compile_s, artifact_bytes=5 * MiB, median_ms=1.0, load_s=0.5,
                            extra={"eval": {"wall_s": 2.0}}))
    store.add(ResultRow(dataset="digits", model="resnet18", system="tvm", device="local", target=target,
                        status="error", compile_s=999.0))  # failed rows cost nothing here
    # torch: another mcpu, same kind (llvm): found by target kind
    store.add(ResultRow(dataset="digits", model="resnet18", system="torch", device="x",
                        target=json.dumps({"kind": "llvm", "mcpu": "other"}), median_ms=10.0, load_s=1.0))
    spec = load_spec("quick")
    plan = plan_sweep(spec, registry, db_path=store.path)
    phases = {p.name: p for p in plan.phases}
    assert phases["compile"].host_s == pytest.approx(9 * 20.0) and phases["compile"].source == "measured"
    assert plan.disk_bytes == 9 * 5 * MiB and plan.disk_source == "measured"
    runs = spec.run.number * (spec.run.repeat + spec.run.warmup)
    tvm_job = 0.5 + 1e-3 * runs + 2.0  # load + latency x runs + evaluation (the spec evaluates)
    torch_job = 1.0 + 10e-3 * runs
    expected = 9 * tvm_job + 3 * torch_job + 3 * plan_mod.DEFAULT_TIMING_S  # onnxruntime: no rows
    assert phases["run"].device_s == pytest.approx(expected) and phases["run"].source == "measured+default"


def test_cli_plan_json_and_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DLAS_RESULTS_DB", str(tmp_path / "results.sqlite"))
    monkeypatch.setenv("DLAS_DEVICES", str(ROOT / "devices.yaml"))
    from dlas_host.cli_sweep import sweep_app

    result = CliRunner().invoke(sweep_app, ["plan", "--preset", "quick", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["jobs"] == 15 and doc["builds"] == 9 and doc["host_s"] > 0 and len(doc["phases"]) == 4
    result = CliRunner().invoke(sweep_app, ["plan", "--preset", "quick"])
    assert result.exit_code == 0 and "9 distinct TVM builds for 9 TVM jobs" in result.stdout
    for args, message in ((["plan"], "give a sweep spec file or --preset"),
                          (["plan", "--preset", "nope"], "no such sweep file or preset")):
        result = CliRunner().invoke(sweep_app, args)
        assert result.exit_code == 1 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_run_summary_never_stops_a_run(registry, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dlas_host.cli_sweep import _print_plan_summary

    spec = load_spec("quick")
    _print_plan_summary(spec, registry, None, tmp_path / "r.sqlite", expand(spec, registry))
    assert "plan quick: 15 jobs" in capsys.readouterr().err
    _print_plan_summary(spec, registry, None, tmp_path / "r.sqlite", [object()])  # a broken plan: one note
    assert "(no plan:" in capsys.readouterr().err
