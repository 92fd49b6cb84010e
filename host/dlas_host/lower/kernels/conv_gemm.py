"""im2col + GEMM convolution.

NCHW: the im2col matrix is materialized packed as ``col[n, g, p_outer, k, p_inner]`` (p = output pixel,
k = (c, ky, kx)) so the GEMM streams it contiguously; output tile = ``ob`` channels x ``vp`` pixels,
vectorized along pixels. NHWC: ``col[n, g, p, k]`` with k = (ky, kx, c); output tile = ``rb`` pixels x
one SIMD vector of output channels (weights ``[k, o]``).
"""

from __future__ import annotations

import numpy as np
from tvm import te

from .. import schedule_cpu as sc
from ..common import ConvGeom, acc_cast, channel_block, pad_nchw, pad_nhwc, pick_block
from ..registry import Kernel, KernelRequest, register
from ..targets import TargetInfo


def weight_nchw(w_oihw: np.ndarray, g: ConvGeom) -> np.ndarray:
    """[O, Cg*KH*KW], k ordered (c, ky, kx)."""
    return np.ascontiguousarray(w_oihw.reshape(w_oihw.shape[0], -1))


def weight_nhwc(w_oihw: np.ndarray, g: ConvGeom) -> np.ndarray:
    """[KH*KW*Cg, O], k ordered (ky, kx, c)."""
    return np.ascontiguousarray(w_oihw.transpose(2, 3, 1, 0).reshape(-1, w_oihw.shape[0]))


def gemm_nchw(data: te.Tensor, w2: te.Tensor, g: ConvGeom, out_dtype: str, info: TargetInfo) -> te.Tensor:
    padded = pad_nchw(data, g)
    (sh, sw), (dh, dw) = g.stride, g.dilation
    kk = g.kh * g.kw
    k_total, p_total = g.cg * kk, g.oh * g.ow
    vp = pick_block(p_total, 16)
    if vp < 4 and p_total > 16:  # awkward pixel count (prime-ish): fall back to whole rows
        vp = pick_block(g.ow, 16)

    def col_f(n, gi, po, k, pi):
        p = po * vp + pi
        c, r = k // kk, k % kk
        return padded[n, gi * g.cg + c, (p // g.ow) * sh + (r // g.kw) * dh, (p % g.ow) * sw + (r % g.kw) * dw]

    col = te.compute((g.n, g.groups, p_total // vp, k_total, vp), col_f, name="dlas_col_nchw")
    rk = te.reduce_axis((0, k_total), "rk")
    ob = pick_block(g.og, 8)

    def out_f(n, o, y, x):
        p = y * g.ow + x
        gi = 0 if g.groups == 1 else o // g.og
        return te.sum(acc_cast(w2[o, rk], out_dtype) * acc_cast(col[n, gi, p // vp, rk, p % vp], out_dtype), axis=[rk])

    return te.compute((g.n, g.o, g.oh, g.ow), out_f, name="dlas_conv_gemm_nchw",
                      attrs={"dlas_sched": "gemm_nchw", "dlas_ob": ob, "dlas_vp": vp})


def gemm_nhwc(data: te.Tensor, w2: te.Tensor, g: ConvGeom, out_dtype: str, info: TargetInfo) -> te.Tensor:
    padded = pad_nhwc(data, g)
    (sh, sw), (dh, dw) = g.stride, g.dilation
    k_total = g.kh * g.kw * g.cg

    def col_f(n, gi, p, k):
        r, c = k // g.cg, k % g.cg
        return padded[n, (p // g.ow) * sh + (r // g.kw) * dh, (p % g.ow) * sw + (r % g.kw) * dw, gi * g.cg + c]

    col = te.compute((g.n, g.groups, g.oh * g.ow, k_total), col_f, name="dlas_col_nhwc")
    rk = te.reduce_axis((0, k_total), "rk")
    oc = channel_block(g.o, info.lanes(out_dtype))
    rb = pick_block(g.ow, 8)

    def out_f(n, y, x, o):
        gi = 0 if g.groups == 1 else o // g.og
        return te.sum(acc_cast(col[n, gi, y * g.ow + x, rk], out_dtype) * acc_cast(w2[rk, o], out_dtype), axis=[rk])

    return te.compute((g.n, g.oh, g.ow, g.o), out_f, name="dlas_conv_gemm_nhwc",
                      attrs={"dlas_sched": "gemm_nhwc", "dlas_oc": oc, "dlas_rb": rb})


def schedule_gemm_nchw(sch: sc.Sched, anchor, info: TargetInfo) -> None:
    lanes = info.lanes("float32")
    ob, vp = sc.ann_int(sch, anchor, "dlas_ob"), sc.ann_int(sch, anchor, "dlas_vp")
    n, o, y, x, rk = sch.get_loops(anchor)
    oo, oi = sch.split(o, [None, ob])
    p = sch.fuse(y, x)
    po, pi = sc.register_tile(sch, p, vp)
    sch.reorder(n, oo, po, rk, oi, pi)
    # the tail is indexed (y, x): compute it per channel block, over the whole image
    fused = sc.fuse_epilogue(sch, anchor, oo, None, lanes)
    sc.schedule_producers(sch, anchor, lanes)
    par = sch.fuse(n, oo)
    sch.parallel(par)
    sch.unroll(oi)
    sch.vectorize(pi)
    init = sch.decompose_reduction(anchor, rk)
    sc.vectorize_init(sch, init)
    if not fused:
        sc.schedule_tail_generic(sch, anchor, lanes)


def schedule_gemm_nhwc(sch: sc.Sched, anchor, info: TargetInfo) -> None:
    lanes = info.lanes("float32")
    oc, rb = sc.ann_int(sch, anchor, "dlas_oc"), sc.ann_int(sch, anchor, "dlas_rb")
    n, y, x, o, rk = sch.get_loops(anchor)
    oo, oi = sch.split(o, [None, oc])
    xo, xi = sc.register_tile(sch, x, rb)
    sch.reorder(n, y, oo, xo, rk, xi, oi)
    fused = sc.fuse_epilogue(sch, anchor, xo, None, lanes)
    sc.schedule_producers(sch, anchor, lanes)
    sch.parallel(sch.fuse(n, y, oo))
    sch.unroll(xi)
    sch.vectorize(oi)
    init = sch.decompose_reduction(anchor, rk)
    sc.vectorize_init(sch, init)
    if not fused:
        sc.schedule_tail_generic(sch, anchor, lanes)


def _emit_nchw(req: KernelRequest):
    return req.call(gemm_nchw, req.data, req.const(weight_nchw(req.weight, req.geom)), req.geom, req.out_dtype,
                    req.info, hint="dlas_conv_gemm_nchw")


def _emit_nhwc(req: KernelRequest):
    return req.call(gemm_nhwc, req.data, req.const(weight_nhwc(req.weight, req.geom)), req.geom, req.out_dtype,
                    req.info, hint="dlas_conv_gemm_nhwc")


# im2col handles groups, depthwise included (grouped im2col)
OPS = ("conv2d", "grouped_conv2d", "depthwise_conv2d")
register(Kernel("gemm_nchw", "gemm", OPS, "NCHW", "NCHW", _emit_nchw, schedule_gemm_nchw))
register(Kernel("gemm_nhwc", "gemm", OPS, "NHWC", "NHWC", _emit_nhwc, schedule_gemm_nhwc))
