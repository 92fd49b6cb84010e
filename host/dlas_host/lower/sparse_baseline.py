"""Dense reference kernels with the same tiling as the sparse ones, for sparse-vs-dense sweeps.

The conv baseline is a direct convolution register-blocked over `rows` output channels (the
sparse conv kernel with every weight stored and compile-time loops instead of index arrays);
the dense-layer baseline is a GEMV/GEMM with 16 partial sums per row. Both take the weight as a
runtime constant like the sparse kernels, so the comparison isolates the format.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.script import tirx as T

from .sparse import _static_shape, conv_weight_matrix
from .sparse_conv_plan import emit_phase_pad, plan_conv
from .sparse_kernels import VEC, ConvGeometry, acc_dtype, tile_write_back


def make_direct_conv_kernel(geo: ConvGeometry, col_off: np.ndarray, rows: int, dtype: str, out_dtype: str):
    """Dense NCHW direct conv (groups=1) over the phase-split input, weight (O/rows, K, rows)."""
    n, c, hq, wq, o, oh, ow, tile = geo.n, geo.planes, geo.hq, geo.wq, geo.o, geo.oh, geo.ow, geo.tile
    nb = o // rows
    ktot = len(col_off)
    nt = geo.n_tiles
    vl = VEC if tile % VEC == 0 else tile
    nv = tile // vl
    img = c * hq * wq
    adt = acc_dtype(dtype, out_dtype)
    write_back = tile_write_back(geo, rows, out_dtype)

    @T.prim_func(private=True)
    def kernel(
        xp: T.Buffer((n, c, hq, wq), dtype),
        wt: T.Buffer((nb, ktot, rows), dtype),
        offs: T.Buffer((ktot,), "int32"),
        out: T.Buffer((n, o, oh, ow), out_dtype),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        xf = T.decl_buffer((n * img,), dtype, data=xp.data)
        for task in T.parallel(n * nb * nt):
            acc = T.alloc_buffer((rows, tile), adt, scope="global")
            res = T.alloc_buffer((rows, tile), adt, scope="global")
            b = T.meta_var(task // (nb * nt))
            ob = T.meta_var(task % nb)
            q0 = T.meta_var(task // nb % nt * tile)
            for r, iv in T.grid(rows, nv):
                for il in T.vectorized(vl):
                    acc[r, iv * vl + il] = T.cast(0, adt)
            for kk in T.serial(ktot):
                off = T.meta_var(b * img + offs[kk] + q0)
                for r in T.unroll(rows):
                    v = T.meta_var(T.cast(wt[ob, kk, r], adt))
                    for iv in T.unroll(nv):
                        for il in T.vectorized(vl):
                            i = T.meta_var(iv * vl + il)
                            acc[r, i] = acc[r, i] + v * T.cast(xf[off + i], adt)
            for r, iv in T.grid(rows, nv):
                for il in T.vectorized(vl):
                    res[r, iv * vl + il] = acc[r, iv * vl + il]
            write_back(out, res, b, ob * rows, q0)

    return kernel


def emit_dense_conv2d(bb: relax.BlockBuilder, data: relax.Expr, weight: np.ndarray, *, strides, padding,
                      dilation, out_dtype: str, rows: int = 8) -> relax.Expr:
    """Dense direct conv2d (NCHW, groups=1) with the sparse kernels' tiling."""
    shape, dtype = _static_shape(data)
    o, c, kh, kw = weight.shape
    rows = rows if o % rows == 0 else 1
    plan = plan_conv(shape, "NCHW", o, kh, kw, strides, padding, dilation, 1, rows)
    col_off = plan.col_offsets(1, c * kh * kw)
    xp = emit_phase_pad(bb, data, plan, "NCHW")
    # (O, K) with K ordered (kh, kw, ic) -> (O/rows, K, rows)
    wt = conv_weight_matrix(weight).reshape(o // rows, rows, -1).transpose(0, 2, 1)
    gv = bb.add_func(make_direct_conv_kernel(plan.geo, col_off, rows, dtype, out_dtype), "dense_direct_conv2d")
    args = [xp, relax.const(np.ascontiguousarray(wt).astype(dtype), dtype), relax.const(col_off, "int32")]
    g = plan.geo
    return relax.call_tir(gv, args, relax.TensorType((g.n, o, g.oh, g.ow), out_dtype))


def make_dense_gemv_kernel(batch: int, k: int, o: int, rows: int, dtype: str, out_dtype: str):
    """out[b, o] = x[b] . W[o] for a dense row-major W, 16 partial sums per row, K % 16 == 0."""
    nb = o // rows
    adt = acc_dtype(dtype, out_dtype)

    @T.prim_func(private=True)
    def kernel(x: T.Buffer((batch, k), dtype), wt: T.Buffer((o, k), dtype), out: T.Buffer((batch, o), out_dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for task in T.parallel(nb * batch):
            part = T.alloc_buffer((rows, VEC), adt, scope="global")
            res = T.alloc_buffer((rows, VEC), adt, scope="global")
            ob = T.meta_var(task // batch)
            b = T.meta_var(task % batch)
            for r in T.serial(rows):
                for ln in T.vectorized(VEC):
                    part[r, ln] = T.cast(0, adt)
            for ch in T.serial(k // VEC):
                for r in T.unroll(rows):
                    for ln in T.vectorized(VEC):
                        part[r, ln] = part[r, ln] + T.cast(wt[ob * rows + r, ch * VEC + ln], adt) * T.cast(
                            x[b, ch * VEC + ln], adt)
            for r in T.serial(rows):
                for ln in T.vectorized(VEC):
                    res[r, ln] = part[r, ln]
            for r in T.serial(rows):
                for ln in T.serial(1, VEC):
                    res[r, 0] = res[r, 0] + res[r, ln]
                out[b, ob * rows + r] = T.cast(res[r, 0], out_dtype)

    return kernel


def emit_dense_dense(bb: relax.BlockBuilder, data: relax.Expr, weight: np.ndarray, *, out_dtype: str,
                     rows: int = 4) -> relax.Expr:
    """Dense x @ W.T (K a multiple of 16) with the sparse dense kernel's partial-sum scheme."""
    (batch, k), dtype = _static_shape(data)
    o = weight.shape[0]
    assert k % VEC == 0, "K must be a multiple of 16"
    rows = rows if o % rows == 0 else 1
    kernel = make_dense_gemv_kernel(batch, k, o, rows, dtype, out_dtype)
    gv = bb.add_func(kernel, "dense_gemv")
    wconst = relax.const(np.ascontiguousarray(weight).astype(dtype), dtype)
    return relax.call_tir(gv, [data, wconst], relax.TensorType((batch, o), out_dtype))
