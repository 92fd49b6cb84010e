"""Sparse (CSR / BSR / COO) legalization of conv2d and dense layers with constant pruned weights.

Called by the lowering dispatcher from inside a `LegalizeOps` customize function. Each `emit_*`
function returns a relax Expr computing exactly what the dense op computes (shape, layout, dtype),
or **None, meaning "not handled: use a dense kernel"** (dynamic shapes, depthwise convolution,
unsupported dtypes or layouts).

Conv weight (O, I/groups, KH, KW) is flattened to rows = output channels and columns ordered
(kh, kw, ic) so that a BSR column block covers consecutive input channels at one kernel tap. The
input is padded (and, for NHWC, moved to NCHW) once in a TE stage so the kernel has no bounds
checks; the kernel writes the requested output layout directly. COO is accepted and converted to
CSR at build time (the kernels are CSR/BSR only).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx

from .sparse_formats import SparseWeight, convert
from .sparse_kernels import ConvGeometry, flat_tile, make_conv_kernel, make_dense_kernel

__all__ = ["emit_sparse_conv2d", "emit_sparse_dense", "conv_weight_matrix", "sparse_conv_weight"]

_IN_DTYPES = ("float32", "float16", "bfloat16", "int8", "uint8")


def _static_shape(expr: relax.Expr) -> tuple[list[int], str] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = []
    for d in ty.shape.values:
        if not isinstance(d, tirx.IntImm):
            return None
        dims.append(int(d))
    return dims, str(ty.dtype)


def _pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = [int(x) for x in v]
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _pad4(padding) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from an int, a 2-tuple (h, w) or relax's 4-tuple."""
    if isinstance(padding, int):
        return (padding,) * 4
    p = [int(x) for x in padding]
    if len(p) == 1:
        return (p[0],) * 4
    if len(p) == 2:
        return (p[0], p[1], p[0], p[1])
    return (p[0], p[1], p[2], p[3])


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


def _sparse_args(sw: SparseWeight, w_dtype: str) -> list[relax.Constant]:
    """data/indices with one trailing dummy block so that an all-zero weight has no empty arrays."""
    br, bc = sw.block
    data = np.concatenate([sw.data, np.zeros((1, br, bc), sw.data.dtype)])
    indices = np.concatenate([sw.indices, np.zeros(1, np.int32)])
    return [_const(data, w_dtype), _const(indices, "int32"), _const(sw.indptr, "int32")]


def conv_weight_matrix(weight: np.ndarray) -> np.ndarray:
    """OIHW weight to the (O, KH*KW*I) matrix the conv kernels use (columns ordered kh, kw, ic)."""
    o = weight.shape[0]
    return np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(o, -1))


def sparse_conv_weight(weight: np.ndarray, fmt: str, block: tuple[int, int] = (1, 8)) -> SparseWeight:
    """The SparseWeight a conv layer is built with (for reports and the pruning work)."""
    return convert(conv_weight_matrix(weight), fmt, _block(fmt, block))


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
    sh, sw = _pair(strides)
    if sh != sw:
        return None  # the flat-row kernel needs equal strides
    dh, dw = _pair(dilation)
    pt, pl, pb, pr = _pad4(padding)
    hp, wp = h + pt + pb, w + pl + pr
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wp - dw * (kw - 1) - 1) // sw + 1
    if oh <= 0 or ow <= 0:
        return None
    wp += -wp % sw  # whole virtual output rows: wp = stride * wq
    wq = wp // sw
    tile = flat_tile(oh, ow, wq, blk[0])
    n_tiles = -(-oh * wq // tile)
    # The last tile reads past row hp - 1 of a plane: extend the planes with zero rows.
    last_read = (kh - 1) * dh * wp + (kw - 1) * dw + sw * (n_tiles * tile - 1)
    hp = max(hp, -(-(last_read + 1) // wp))

    spw = convert(conv_weight_matrix(weight), fmt, blk)
    _, k_padded = spw.padded_shape
    cols = np.arange(k_padded)
    ci, tap = cols % cg, cols // cg
    col_off = ci * hp * wp + (tap // kw) * dh * wp + (tap % kw) * dw
    col_off[cols >= cg * kh * kw] = 0  # zero-weight padding columns read a valid element

    def pad(x: te.Tensor) -> te.Tensor:
        def at(b, ch, i, j):
            ii, jj = i - pt, j - pl
            inside = tvm.tirx.all(ii >= 0, ii < h, jj >= 0, jj < w)
            v = x[b, ch, ii, jj] if data_layout == "NCHW" else x[b, ii, jj, ch]
            return tvm.tirx.if_then_else(inside, v, tvm.tirx.const(0, x.dtype))

        return te.compute((n, c, hp, wp), at, name="sparse_conv_pad")

    xp = bb.emit(bb.call_te(pad, data, primfunc_name_hint="sparse_conv_pad"))
    geo = ConvGeometry(n, c, hp, wp, o, oh, ow, sw, groups, data_layout, tile)
    w_dtype = _weight_dtype(weight, in_dtype)
    kernel = make_conv_kernel(geo, blk, spw.nnz_blocks + 1, k_padded, in_dtype, w_dtype, out_dtype)
    gv = bb.add_func(kernel.without_attr("global_symbol"), f"sparse_conv2d_{fmt}")
    out_shape = (n, oh, ow, o) if data_layout == "NHWC" else (n, o, oh, ow)
    args = [xp, *_sparse_args(spw, w_dtype), _const(col_off, "int32")]
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
    kernel = make_dense_kernel(batch, k, o, blk, sw.nnz_blocks + 1, in_dtype, w_dtype, out_dtype)
    gv = bb.add_func(kernel.without_attr("global_symbol"), f"sparse_dense_{fmt}")
    args = [data, *_sparse_args(sw, w_dtype)]
    return relax.call_tir(gv, args, relax.TensorType((batch, o), out_dtype))
