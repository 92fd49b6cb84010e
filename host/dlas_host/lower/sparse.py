"""Sparse (CSR / BSR / COO) legalization of conv2d and dense layers with constant pruned weights.

Called by the lowering dispatcher from inside a `LegalizeOps` customize function. Each `emit_*`
function returns a relax Expr computing exactly what the dense op computes (shape, layout, dtype),
or **None, meaning "not handled: use a dense kernel"** (dynamic shapes, depthwise convolution,
unsupported dtypes or layouts).

Conv weight (O, I/groups, KH, KW) is flattened to rows = output channels and columns ordered
(kh, kw, ic) so that a BSR column block covers consecutive input channels at one kernel tap. The
input is padded, made channel-major (if NHWC) and split by stride phase once in a TE stage, so
the kernel reads one contiguous, unchecked vector per nonzero; it writes the requested output
layout directly. Any stride, dilation, asymmetric padding and groups (not depthwise) are
supported. data/indices/indptr are relax constants passed to the PrimFunc at run time (not
unrolled into code). COO is accepted and converted to CSR at build time.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx

from .sparse_formats import SparseWeight, convert
from .sparse_conv_plan import emit_phase_pad, plan_conv
from .sparse_kernels import acc_dtype, dense_partials, make_conv_kernel, make_dense_kernel

__all__ = ["emit_sparse_conv2d", "emit_sparse_dense", "conv_weight_matrix", "sparse_conv_weight"]

_IN_DTYPES = ("float32", "float16", "bfloat16", "int8", "uint8")


def _static_shape(expr: relax.Expr) -> tuple[list[int], str] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims = []
    for d in ty.shape.values:
        if not isinstance(d, tirx.IntImm):
            return None
        dims.append(int(d))
    return dims, str(ty.dtype)


def _block(fmt: str, block: tuple[int, int]) -> tuple[int, int]:
    return (1, 1) if fmt in ("csr", "coo") else (int(block[0]), int(block[1]))


def _weight_dtype(weight: np.ndarray, in_dtype: str) -> str:
    if in_dtype in ("int8", "uint8"):
        return str(weight.dtype) if weight.dtype.kind in "iu" else in_dtype
    return in_dtype


def _const(arr: np.ndarray, dtype: str) -> relax.Constant:
    if dtype == "bfloat16":
        import ml_dtypes  # shipped with tvm's dependencies

        arr = np.asarray(arr, dtype=np.float32).astype(ml_dtypes.bfloat16)
        return relax.const(tvm.runtime.tensor(arr))
    return relax.const(np.ascontiguousarray(arr).astype(dtype), dtype)


def _sparse_args(sw: SparseWeight, w_dtype: str, pad: int = 1) -> list[relax.Constant]:
    """data/indices with `pad` trailing zero blocks: an all-zero weight has no empty arrays, and a
    kernel reading whole chunks of blocks past a row's end (dense layers) stays in bounds."""
    br, bc = sw.block
    data = np.concatenate([sw.data, np.zeros((pad, br, bc), sw.data.dtype)])
    indices = np.concatenate([sw.indices, np.zeros(pad, np.int32)])
    return [_const(data, w_dtype), _const(indices, "int32"), _const(sw.indptr, "int32")]


def conv_weight_matrix(weight: np.ndarray) -> np.ndarray:
    """OIHW weight to the (O, KH*KW*I) matrix the conv kernels use (columns ordered kh, kw, ic)."""
    o = weight.shape[0]
    return np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(o, -1))


def sparse_conv_weight(weight: np.ndarray, fmt: str, block: tuple[int, int] = (1, 8)) -> SparseWeight:
    """The SparseWeight a conv layer is built with (for reports and the pruning work)."""
    return convert(conv_weight_matrix(weight), fmt, _block(fmt, block))


def _identify(kernel: tirx.PrimFunc, name: str, fmt: str, block: tuple[int, int], layout: str,
              acc: str) -> tirx.PrimFunc:
    """Attributes the build manifest reads back (the kernel has no annotated block to find it by)."""
    return kernel.with_attrs({"dlas_kernel": name, "dlas_format": fmt, "dlas_block": f"{block[0]}x{block[1]}",
                              "dlas_layout": layout, "dlas_acc": acc})


def emit_sparse_conv2d(
    bb: relax.BlockBuilder,
    data: relax.Expr,
    weight: np.ndarray,
    *,
    strides,
    padding,
    dilation,
    groups: int,
    data_layout: str,
    out_dtype: str,
    fmt: str,
    block: tuple[int, int],
    target: tvm.target.Target | None = None,
) -> relax.Expr | None:
    """Sparse conv2d with a constant OIHW `weight`; returns None when a dense kernel should be used."""
    if fmt not in ("csr", "bsr", "coo") or data_layout not in ("NCHW", "NHWC") or weight.ndim != 4:
        return None
    info = _static_shape(data)
    if info is None:
        return None
    shape, in_dtype = info
    if in_dtype not in _IN_DTYPES:
        return None
    out_dtype = out_dtype or in_dtype
    if data_layout == "NCHW":
        n, c, h, w = shape
    else:
        n, h, w, c = shape
    o, cg, kh, kw = (int(x) for x in weight.shape)
    groups = int(groups)
    if c != cg * groups or o % groups:
        return None
    og = o // groups
    if groups > 1 and cg == 1:
        return None  # depthwise: rows of KH*KW taps are too short for sparsity to pay; use dense
    blk = _block(fmt, block)
    if groups > 1 and og % blk[0]:
        return None  # a row block must not straddle two groups
    plan = plan_conv(shape, data_layout, o, kh, kw, strides, padding, dilation, groups, blk[0])
    if plan is None:
        return None
    spw = convert(conv_weight_matrix(weight), fmt, blk)
    _, k_padded = spw.padded_shape
    col_off = plan.col_offsets(groups, k_padded)
    xp = emit_phase_pad(bb, data, plan, data_layout)
    w_dtype = _weight_dtype(weight, in_dtype)
    kernel = make_conv_kernel(plan.geo, blk, spw.nnz_blocks + 1, in_dtype, w_dtype, out_dtype)
    kernel = _identify(kernel, "sparse_conv2d", fmt, blk, data_layout, acc_dtype(in_dtype, out_dtype))
    gv = bb.add_func(kernel.without_attr("global_symbol"), f"sparse_conv2d_{fmt}")
    oh, ow = plan.geo.oh, plan.geo.ow
    out_shape = (n, oh, ow, o) if data_layout == "NHWC" else (n, o, oh, ow)
    wdata, _, indptr = _sparse_args(spw, w_dtype)
    # each stored column's input-window offset (block columns resolved at build time; dummy block: 0)
    cols = np.concatenate([spw.indices, [0]])[:, None] * blk[1] + np.arange(blk[1])
    args = [xp, wdata, _const(col_off[cols], "int32"), indptr]
    return relax.call_tir(gv, args, relax.TensorType(out_shape, out_dtype))


def emit_sparse_dense(
    bb: relax.BlockBuilder,
    data: relax.Expr,
    weight: np.ndarray,
    *,
    fmt: str,
    block: tuple[int, int],
    out_dtype: str,
    target: tvm.target.Target | None = None,
) -> relax.Expr | None:
    """x (batch, in) @ weight(out, in).T with weight sparse; returns None when dense should be used."""
    if fmt not in ("csr", "bsr", "coo") or weight.ndim != 2:
        return None
    info = _static_shape(data)
    if info is None or len(info[0]) != 2:
        return None
    (batch, k), in_dtype = info
    if in_dtype not in _IN_DTYPES or weight.shape[1] != k:
        return None
    out_dtype = out_dtype or in_dtype
    o = int(weight.shape[0])
    blk = _block(fmt, block)
    sw = convert(np.asarray(weight), fmt, blk)
    w_dtype = _weight_dtype(weight, in_dtype)
    pad = dense_partials(blk)
    kernel = make_dense_kernel(batch, k, o, blk, sw.nnz_blocks + pad, in_dtype, w_dtype, out_dtype)
    kernel = _identify(kernel, "sparse_dense", fmt, blk, "", acc_dtype(in_dtype, out_dtype))
    gv = bb.add_func(kernel.without_attr("global_symbol"), f"sparse_dense_{fmt}")
    args = [data, *_sparse_args(sw, w_dtype, pad)]
    return relax.call_tir(gv, args, relax.TensorType((batch, o), out_dtype))
