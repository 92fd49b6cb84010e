"""Project kernels vs torch/numpy: every algorithm x layout x dtype on small shapes, plus whole models.

Run: PYTHONPATH=host:agent python -m pytest tests/test_kernels.py -q
"""

from __future__ import annotations

import sys
import types

import ml_dtypes
import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from dlas_host.devices import build_target
from dlas_host.lower import LoweringPolicy, ManifestError, PolicyError, inject_sparsity, lower

CPU = build_target({"kind": "llvm", "mcpu": "native", "num-cores": 2})  # this machine's SIMD width
TOL = {"float32": 1e-4, "float16": 3e-2, "bfloat16": 1.5e-1, "int8": 0}
NP = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "int8": np.int8}

# (C, H, W, O, k, stride, pad(t,l,b,r), dilation, groups)
CONV_CASES = {
    "3x3_nonsquare": (8, 10, 13, 16, 3, 1, (1, 1, 1, 1), 1, 1),
    "stride2_asympad": (12, 11, 9, 24, 3, 2, (1, 0, 2, 1), 1, 1),
    "dilated_1x1ch": (16, 9, 9, 32, 3, 1, (2, 2, 2, 2), 2, 1),
    "grouped": (8, 8, 10, 16, 3, 1, (1, 1, 1, 1), 1, 2),
    "stem_7x7": (3, 20, 18, 16, 7, 2, (3, 3, 3, 3), 1, 1),
}
DW_CASES = {
    "dw_s1": (16, 10, 12, 16, 3, 1, (1, 1, 1, 1), 1, 16),
    "dw_s2": (32, 11, 9, 32, 3, 2, (1, 1, 1, 1), 1, 32),
}
COMBOS = [("direct", "NCHW"), ("direct", "NHWC"), ("gemm", "NCHW"), ("gemm", "NHWC"),
          ("spatial_pack", "NCHW"), ("spatial_pack", "NCHWc")]
DTYPES = ["float32", "float16", "bfloat16", "int8"]


def _rand(shape, dtype, rng):
    if dtype == "int8":
        return rng.integers(-128, 128, size=shape).astype(np.int8)
    return (rng.standard_normal(shape) * 0.5).astype(np.float32).astype(NP[dtype])


def conv_module(x_shape, w, b, stride, pad, dil, groups, dtype, layout="NCHW"):
    """conv2d (+ bias + relu for floats; int8 -> int32 for int8) as a Relax module."""
    out_dtype = "int32" if dtype == "int8" else dtype
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=stride, padding=pad, dilation=dil,
                                           groups=groups, out_dtype=out_dtype))
            if dtype != "int8":
                y = bb.emit(relax.op.add(y, relax.const(b.reshape(1, -1, 1, 1))))
                y = bb.emit(relax.op.nn.relu(y))
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    return bb.get()


def run_module(mod, policy, *inputs, target=CPU):
    log: list = []
    lowered = lower(mod, target, policy, dispatcher_out=log)
    ex = tvm.compile(lowered, target=target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(i) for i in inputs])
    if not hasattr(out, "numpy"):  # a tuple of outputs (torch-imported models)
        out = out[0]
    return out.numpy(), log


def conv_ref(x, w, b, stride, pad, dil, groups, dtype):
    xt = torch.from_numpy(x.astype(np.float64))
    wt = torch.from_numpy(w.astype(np.float64))
    xt = torch.nn.functional.pad(xt, (pad[1], pad[3], pad[0], pad[2]))
    y = torch.nn.functional.conv2d(xt, wt, stride=stride, dilation=dil, groups=groups).numpy()
    if dtype == "int8":
        return y.astype(np.int64)
    return np.maximum(y + b.astype(np.float64).reshape(1, -1, 1, 1), 0)


def check_conv(case, algo, layout, dtype, dw_algo=None):
    c, h, w_, o, k, s, pad, dil, groups = case
    rng = np.random.default_rng(0)
    x = _rand((1, c, h, w_), dtype, rng)
    w = _rand((o, c // groups, k, k), dtype, rng)
    b = _rand((o,), "float32" if dtype == "int8" else dtype, rng)
    mod = conv_module(x.shape, w, b, (s, s), pad, (dil, dil), groups, dtype)
    policy = LoweringPolicy(algorithm=algo, layout=layout, depthwise_algorithm=dw_algo)
    out, log = run_module(mod, policy, x)
    ref = conv_ref(x, w, b, (s, s), pad, (dil, dil), groups, dtype)
    assert out.shape == ref.shape
    if dtype == "int8":
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out.astype(np.int64), ref)
    else:
        scale = max(1.0, float(np.abs(ref).max()))
        err = np.abs(out.astype(np.float64) - ref).max() / scale
        assert err <= TOL[dtype], f"{algo}/{layout}/{dtype}: rel err {err}"
    return log


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algo,layout", COMBOS)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv(case, algo, layout, dtype):
    log = check_conv(CONV_CASES[case], algo, layout, dtype)
    # grouped (non-depthwise) convs have no packed kernel: the log says what ran (direct), not what was asked
    assert log and log[0][1] == ("direct" if algo == "spatial_pack" and CONV_CASES[case][-1] > 1 else algo)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dw_algo,layout", [("direct", "NCHW"), ("direct", "NHWC"), ("spatial_pack", "NCHW"),
                                            ("gemm", "NCHW")])
@pytest.mark.parametrize("case", list(DW_CASES))
def test_depthwise(case, dw_algo, layout, dtype):
    algo = "spatial_pack" if layout == "NCHW" else "direct"
    log = check_conv(DW_CASES[case], algo, layout, dtype, dw_algo=dw_algo)
    assert log[0][1] == dw_algo


def dense_module(x_shape, w_kn, b, dtype):
    out_dtype = "int32" if dtype == "int8" else dtype
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(w_kn), out_dtype=out_dtype))
            if dtype != "int8":
                y = bb.emit(relax.op.add(y, relax.const(b)))
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    return bb.get()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(1, 40, 24), (3, 37, 32)])
def test_dense(m, k, n, dtype):
    rng = np.random.default_rng(1)
    x, w = _rand((m, k), dtype, rng), _rand((k, n), dtype, rng)
    b = _rand((n,), "float32" if dtype == "int8" else dtype, rng)
    out, _ = run_module(dense_module(x.shape, w, b, dtype), LoweringPolicy(algorithm="direct"), x)
    ref = x.astype(np.float64) @ w.astype(np.float64)
    if dtype == "int8":
        np.testing.assert_array_equal(out.astype(np.int64), ref.astype(np.int64))
    else:
        ref = ref + b.astype(np.float64)
        err = np.abs(out.astype(np.float64) - ref).max() / max(1.0, np.abs(ref).max())
        assert err <= TOL[dtype]


def test_int8_uses_vnni():
    """The int8 spatial-pack conv and dense are tensorized with vpdpbusd on this CPU target."""
    rng = np.random.default_rng(2)
    w = _rand((32, 16, 3, 3), "int8", rng)
    mod = conv_module((1, 16, 8, 8), w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, "int8")
    lowered = lower(mod, CPU, LoweringPolicy(algorithm="spatial_pack"))
    assert "vpdpbusd" in lowered.script()


def test_policy_errors():
    mod = conv_module((1, 8, 8, 8), np.ones((8, 8, 3, 3), np.float32), np.zeros(8, np.float32),
                      (1, 1), (1, 1, 1, 1), (1, 1), 1, "float32")
    for algo, layout, dw in [("gemm", "NCHWc", None), ("direct", "NCHWc", None), ("spatial_pack", "NHWC", None),
                             ("direct", "NHWC", "spatial_pack")]:
        with pytest.raises(PolicyError, match="supported combinations"):
            lower(mod, CPU, LoweringPolicy(algorithm=algo, layout=layout, depthwise_algorithm=dw))
    # the default depthwise choice (direct, NCHW between kernels) is valid inside an NCHWc model
    lower(mod, CPU, LoweringPolicy(algorithm="spatial_pack", layout="NCHWc"))


def test_overrides_pick_algorithm_per_layer():
    rng = np.random.default_rng(3)
    w = _rand((16, 8, 3, 3), "float32", rng)
    mod = conv_module((1, 8, 8, 8), w, np.zeros(16, np.float32), (1, 1), (1, 1, 1, 1), (1, 1), 1, "float32")
    log: list = []
    lower(mod, CPU, LoweringPolicy(algorithm="direct", overrides=(("conv2d_0", "gemm"),)), dispatcher_out=log)
    assert log == [("conv2d_0", "gemm")]


def test_inject_sparsity():
    w = np.ones((64, 32, 3, 3), np.float32)
    s = inject_sparsity(w, 0.75)
    assert abs((s == 0).mean() - 0.75) < 1e-3
    np.testing.assert_array_equal(s, inject_sparsity(w, 0.75))  # seeded
    assert inject_sparsity(w, 0.0) is w


def test_sparse_hook(monkeypatch):
    w = np.ones((16, 8, 3, 3), np.float32)
    mod = conv_module((1, 8, 8, 8), w, np.zeros(16, np.float32), (1, 1), (1, 1, 1, 1), (1, 1), 1, "float32")
    policy = LoweringPolicy(sparse_format="csr", sparsity=0.5, sparse_min_sparsity=0.0)
    import dlas_host.lower as lower_pkg

    monkeypatch.setitem(sys.modules, "dlas_host.lower.sparse", None)
    monkeypatch.delattr(lower_pkg, "sparse", raising=False)  # an earlier import leaves it on the package
    with pytest.raises(PolicyError, match="sparse formats need dlas_host.lower.sparse"):
        lower(mod, CPU, policy)
    seen = {}

    def emit_sparse_conv2d(bb, data, weight_np, **kw):
        seen.update(kw, zeros=float((weight_np == 0).mean()))
        # must return legalized code (a high-level conv2d here would be legalized again, recursively)
        return bb.call_te(lambda d, w: tvm.topi.nn.conv2d_nchw(d, w, kw["strides"], kw["padding"][:2], kw["dilation"]),
                          data, relax.const(weight_np))

    fake = types.ModuleType("dlas_host.lower.sparse")
    fake.emit_sparse_conv2d = emit_sparse_conv2d
    fake.emit_sparse_dense = None
    monkeypatch.setitem(sys.modules, "dlas_host.lower.sparse", fake)
    monkeypatch.setattr(lower_pkg, "sparse", fake, raising=False)
    # the fake emits a dense conv where csr was asked: the build manifest catches it, the build fails
    with pytest.raises(ManifestError, match="sparse enough for csr but built dense: conv2d_0"):
        lower(mod, CPU, policy)
    assert seen["fmt"] == "csr" and seen["block"] == policy.bsr_block and abs(seen["zeros"] - 0.5) < 0.01
    # Under the default threshold a 50 %-sparse layer stays on dense kernels (sparse only pays past ~70 %).
    seen.clear()
    lower(mod, CPU, LoweringPolicy(sparse_format="csr", sparsity=0.5))
    assert not seen
    with pytest.raises(ManifestError):  # the fake's dense conv again
        lower(mod, CPU, LoweringPolicy(sparse_format="csr", sparsity=0.9))
    assert abs(seen["zeros"] - 0.9) < 0.01


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_whole_model_cifar(name):
    import tvm.relax.frontend.torch  # noqa: F401

    from dlas_host import zoo

    model = zoo.fold_batchnorm(zoo.create(name, "cifar10"))
    x = zoo.example_input("cifar10")
    ep = torch.export.export(model, (x,))
    mod = relax.frontend.torch.from_exported_program(ep, keep_params_as_input=False)
    out, log = run_module(mod, LoweringPolicy(algorithm="spatial_pack"), x.numpy())
    ref = model(x).detach().numpy()
    assert np.abs(out - ref).max() < 1e-4
    assert all(algo != "stock" for _, algo in log)


def test_cuda_builds():
    """CUDA: kernels + dlight rules produce verified device code (no GPU needed to build)."""
    from dlas_host.toolchain import ToolchainError, prepare_cuda_build

    try:
        prepare_cuda_build()  # nvcc device code, as the compile path builds it (stub libcuda without a GPU)
    except ToolchainError as exc:
        pytest.skip(f"no CUDA toolkit here: {exc}")
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_87"}, host={"kind": "llvm"})
    rng = np.random.default_rng(4)
    w = _rand((16, 8, 3, 3), "float32", rng)
    mod = conv_module((1, 8, 10, 12), w, np.zeros(16, np.float32), (1, 1), (1, 1, 1, 1), (1, 1), 1, "float32")
    from dlas_host.lower import schedule_cpu

    for algo, layout in (("direct", "NCHW"), ("direct", "NHWC"), ("gemm", "NCHW"), ("spatial_pack", "NCHW")):
        schedule_cpu.UNFUSED_TAILS.clear()
        lowered = lower(mod, target, LoweringPolicy(algorithm=algo, layout=layout))
        with target:  # once tvm.support.nvcc is imported, its compile callback reads the arch from here
            ex = tvm.compile(lowered, target=target)
        cuda_src = ex.mod.imports[0].imports[0].inspect_source()
        assert "__shared__" in cuda_src and "threadIdx.x" in cuda_src
        assert not schedule_cpu.UNFUSED_TAILS  # our tiled schedule, not dlight's fallback


def test_arm_float_compiles():
    """Arm NEON: 4-lane vectors, compile-only (cross target, nothing exported)."""
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    rng = np.random.default_rng(6)
    w = _rand((16, 8, 3, 3), "float32", rng)
    mod = conv_module((1, 8, 8, 8), w, np.zeros(16, np.float32), (1, 1), (1, 1, 1, 1), (1, 1), 1, "float32")
    for algo in ("direct", "gemm", "spatial_pack"):
        assert tvm.compile(lower(mod, target, LoweringPolicy(algorithm=algo)), target=target) is not None


def test_arm_sdot_compiles():
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]})
    rng = np.random.default_rng(5)
    w = _rand((16, 8, 3, 3), "int8", rng)
    mod = conv_module((1, 8, 8, 8), w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, "int8")
    lowered = lower(mod, target, LoweringPolicy(algorithm="spatial_pack"))
    assert "sdot" in lowered.script()
    ex = tvm.compile(lowered, target=target)
    assert ex is not None
