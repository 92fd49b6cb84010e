"""``dlas-host profile`` (issue #17, item 1): each fused function of the benchmarked artifact timed on the agent,
aligned to the build manifest, with FLOP rates and the device's estimated peak."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dlas_agent.profile import summarize_calls
from dlas_agent.protocol import DeviceInfo, ProfileResult, TimingStats
from dlas_host.lower.manifest import LayerBuild
from dlas_host.profile import BUILTINS, build_rows, estimate_peak, layer_flops

ROOT = Path(__file__).resolve().parents[1]
FIRST_CONV_FLOPS = 2 * 1 * 64 * 3 * 3 * 3 * 32 * 32  # resnet18, CIFAR form: 3->64, 3x3, stride 1, 32x32 out


def _layer(name: str, function: str, shape: str, op: str = "conv2d", dtype: str = "float32") -> LayerBuild:
    return LayerBuild(layer=name, op=op, shape=shape, algorithm="spatial_pack", layout="NCHW", tile="NCHWc",
                      format="dense", block="", density=1.0, dtype_in=dtype, dtype_weight=dtype, dtype_acc=dtype,
                      kernel="k", schedule="default", function=function)


def _call(function: str, occurrence: int, ms: float, out: list[int]) -> dict:
    return {"function": function, "occurrence": occurrence, "median_ms": ms, "min_ms": ms,
            "args": [{"shape": [1], "dtype": "float32"}, {"shape": out, "dtype": "float32"}]}


# ------------------------------------------------------------------------------------------------ unit
def test_flops_from_shapes_in_any_output_layout():
    assert layer_flops("conv2d", "1x3x32x32 * 64x3x3x3", [1, 64, 32, 32]) == FIRST_CONV_FLOPS
    assert layer_flops("conv2d", "1x3x32x32 * 64x3x3x3", [1, 4, 32, 32, 16]) == FIRST_CONV_FLOPS  # NCHWc
    assert layer_flops("conv2d", "1x64x32x32 * 128x64x1x1", [1, 128, 16, 16]) == 2 * 128 * 64 * 16 * 16  # stride 2
    assert layer_flops("depthwise_conv2d", "1x32x8x8 * 32x1x3x3", [1, 32, 8, 8]) == 2 * 32 * 9 * 64  # C/groups = 1
    assert layer_flops("dense", "1x512 * 10x512", None) == 2 * 10 * 512
    assert layer_flops("conv2d", "1x3x32x32 * 10x3x3x3", [1, 1, 32, 32, 16]) is None  # padded K: unknown
    assert layer_flops("conv2d", "garbage", [1]) is None


def test_peak_estimate_states_its_assumption():
    info = DeviceInfo(cpu_flags=["fma", "avx2", "avx512f"], cores_physical=4, cores_logical=8, cpu_freq_mhz=2500.0)
    peak = estimate_peak(info, threads=2)
    assert peak.gflops == 2 * 2.5 * 64 and "2 cores x 2.50 GHz" in peak.assumption and "FMA units" in peak.assumption
    assert estimate_peak(info, threads=0).gflops == 4 * 2.5 * 64  # all physical cores, SMT siblings not counted
    arm = DeviceInfo(cpu_flags=["fp", "asimd"], cores_physical=4, cpu_freq_mhz=1500.0)
    assert estimate_peak(arm, threads=4).gflops == 4 * 1.5 * 16
    assert estimate_peak(DeviceInfo(cpu_flags=["sse2"], cores_physical=2, cpu_freq_mhz=1e3), 2).gflops is None
    assert estimate_peak(DeviceInfo(cpu_flags=["avx512f"], cores_physical=2), 2).gflops is None  # no clock
    assert estimate_peak(info, 2, "cuda").gflops is None


def test_calls_align_to_layers_by_function_and_occurrence():
    layers = [_layer("conv2d_0", "f_conv", "1x3x8x8 * 4x3x3x3"), _layer("conv2d_1", "f_conv", "1x3x8x8 * 4x3x3x3"),
              _layer("conv2d_2", "f_other", "1x4x8x8 * 4x4x1x1"), _layer("dense_0", "f_dense", "1x4 * 2x4", "dense")]
    calls = [_call("f_conv", 0, 1.0, [1, 4, 8, 8]), _call("add", 0, 0.25, [1, 4, 8, 8]),
             _call("f_conv", 1, 2.0, [1, 4, 8, 8]), _call("add", 1, 0.25, [1, 4, 8, 8]),
             _call("f_dense", 0, 0.5, [1, 2])]
    result = ProfileResult(ok=True, calls=calls, builtins=[{"function": "vm.builtin.alloc_tensor", "calls": 3,
                                                            "median_ms": 0.5}])
    rows, unmatched = build_rows(result, layers, estimate_peak(DeviceInfo(), 1))
    by_name = {r.layer or r.function: r for r in rows}
    assert [r.layer for r in rows if r.layer] == ["conv2d_0", "conv2d_1", "dense_0"] and unmatched == ["conv2d_2"]
    assert by_name["conv2d_1"].total_ms == 2.0 and by_name["conv2d_1"].flops == 2 * 4 * 64 * 27
    assert by_name["add"].calls == 2 and by_name["add"].total_ms == 0.5 and by_name["add"].layer == ""
    assert by_name["add"].mean_ms == 0.5 and by_name[BUILTINS].mean_ms == 0.5  # no mean_ms sent: the median
    assert by_name[BUILTINS].calls == 3 and by_name["dense_0"].gflops_per_s == pytest.approx(16 / 0.5 / 1e6)
    assert sum(r.percent for r in rows) == pytest.approx(100) and by_name["conv2d_0"].peak_percent is None


def test_agent_summarizes_call_sites_and_refuses_changing_runs():
    runs = [[("f", 0.001), ("vm.builtin.alloc", 1e-5), ("f", 0.003)], [("f", 0.002), ("vm.builtin.alloc", 3e-5),
                                                                        ("f", 0.004)]]
    calls, builtins = summarize_calls(runs, [[{"shape": [1], "dtype": "float32"}]] * 2)
    assert [(c["function"], c["occurrence"]) for c in calls] == [("f", 0), ("f", 1)]
    assert calls[0]["median_ms"] == pytest.approx(1.5) and calls[1]["min_ms"] == pytest.approx(3.0)
    assert calls[1]["mean_ms"] == pytest.approx(3.5) and calls[0]["args"] == [{"shape": [1], "dtype": "float32"}]
    assert builtins == [{"function": "vm.builtin.alloc", "calls": 1, "median_ms": pytest.approx(0.02),
                         "mean_ms": pytest.approx(0.02)}]
    with pytest.raises(ValueError, match="different functions"):
        summarize_calls([[("f", 1.0)], [("g", 1.0)]], [])


def test_profile_result_round_trips_with_stats():
    stats = TimingStats(n=1, median_ms=1.0, mean_ms=1.0, stdev_ms=0, mad_ms=0, iqr_ms=0, p90_ms=1, p99_ms=1,
                        min_ms=1, max_ms=1)
    back = ProfileResult.from_json(ProfileResult(ok=True, total=stats, plain=stats, repeat=1).to_json())
    assert isinstance(back.total, TimingStats) and back.plain.median_ms == 1.0


def test_agent_refuses_unregistered_libraries_and_bad_requests():
    from dlas_agent.protocol import ProfileRequest
    from dlas_agent.server import handle_profile

    reply = ProfileResult.from_json(handle_profile(ProfileRequest("x.so", "0" * 64, "i.npz").to_json()))
    assert not reply.ok and "refused" in reply.error  # no authenticated session, no MAC: never loaded
    assert "unknown keys" in ProfileResult.from_json(handle_profile('{"artifact": "x", "bogus": 1}')).error


# ------------------------------------------------------------------------------------------------ on the agent
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One data dir for the module: the artifact is compiled once, then profile, bench and CLI reuse it."""
    path = tmp_path_factory.mktemp("profile-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLAS_DATA_DIR", str(path))
        mp.setenv("DLAS_DEVICES", str(ROOT / "devices.yaml"))
        yield path


@pytest.fixture(scope="module")
def profiled(data_dir, local_device):
    from dlas_host.bench import RunOptions, bench_tvm
    from dlas_host.compile import BuildSpec
    from dlas_host.profile import profile_on_device
    from dlas_host.store import ResultStore

    spec = BuildSpec(model="resnet18", dataset="cifar10")
    profile = profile_on_device(spec, local_device, repeat=10)
    row = bench_tvm(spec, local_device, ResultStore(data_dir / "r.sqlite"), RunOptions(check=False))
    assert row.status == "ok", row.error
    return profile, row


def test_profile_has_each_layer_timed_and_adds_up_to_the_benchmark(profiled, local_device):
    from dlas_host.compile import BuildSpec, artifact_manifest, compile_artifact

    profile, row = profiled
    layers = artifact_manifest(compile_artifact(BuildSpec(model="resnet18", dataset="cifar10"), local_device))
    convs = [l.layer for l in layers if l.is_conv]
    assert len(convs) == 20 and not profile.unmatched_layers
    profiled_layers = [r.layer for r in profile.rows if r.layer]
    assert sorted(profiled_layers) == sorted(l.layer for l in layers)  # one row per conv/dense layer, none twice
    by_layer = {r.layer: r for r in profile.rows if r.layer}
    assert all(by_layer[l.layer].function == l.function for l in layers)
    assert all(r.ms_per_call > 0 and r.total_ms > 0 for r in profile.rows)
    assert by_layer["conv2d_0"].shape == "1x3x32x32 * 64x3x3x3" and by_layer["conv2d_0"].flops == FIRST_CONV_FLOPS
    assert by_layer["dense_0"].flops == 2 * 10 * 512
    assert all(r.gflops_per_s and r.gflops_per_s > 0 for r in by_layer.values())
    assert profile.peak.gflops and "FLOP/cycle" in profile.peak.assumption  # this x86 machine has AVX2/AVX-512
    # the functions' times add up to a run: within a sane factor of the benchmark's median. The per-call means
    # are compared: on a loaded machine a competitor stalls some kernel for a scheduler tick in most runs, which
    # every run's total (and so the benchmark's median) keeps but each call's median leaves out.
    assert 0.5 * row.median_ms <= profile.sum_mean_ms <= 2.0 * row.median_ms, (profile.sum_mean_ms, row.median_ms)
    assert 0 < profile.sum_ms <= profile.sum_mean_ms * (1 + 1e-9) and profile.sum_mean_ms <= 2 * profile.instrumented_ms
    assert sum(r.percent for r in profile.rows) == pytest.approx(100)


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    from dlas_host.cli_profile import profile_cmd

    root = typer.Typer()
    root.command("profile")(profile_cmd)
    root.command("noop")(lambda: None)  # two commands: typer keeps "profile" as a subcommand
    return root


def test_cli_prints_one_json_document_and_writes_out(profiled, app, data_dir, tmp_path):
    out_file = tmp_path / "p.json"
    result = CliRunner().invoke(app, ["profile", "--model", "resnet18", "--dataset", "cifar10", "--repeat", "3",
                                      "--json", "--out", str(out_file)])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    doc = json.loads(result.stdout)  # the whole of stdout is one document
    assert doc["model"] == "resnet18" and doc["repeat"] == 3 and json.loads(out_file.read_text()) == doc
    assert {r["layer"] for r in doc["rows"]} >= {f"conv2d_{i}" for i in range(20)} | {"dense_0"}
    table = CliRunner().invoke(app, ["profile", "--repeat", "2", "--order", "graph"])
    assert table.exit_code == 0 and "conv2d_0" in table.stdout and "FLOP/cycle" in table.stdout


@pytest.mark.parametrize("args, what", [(["--device", "nope"], "no device named 'nope'"),
                                        (["--model", "nope"], "unknown model 'nope'")])
def test_unknown_device_or_model_is_one_error_line(app, data_dir, args, what):
    result = CliRunner().invoke(app, ["profile", *args])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and what in lines[0], result.stderr


# ------------------------------------------------------------------------------------------------ vs onnxruntime
def test_onnxruntime_trace_is_summarised_per_node_after_warmup():
    from dlas_host.engines.onnx_runtime import summarize_trace

    def ev(name: str, dur: float, op: str = "Conv", shapes=([1, 3, 32, 32], [64, 3, 3, 3])):
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur,
                "args": {"op_name": op, "input_type_shape": [{"float": list(s)} for s in shapes],
                         "output_type_shape": [{"float": [1, 10]}]}}

    trace = [{"cat": "Session", "name": "model_run", "dur": 999}, ev("c0", 900), ev("fc", 50, "Gemm", ([1, 512],)),
             {"cat": "Node", "name": "c0_fence_before", "dur": 1}, ev("c0", 100), ev("fc", 10, "Gemm"),
             ev("c0", 300), ev("fc", 30, "Gemm")]
    nodes = summarize_trace(trace, skip=1)
    assert [n["node"] for n in nodes] == ["c0", "fc"] and nodes[0]["inputs"] == [[1, 3, 32, 32], [64, 3, 3, 3]]
    assert nodes[0]["ms"] == pytest.approx(0.2) and nodes[0]["runs"] == 2 and nodes[1]["ms"] == pytest.approx(0.02)
    assert nodes[1]["inputs"] == [[1, 512]] and nodes[1]["outputs"] == [[1, 10]]


def test_engine_kernels_align_to_layers_by_what_they_compute():
    """Matched by (input elements, weight elements): NCHWc-blocked inputs and reordered weights still match;
    equal layers in execution order; other nodes are summed apart."""
    from dlas_host.profile import Peak, align_engine

    layers = [_layer("conv2d_0", "f0", "1x3x32x32 * 64x3x3x3"), _layer("conv2d_1", "f1", "1x64x32x32 * 64x64x3x3"),
              _layer("conv2d_2", "f2", "1x64x32x32 * 64x64x3x3"), _layer("dense_0", "f3", "1x512 * 10x512", "dense")]
    result = ProfileResult(ok=True, calls=[_call("f0", 0, 1.0, [1, 64, 32, 32]), _call("f1", 0, 2.0, [1, 64, 32, 32]),
                                           _call("f2", 0, 3.0, [1, 64, 32, 32]), _call("f3", 0, 0.5, [1, 10])])
    rows, _ = build_rows(result, layers, Peak(None, ""))
    nodes = [{"node": "c0", "op": "Conv", "inputs": [[1, 3, 32, 32], [64, 3, 3, 3]], "ms": 0.9},
             {"node": "c1", "op": "Conv", "inputs": [[1, 8, 32, 32, 8], [8, 8, 3, 3, 8, 8]], "ms": 1.5},  # NCHWc
             {"node": "c2", "op": "FusedConv", "inputs": [[1, 8, 32, 32, 8], [8, 8, 3, 3, 8, 8], [64]], "ms": 1.6},
             {"node": "add", "op": "Add", "inputs": [[1, 64, 32, 32], [1, 64, 32, 32]], "ms": 0.3},
             {"node": "fc", "op": "Gemm", "inputs": [[1, 512], [10]], "outputs": [[1, 10]], "ms": 0.1},  # prepacked
             {"node": "stray", "op": "Conv", "inputs": [[1, 7], [7, 7]], "ms": 0.05}]
    summary = align_engine(rows, nodes, "onnxruntime")
    got = {r.layer: r.compare_ms for r in rows}
    assert got == {"conv2d_0": 0.9, "conv2d_1": 1.5, "conv2d_2": 1.6, "dense_0": 0.1}
    assert summary["layers_ms"] == pytest.approx(4.1) and summary["other_ms"] == pytest.approx(0.35)
    assert summary["tvm_same_layers_ms"] == pytest.approx(6.5) and summary["unmatched_nodes"] == ["stray"]


def test_profile_compares_onnxruntime_layer_by_layer(profiled, app, data_dir, tmp_path):
    """The real onnxruntime profiler on the same model: every TVM conv/dense layer gets its kernel time."""
    result = CliRunner().invoke(app, ["profile", "--repeat", "3", "--compare", "onnxruntime", "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    doc = json.loads(result.stdout)
    layers = [r for r in doc["rows"] if r["layer"]]
    assert len(layers) == 21 and all(r["compare_ms"] and r["compare_ms"] > 0 for r in layers)
    c = doc["compare"]
    assert c["engine"] == "onnxruntime" and not c["unmatched_nodes"]
    assert c["layers_ms"] == pytest.approx(sum(r["compare_ms"] for r in layers))
    assert 0 < c["layers_ms"] <= c["total_ms"] and c["tvm_same_layers_ms"] > 0
    table = CliRunner().invoke(app, ["profile", "--repeat", "2", "--compare", "onnxruntime"])
    assert table.exit_code == 0 and "onnxruntime ms" in table.stdout and "other nodes" in table.stdout
    board = tmp_path / "board.yaml"
    board.write_text("devices:\n  rpi4:\n    arch: aarch64\n    target: {kind: llvm, mtriple: aarch64-linux-gnu}\n"
                     "    connection: {type: ssh, host: 10.9.8.7, user: pi}\n")
    remote = CliRunner().invoke(app, ["profile", "--compare", "onnxruntime", "--device", "rpi4",
                                      "--devices", str(board)])
    assert remote.exit_code == 1 and "local device only" in remote.stderr
