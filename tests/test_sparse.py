"""Sparse CSR/BSR/COO conv2d and dense kernels against torch/numpy dense results.

Every case is built as a Relax function through a BlockBuilder, compiled with tvm.compile and run
on the VirtualMachine. Shapes are small so the whole file runs in well under two minutes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from dlas_host.lower.sparse import conv_weight_matrix, emit_sparse_conv2d, emit_sparse_dense, sparse_conv_weight
from dlas_host.lower.sparse_formats import (
    SparseWeight,
    coo_to_csr,
    prune_blocks,
    prune_random,
    to_bsr,
    to_coo,
    to_csr,
)

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})
FORMATS = [("csr", (1, 1)), ("coo", (1, 1)), ("bsr", (1, 8)), ("bsr", (4, 4)), ("bsr", (4, 1))]


def run_relax(x: np.ndarray, emit, dtype: str) -> np.ndarray:
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, dtype))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = emit(bb, xv)
            assert y is not None
            y = bb.emit_output(y)
        bb.emit_func_output(y)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), TARGET), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def make_weight(rng, shape, sparsity: float, dtype: str, zero_row: bool = True) -> np.ndarray:
    if dtype == "int8":
        w = rng.integers(-8, 8, size=shape).astype(np.int8)
    else:
        w = rng.standard_normal(shape).astype(np.float32)
    w = prune_random(w, sparsity, seed=int(sparsity * 100))
    if zero_row:
        w[1] = 0  # one output channel with no nonzeros at all
    return w


def make_input(rng, shape, dtype: str) -> np.ndarray:
    if dtype == "int8":
        return rng.integers(-8, 8, size=shape).astype(np.int8)
    return rng.standard_normal(shape).astype(np.float32)


def conv_ref(x, w, stride, pad, dilation, groups, layout) -> np.ndarray:
    xt = torch.tensor(x.astype(np.float64))
    if layout == "NHWC":
        xt = xt.permute(0, 3, 1, 2)
    pt, pl, pb, pr = pad
    xt = torch.nn.functional.pad(xt, (pl, pr, pt, pb))
    y = torch.nn.functional.conv2d(xt, torch.tensor(w.astype(np.float64)), stride=stride,
                                   dilation=dilation, groups=groups)
    if layout == "NHWC":
        y = y.permute(0, 2, 3, 1)
    return y.numpy()


def check_conv(x, w, fmt, block, *, stride=1, pad=(1, 1, 1, 1), dilation=1, groups=1, layout="NCHW",
               dtype="float32", out_dtype="float32"):
    def emit(bb, xv):
        return emit_sparse_conv2d(bb, xv, w, strides=(stride, stride), padding=pad,
                                  dilation=(dilation, dilation), groups=groups, data_layout=layout,
                                  out_dtype=out_dtype, fmt=fmt, block=block, target=TARGET)

    got = run_relax(x, emit, dtype)
    ref = conv_ref(x, w, stride, pad, dilation, groups, layout)
    assert got.dtype == np.dtype(out_dtype)
    assert got.shape == ref.shape
    if out_dtype == "int32":
        np.testing.assert_array_equal(got, ref.astype(np.int64))
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


# --- formats -----------------------------------------------------------------------------------


def test_formats_roundtrip():
    rng = np.random.default_rng(0)
    w = prune_random(rng.standard_normal((10, 13)).astype(np.float32), 0.7)
    w[3] = 0
    for sw in (to_csr(w), to_bsr(w, (1, 8)), to_bsr(w, (4, 4)), to_bsr(w, (3, 5))):
        np.testing.assert_array_equal(sw.to_dense(), w)
        assert sw.indptr[-1] == sw.nnz_blocks
    csr = to_csr(w)
    assert csr.nnz == np.count_nonzero(w) and csr.true_nnz == csr.nnz
    assert csr.density == pytest.approx(np.count_nonzero(w) / w.size)
    assert csr.bytes == csr.data.nbytes + csr.indices.nbytes + csr.indptr.nbytes
    assert to_bsr(w, (4, 4)).nnz >= csr.nnz  # block fill-in
    assert set(csr.summary()) >= {"format", "nnz", "density", "bytes"}


def test_coo_to_csr_unsorted_duplicates():
    rows = np.array([2, 0, 2, 0, 1])
    cols = np.array([1, 3, 1, 0, 2])
    vals = np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32)
    sw = coo_to_csr(rows, cols, vals, (4, 5))
    dense = np.zeros((4, 5), np.float32)
    np.add.at(dense, (rows, cols), vals)
    np.testing.assert_array_equal(sw.to_dense(), dense)
    np.testing.assert_array_equal(sw.indptr, [0, 2, 3, 4, 4])  # empty last row
    r, c, v = to_coo(dense)
    np.testing.assert_array_equal(coo_to_csr(r, c, v, dense.shape).to_dense(), dense)


def test_all_zero_matrix():
    sw = to_bsr(np.zeros((5, 7), np.float32), (2, 4))
    assert sw.nnz == 0 and isinstance(sw, SparseWeight)
    np.testing.assert_array_equal(sw.to_dense(), np.zeros((5, 7)))


def test_conv_weight_matrix_order():
    w = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    m = conv_weight_matrix(w)
    assert m.shape == (2, 12)
    assert m[1, (1 * 2 + 0) * 3 + 2] == w[1, 2, 1, 0]  # column = (kh * KW + kw) * C + ic
    assert sparse_conv_weight(w, "bsr", (1, 4)).block == (1, 4)


# --- conv2d ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,block", FORMATS)
@pytest.mark.parametrize("sparsity", [0.0, 0.6, 0.97])
def test_conv3x3_float32(fmt, block, sparsity):
    rng = np.random.default_rng(1)
    x = make_input(rng, (1, 6, 9, 11), "float32")
    w = make_weight(rng, (10, 6, 3, 3), sparsity, "float32")
    check_conv(x, w, fmt, block)


@pytest.mark.parametrize("fmt,block", [("csr", (1, 1)), ("bsr", (2, 4))])
@pytest.mark.parametrize(
    "ksize,stride,pad,dilation",
    [(1, 1, (0, 0, 0, 0), 1), (1, 2, (0, 0, 0, 0), 1), (3, 2, (1, 1, 1, 1), 1), (3, 1, (2, 1, 0, 2), 1),
     (3, 1, (2, 2, 2, 2), 2), (5, 2, (2, 2), 1)],
)
def test_conv_geometry(fmt, block, ksize, stride, pad, dilation):
    rng = np.random.default_rng(2)
    x = make_input(rng, (2, 5, 13, 10), "float32")  # batch 2, odd channels, non-square
    w = make_weight(rng, (7, 5, ksize, ksize), 0.5, "float32")
    pad4 = pad if len(pad) == 4 else (pad[0], pad[1], pad[0], pad[1])
    check_conv(x, w, fmt, block, stride=stride, pad=pad4, dilation=dilation)


@pytest.mark.parametrize("fmt,block", [("csr", (1, 1)), ("bsr", (4, 2))])
def test_conv_nhwc_and_groups(fmt, block):
    rng = np.random.default_rng(3)
    x = make_input(rng, (1, 7, 6, 8), "float32")  # NHWC
    w = make_weight(rng, (9, 8, 3, 3), 0.7, "float32")
    check_conv(x, w, fmt, block, layout="NHWC")
    xg = make_input(rng, (1, 8, 7, 7), "float32")
    wg = make_weight(rng, (8, 4, 3, 3), 0.5, "float32")
    check_conv(xg, wg, fmt, block, groups=2)


@pytest.mark.parametrize("fmt,block", [("csr", (1, 1)), ("bsr", (1, 8)), ("bsr", (4, 4))])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_int8(fmt, block, stride):
    rng = np.random.default_rng(4)
    x = make_input(rng, (1, 8, 10, 9), "int8")
    w = make_weight(rng, (12, 8, 3, 3), 0.8, "int8")
    check_conv(x, w, fmt, block, stride=stride, dtype="int8", out_dtype="int32")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_conv_half(dtype):
    import ml_dtypes

    rng = np.random.default_rng(5)
    np_dt = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    x = rng.standard_normal((1, 4, 6, 6)).astype(np_dt)
    w = make_weight(rng, (5, 4, 3, 3), 0.5, "float32").astype(np_dt).astype(np.float32)

    def emit(bb, xv):
        return emit_sparse_conv2d(bb, xv, w, strides=1, padding=1, dilation=1, groups=1, data_layout="NCHW",
                                  out_dtype=dtype, fmt="csr", block=(1, 1), target=TARGET)

    got = run_relax(x, emit, dtype).astype(np.float32)
    ref = conv_ref(x.astype(np.float32), w, 1, (1, 1, 1, 1), 1, 1, "NCHW")
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=5e-2)


def test_conv_depthwise_falls_back():
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((1, 4, 6, 6), "float32"))
    with bb.function("main", [xv]):
        w = np.ones((4, 1, 3, 3), np.float32)
        out = emit_sparse_conv2d(bb, xv, w, strides=1, padding=1, dilation=1, groups=4, data_layout="NCHW",
                                 out_dtype="float32", fmt="csr", block=(1, 1), target=TARGET)
        assert out is None
        bb.emit_func_output(xv)


def test_conv_bsr_block_pruned():
    rng = np.random.default_rng(6)
    x = make_input(rng, (1, 16, 8, 8), "float32")
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    m = prune_blocks(conv_weight_matrix(w), 0.8, (4, 4))
    w = np.ascontiguousarray(m.reshape(16, 3, 3, 16).transpose(0, 3, 1, 2))
    check_conv(x, w, "bsr", (4, 4))


# --- dense -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,block", FORMATS + [("bsr", (3, 5)), ("bsr", (2, 16)), ("bsr", (1, 32))])
@pytest.mark.parametrize("batch,sparsity", [(1, 0.0), (3, 0.7), (1, 0.98)])
def test_dense_float32(fmt, block, batch, sparsity):
    rng = np.random.default_rng(7)
    x = make_input(rng, (batch, 37), "float32")  # K not a multiple of any block width
    w = make_weight(rng, (75, 37), sparsity, "float32")  # 75 rows: several tasks, the last one partial
    got = run_relax(x, lambda bb, xv: emit_sparse_dense(bb, xv, w, fmt=fmt, block=block, out_dtype="float32",
                                                         target=TARGET), "float32")
    np.testing.assert_allclose(got, x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt,block", [("csr", (1, 1)), ("bsr", (1, 8)), ("bsr", (4, 1))])
def test_dense_int8(fmt, block):
    rng = np.random.default_rng(8)
    x = make_input(rng, (2, 70), "int8")
    w = make_weight(rng, (13, 70), 0.6, "int8")
    got = run_relax(x, lambda bb, xv: emit_sparse_dense(bb, xv, w, fmt=fmt, block=block, out_dtype="int32",
                                                         target=TARGET), "int8")
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, x.astype(np.int64) @ w.T.astype(np.int64))


def test_aarch64_compiles():
    """The kernels lower for aarch64 NEON (compile only, no device)."""
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    rng = np.random.default_rng(9)
    w = make_weight(rng, (8, 4, 3, 3), 0.7, "float32")
    wd = make_weight(rng, (8, 16), 0.7, "float32")
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((1, 4, 8, 8), "float32"))
    dv = relax.Var("d", relax.TensorType((2, 16), "float32"))
    with bb.function("main", [xv, dv]):
        with bb.dataflow():
            a = bb.emit(emit_sparse_conv2d(bb, xv, w, strides=1, padding=1, dilation=1, groups=1,
                                           data_layout="NCHW", out_dtype="float32", fmt="bsr", block=(1, 8),
                                           target=target))
            b = bb.emit(emit_sparse_dense(bb, dv, wd, fmt="csr", block=(1, 1), out_dtype="float32",
                                          target=target))
            out = bb.emit_output(relax.Tuple([a, b]))
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target)
    assert ex is not None
