"""Build manifests: every stored row says what was built, and a build that contradicts its request fails.

The property test draws random build requests across the DLAS dimensions (model, quantization, algorithm,
layout, sparse format and block, sparsity, threshold, per-layer overrides), lowers each, and checks the
manifest against the request *and* against the lowered module itself (layer count from the Relax graph, the
kernel annotation in the function the manifest names), so neither side can drift silently.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace

import numpy as np
import pytest
from tvm import relax

from conftest import tiny_mobilenet, tiny_resnet
from dlas_host import compile as build
from dlas_host.lower import LoweringPolicy, ManifestError, PolicyError, lower_with_manifest, registry
from dlas_host.lower import manifest as mf
from dlas_host.lower.policy import parse_block

N_SPECS = int(os.environ.get("DLAS_PROPERTY_SPECS", "200"))
QUANT = ("float32", "float16", "bfloat16", "int8")
MODELS = {"tiny_resnet": tiny_resnet, "tiny_mobilenet": tiny_mobilenet}
_modules: dict[tuple[str, str], tuple[relax.Expr, int, int]] = {}


def _module(model: str, quant: str, target) -> tuple[object, int, int]:
    """(quantized Relax module, conv count, dense count) of a tiny model, imported once per (model, dtype)."""
    key = (model, quant)
    if key not in _modules:
        net = MODELS[model]().eval()
        x = [np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)]
        mod = build.import_relax(net, x)
        ops = [b.value.op.name for blk in mod["main"].body.blocks for b in blk.bindings
               if isinstance(b.value, relax.Call) and hasattr(b.value.op, "name")]
        spec = build.BuildSpec(model="resnet18", dataset="cifar10", quantize=None if quant == "float32" else quant,
                               calib_samples=2)
        if spec.quantize:
            mod = build.quantize_for_build(net, mod, spec)
        _modules[key] = (mod, ops.count("relax.nn.conv2d"), ops.count("relax.matmul"))
    return _modules[key]


def random_request(rng: random.Random) -> tuple[str, str, LoweringPolicy]:
    model, quant = rng.choice(sorted(MODELS)), rng.choice(QUANT)
    algorithm = rng.choice(registry.algorithms())
    layout = rng.choice(registry.conv_layouts(algorithm))
    between = "NHWC" if layout == "NHWC" else "NCHW"
    if algorithm == registry.STOCK:
        return model, quant, LoweringPolicy(algorithm=algorithm, layout=layout)
    fmt = rng.choice(("dense", "dense", "csr", "bsr", "coo"))
    dw = rng.choice([None] + [a for a in registry.algorithms() if between in registry.conv_layouts(a)])
    overrides = ()
    if rng.random() < 0.3:
        other = rng.choice([a for a in registry.algorithms() if between in registry.conv_layouts(a)])
        overrides = ((f"conv2d_{rng.randrange(4)}", other),)
    return model, quant, LoweringPolicy(
        algorithm=algorithm, layout=layout, sparse_format=fmt, sparsity=rng.choice((0.0, 0.5, 0.9)),
        bsr_block=rng.choice(((4, 1), (8, 1), (1, 8), (2, 2))), sparse_min_sparsity=rng.choice((0.7, 0.0)),
        depthwise_algorithm=dw, overrides=overrides)


def assert_manifest_tells_the_truth(mod, lowered, quant: str, policy: LoweringPolicy, n_conv: int, n_dense: int):
    layers = lowered.manifest
    # every conv / matmul of the graph is one manifest layer (nothing dropped, nothing invented)
    assert sum(l.is_conv for l in layers) == n_conv and sum(not l.is_conv for l in layers) == n_dense
    labels = mf.labels(layers, policy.layout)
    assert labels["quantization"] == quant
    assert 0.0 <= labels["sparsity"] <= 1.0  # the zeros as stored, not the request
    if policy.sparsity == 0.0:
        assert labels["sparsity"] < 0.05
    for l in layers:
        func = lowered.mod[l.function]  # the function the manifest names exists and holds that kernel
        if l.format != "dense":
            assert str(func.attrs["dlas_kernel"]) == l.kernel and str(func.attrs["dlas_format"]) == l.format
        elif l.algorithm != registry.STOCK:
            assert f'"dlas_sched": "{l.kernel}"' in func.script()
        assert l.dtype_weight == quant
        if quant == "int8" and l.algorithm != registry.STOCK:
            assert l.dtype_acc == "int32"
        if l.format == "bsr":
            assert l.block == f"{policy.bsr_block[0]}x{policy.bsr_block[1]}"
        if policy.sparse_format == "dense":
            assert l.format == "dense"
        elif l.format == "dense":  # a layer left dense says why, or is below the threshold
            assert l.note or l.op == "depthwise_conv2d" or 1 - l.density < policy.sparse_min_sparsity, l
        else:
            assert l.format == policy.sparse_format and 1 - l.density >= policy.sparse_min_sparsity - 1e-6
        if l.format == "dense" and l.is_conv and l.layer not in dict(policy.overrides):
            if policy.is_stock:
                assert l.algorithm == registry.STOCK
            elif l.op == "conv2d":
                assert l.algorithm == policy.algorithm
            elif l.op == "depthwise_conv2d":
                assert l.algorithm == (policy.depthwise_algorithm or policy.algorithm)
        if l.is_conv and l.algorithm not in (registry.STOCK, "sparse"):
            assert l.layout == ("NHWC" if policy.layout == "NHWC" else "NCHW")
    for name, algo in policy.overrides:
        hit = [l for l in layers if l.layer == name and l.format == "dense" and l.op != "grouped_conv2d"]
        assert all(l.algorithm == algo for l in hit)


def check_random_requests(target, seed: int, n: int) -> set[tuple[str, str]]:
    rng = random.Random(seed)
    seen = set()
    for _ in range(n):
        model, quant, policy = random_request(rng)
        mod, n_conv, n_dense = _module(model, quant, target)
        lowered = lower_with_manifest(mod, target, policy, schedule=False, quantize=quant)
        assert_manifest_tells_the_truth(mod, lowered, quant, policy, n_conv, n_dense)
        seen |= {(l.kernel, l.dtype_weight) for l in lowered.manifest}
    return seen


def test_random_requests_build_what_they_ask(local_device) -> None:
    """>= 200 random requests (more with DLAS_PROPERTY_SPECS): each manifest matches its request and its IR."""
    seen = check_random_requests(local_device.tvm_target(), 14, N_SPECS)
    kernels = {k for k, _ in seen}
    # the draw really covered the registry: every CPU kernel and both sparse kernels appeared
    assert {"direct_nchw", "direct_nhwc", "gemm_nchw", "gemm_nhwc", "spatial_pack", "dw_nchw", "dw_nchwc",
            "conv_int8", "sparse_conv2d", "sparse_dense", "dense"} <= kernels, kernels


@pytest.mark.slow
@pytest.mark.skipif("DLAS_PROPERTY_SPECS" not in os.environ,
                    reason="a longer property run: set DLAS_PROPERTY_SPECS=N (N more requests, another seed)")
def test_many_more_random_requests(local_device) -> None:
    check_random_requests(local_device.tvm_target(), 1414, N_SPECS)


def test_a_kernel_that_emits_something_else_cannot_be_stored(local_device, store, monkeypatch) -> None:
    """The old `_emit_conv` built spatial pack for any algorithm it had no branch for: now that is an error row."""
    from dlas_host.bench import RunOptions, bench_tvm

    gemm = registry.get("gemm_nchw")
    monkeypatch.setitem(registry._KERNELS, "gemm_nchw", replace(gemm, emit=registry.get("spatial_pack").emit))
    spec = build.BuildSpec(model="resnet18", dataset="cifar10", policy=LoweringPolicy(algorithm="gemm"))
    with pytest.raises(ManifestError, match="algorithm differs from the policy: conv2d_0 \\(spatial_pack, asked gemm\\)"):
        lower_with_manifest(*build.relax_module_for(spec)[1:], local_device.tvm_target(), spec.policy)
    row = bench_tvm(spec, local_device, store, RunOptions(repeat=1, number=1, check=False))
    assert row.status == "error" and "build manifest contradicts the request" in row.error
    assert "\n" not in row.error and store.query()[0]["status"] == "error"


def test_pruned_and_quantized_is_really_quantized(local_device) -> None:
    """A pruned model built as int8 used to be float32 with the same sha256 as the float32 build."""
    from dlas_host.sweep.runner import make_pruned_model

    model_id = make_pruned_model("resnet18", "cifar10", "unstructured:layer:l1:0.5")
    policy = LoweringPolicy()
    arts = {q: build.compile_artifact(build.BuildSpec(model="resnet18", dataset="cifar10", optimized_model=model_id,
                                                      quantize=q, policy=policy), local_device)
            for q in (None, "int8", "float16")}
    assert len({a.sha256 for a in arts.values()}) == 3
    for q, art in arts.items():
        layers = build.artifact_manifest(art)
        assert {l.dtype_weight for l in layers} == {q or "float32"}
        assert all(0.45 < 1 - l.density < 0.55 for l in layers)  # the pruned weights are what was built


def test_rows_are_labelled_with_what_was_built(local_device, store) -> None:
    from dlas_host.bench import RunOptions, bench_tvm

    spec = build.BuildSpec(model="resnet18", dataset="cifar10",
                           policy=LoweringPolicy(sparse_format="bsr", sparsity=0.5, bsr_block=(8, 1)))
    row = bench_tvm(spec, local_device, store, RunOptions(repeat=2, number=1, check=False))
    assert row.status == "ok", row.error
    stored = store.query()[0]
    # 50 % zeros is below the 70 % threshold: nothing is BSR, and the row says dense, not what was asked
    assert stored["sparse_format"] == "dense" and stored["sparse_block"] == ""
    assert stored["extra"]["asked"]["sparse_format"] == "bsr" and stored["extra"]["asked"]["sparse_block"] == "8x1"
    assert stored["built"] == "conv: 20 spatial_pack float32; dense: 1 gemm float32"
    assert len(stored["manifest"]) == 21 and stored["manifest"][0]["kernel"] == "spatial_pack"
    spec = replace(spec, policy=replace(spec.policy, sparsity=0.9))
    row = bench_tvm(spec, local_device, store, RunOptions(repeat=2, number=1, check=False))
    assert (row.sparse_format, row.sparse_block, row.quantization) == ("bsr", "8x1", "float32")
    assert row.built.startswith("conv: 20 bsr 8x1 float32")


def test_quantized_baselines_are_skipped_not_mislabelled(local_device, store) -> None:
    from dlas_host.bench import bench_engine

    row = bench_engine("torch", build.BuildSpec(model="resnet18", dataset="cifar10", quantize="int8"), local_device,
                       store)
    assert row.status == "skipped" and "float32 model only" in row.error


def test_unknown_algorithm_is_one_line_listing_the_registered(tmp_path) -> None:
    with pytest.raises(PolicyError, match="unknown algorithm 'winograd'; supported: direct, gemm, spatial_pack, stock"):
        LoweringPolicy(algorithm="winograd").validate()
    from sweeptools import cli

    out = cli("compile", "--model", "resnet18", "--algorithm", "winograd")
    assert out.returncode == 1 and "unknown algorithm 'winograd'" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(ValueError, match="bad BSR block"):
        parse_block("4x")


def test_a_new_algorithm_is_one_registration(local_device, monkeypatch) -> None:
    """What `docs/adding-a-kernel.md` promises: register a kernel and every layer of the stack knows it."""
    direct = registry.get("direct_nchw")
    monkeypatch.setitem(registry._KERNELS, "direct_copy", replace(direct, name="direct_copy", algorithm="direct2"))
    assert "direct2" in registry.algorithms() and registry.conv_layouts("direct2") == ("NCHW",)
    policy = LoweringPolicy(algorithm="direct2", depthwise_algorithm=None).validate()
    mod, _, _ = _module("tiny_resnet", "float32", local_device.tvm_target())
    # the copy's emit still makes direct_nchw blocks, so the manifest exposes the mismatch: the kernel
    # registered for an algorithm must be the one its emit produces
    with pytest.raises(ManifestError, match="asked direct2"):
        lower_with_manifest(mod, local_device.tvm_target(), policy, schedule=False)


def test_calibration_samples_are_honoured(monkeypatch) -> None:
    from dlas_host.optimize import calibrate as cal_mod

    seen = []
    real = cal_mod.calibrate
    monkeypatch.setattr(cal_mod, "calibrate", lambda model, batches, **kw: seen.append(len(batches)) or real(model, batches, **kw))
    net = tiny_resnet().eval()
    mod = build.import_relax(net, [np.zeros((1, 3, 32, 32), np.float32)])
    for n in (3, 5):
        build.quantize_for_build(net, mod, build.BuildSpec(model="resnet18", dataset="cifar10", quantize="int8",
                                                           calib_samples=n))
    assert seen == [3, 5]
    a = build.BuildSpec(model="resnet18", dataset="cifar10", quantize="int8", calib_samples=3)
    assert a.describe() != replace(a, calib_samples=5).describe()
    f = build.BuildSpec(model="resnet18", dataset="cifar10", calib_samples=3)
    assert f.describe() == replace(f, calib_samples=5).describe()  # float32 builds do not calibrate


def test_sweeps_carry_blocks_and_every_prune_spec(registry, tmp_path, monkeypatch) -> None:
    from dlas_host.sweep.runner import build_spec, make_pruned_model
    from dlas_host.sweep.spec import expand, parse_spec
    from test_datasets import _write_cifar

    spec = parse_spec("""
name: blocks
grid:
  sparse_formats: [bsr, csr]
  bsr_blocks: ["4x1", "8x1"]
  pruning: ["block:layer:l1:0.9:block=4x1", "unstructured:global:taylor:0.5"]
run: {calib_samples: 16}
""")
    jobs = expand(spec, registry)
    # bsr x 2 blocks + csr (block does not apply) for each of 2 prunings
    assert len(jobs) == 6 and len({j.key for j in jobs}) == 6
    bsr8 = [j for j in jobs if j.bsr_block == "8x1"][0]
    assert "bsr8x1" in bsr8.label() and build_spec(bsr8, {}).policy.bsr_block == (8, 1)
    assert build_spec(bsr8, {}, 16).calib_samples == 16
    monkeypatch.delenv("DLAS_CIFAR10_DIR", raising=False)
    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(Exception, match="cifar10") as err:
        make_pruned_model("resnet18", "cifar10", "unstructured:global:taylor:0.5")
    assert "\n" not in str(err.value)
    monkeypatch.setenv("DLAS_CIFAR10_DIR", str(_write_cifar(tmp_path / "cifar", n=40)))
    model_id = make_pruned_model("resnet18", "cifar10", "unstructured:global:taylor:0.5")
    from dlas_host.optimize import modelstore

    assert modelstore.load(model_id).meta["prune"]["score"] == "taylor"


def test_tune_takes_the_bsr_block() -> None:
    from sweeptools import cli

    out = cli("tune", "--help")
    assert "--bsr-block" in out.stdout


def test_schedule_failures_reach_the_row(local_device, store, monkeypatch) -> None:
    """A best-effort schedule step that fails is a warning on the stored row, not a silent 'ok'."""
    from dlas_host.bench import RunOptions, bench_tvm
    from dlas_host.lower import schedule_cpu

    def broken(sch, block, lanes):
        raise RuntimeError("injected")

    monkeypatch.setattr(schedule_cpu, "schedule_block_generic", broken)
    spec = build.BuildSpec(model="resnet18", dataset="cifar10", policy=LoweringPolicy(algorithm="direct"), seed=7)
    row = bench_tvm(spec, local_device, store, RunOptions(repeat=2, number=1, check=False))
    stored = store.query()[0]["warnings"]
    assert row.status == "ok" and any("schedule: " in w and "injected" in w for w in stored), stored
