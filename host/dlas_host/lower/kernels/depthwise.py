"""Depthwise convolution (groups == in == out channels): NCHW, NHWC and NCHWc (spatial-pack) kernels.

Memory bound: one multiply-add per loaded element, so the schedules only aim at contiguous vectors
(along the row in NCHW, along channels in NHWC/NCHWc) and at fusing the elementwise tail.
"""

from __future__ import annotations

import numpy as np
from tvm import te

from .. import schedule_cpu as sc
from ..common import ConvGeom, acc_cast, channel_block, pad_nchw, pad_nhwc, pick_block
from ..registry import Kernel, KernelRequest, register
from .conv_spatial_pack import nchwc_remap, pack_data
from ..targets import TargetInfo


def weight_nchw(w_oihw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w_oihw[:, 0])


def weight_nhwc(w_oihw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w_oihw[:, 0].transpose(1, 2, 0))


def weight_nchwc(w_oihw: np.ndarray, cb: int) -> np.ndarray:
    c, _, kh, kw = w_oihw.shape
    return np.ascontiguousarray(w_oihw[:, 0].reshape(c // cb, cb, kh, kw).transpose(0, 2, 3, 1))


def channel_block_for(g: ConvGeom, info: TargetInfo, out_dtype: str) -> int:
    return channel_block(g.c, info.lanes(out_dtype))


def dw_nchw(data: te.Tensor, w: te.Tensor, g: ConvGeom, out_dtype: str, info: TargetInfo) -> te.Tensor:
    padded = pad_nchw(data, g)
    ry, rx = te.reduce_axis((0, g.kh), "ry"), te.reduce_axis((0, g.kw), "rx")
    (sh, sw), (dh, dw) = g.stride, g.dilation
    vw = pick_block(g.ow, max(16, info.lanes(out_dtype)))
    return te.compute(
        (g.n, g.c, g.oh, g.ow),
        lambda n, c, y, x: te.sum(
            acc_cast(padded[n, c, y * sh + ry * dh, x * sw + rx * dw], out_dtype) * acc_cast(w[c, ry, rx], out_dtype),
            axis=[ry, rx]),
        name="dlas_dw_nchw", attrs={"dlas_sched": "dw_nchw", "dlas_vw": vw})


def dw_nhwc(data: te.Tensor, w: te.Tensor, g: ConvGeom, out_dtype: str, info: TargetInfo) -> te.Tensor:
    padded = pad_nhwc(data, g)
    ry, rx = te.reduce_axis((0, g.kh), "ry"), te.reduce_axis((0, g.kw), "rx")
    (sh, sw), (dh, dw) = g.stride, g.dilation
    return te.compute(
        (g.n, g.oh, g.ow, g.c),
        lambda n, y, x, c: te.sum(
            acc_cast(padded[n, y * sh + ry * dh, x * sw + rx * dw, c], out_dtype) * acc_cast(w[ry, rx, c], out_dtype),
            axis=[ry, rx]),
        name="dlas_dw_nhwc",
        attrs={"dlas_sched": "dw_nhwc", "dlas_cb": channel_block(g.c, info.lanes(out_dtype)),
               "dlas_rb": pick_block(g.ow, 4)})


def dw_nchwc(data: te.Tensor, wp: te.Tensor, g: ConvGeom, out_dtype: str, info: TargetInfo, cb: int) -> te.Tensor:
    dvec = pack_data(data, g, cb)
    ry, rx = te.reduce_axis((0, g.kh), "ry"), te.reduce_axis((0, g.kw), "rx")
    (sh, sw), (dh, dw) = g.stride, g.dilation
    conv = te.compute(
        (g.n, g.c // cb, g.oh, g.ow, cb),
        lambda n, co, y, x, ci: te.sum(
            acc_cast(dvec[n, co, y * sh + ry * dh, x * sw + rx * dw, ci], out_dtype)
            * acc_cast(wp[co, ry, rx, ci], out_dtype), axis=[ry, rx]),
        name="dlas_dw_nchwc", attrs={"dlas_sched": "dw_nchwc", "dlas_rb": pick_block(g.ow, 8)})
    return te.compute((g.n, g.c, g.oh, g.ow), lambda n, c, y, x: conv[n, c // cb, y, x, c % cb], name="dlas_unpack")


def schedule_dw_nchw(sch: sc.Sched, anchor, info: TargetInfo) -> None:
    lanes = info.lanes("float32")
    vw = sc.ann_int(sch, anchor, "dlas_vw")
    n, c, y, x, ry, rx = sch.get_loops(anchor)
    xo, xi = sc.register_tile(sch, x, vw)
    sch.reorder(n, c, y, xo, ry, rx, xi)
    fused = sc.fuse_epilogue(sch, anchor, xo, None, lanes)
    sc.schedule_producers(sch, anchor, lanes)
    sch.parallel(sch.fuse(n, c))
    sch.vectorize(xi)
    init = sch.decompose_reduction(anchor, ry)
    sc.vectorize_init(sch, init)
    if not fused:
        sc.schedule_tail_generic(sch, anchor, lanes)


def schedule_dw_nhwc(sch: sc.Sched, anchor, info: TargetInfo) -> None:
    lanes = info.lanes("float32")
    cb, rb = sc.ann_int(sch, anchor, "dlas_cb"), sc.ann_int(sch, anchor, "dlas_rb")
    n, y, x, c, ry, rx = sch.get_loops(anchor)
    co, ci = sch.split(c, [None, cb])
    xo, xi = sc.register_tile(sch, x, rb)
    sch.reorder(n, y, xo, co, ry, rx, xi, ci)
    fused = sc.fuse_epilogue(sch, anchor, co, None, lanes)
    sc.schedule_producers(sch, anchor, lanes)
    sch.parallel(sch.fuse(n, y))
    sch.unroll(xi)
    sch.vectorize(ci)
    init = sch.decompose_reduction(anchor, ry)
    sc.vectorize_init(sch, init)
    if not fused:
        sc.schedule_tail_generic(sch, anchor, lanes)


def schedule_dw_nchwc(sch: sc.Sched, anchor, info: TargetInfo) -> None:
    lanes = info.lanes("float32")
    rb = sc.ann_int(sch, anchor, "dlas_rb")
    n, co, y, x, ci, ry, rx = sch.get_loops(anchor)
    cb = sc.extent(sch, ci)
    xo, xi = sc.register_tile(sch, x, rb)
    sch.reorder(n, co, y, xo, ry, rx, xi, ci)
    fused = sc.fuse_epilogue(sch, anchor, xo, nchwc_remap(cb), lanes, swap_inner=True)
    sc.schedule_producers(sch, anchor, lanes)
    sch.parallel(sch.fuse(n, co, y))
    sch.unroll(xi)
    sch.vectorize(ci)
    init = sch.decompose_reduction(anchor, ry)
    sc.vectorize_init(sch, init)
    if not fused:
        sc.schedule_tail_generic(sch, anchor, lanes)


def _emit_nchw(req: KernelRequest):
    return req.call(dw_nchw, req.data, req.const(weight_nchw(req.weight)), req.geom, req.out_dtype, req.info,
                    hint="dlas_dw_nchw")


def _emit_nhwc(req: KernelRequest):
    return req.call(dw_nhwc, req.data, req.const(weight_nhwc(req.weight)), req.geom, req.out_dtype, req.info,
                    hint="dlas_dw_nhwc")


def _emit_nchwc(req: KernelRequest):
    cb = channel_block_for(req.geom, req.info, req.out_dtype)
    return req.call(dw_nchwc, req.data, req.const(weight_nchwc(req.weight, cb)), req.geom, req.out_dtype, req.info,
                    cb, hint="dlas_dw_nchwc")


DW = ("depthwise_conv2d",)
register(Kernel("dw_nchw", "direct", DW, "NCHW", "NCHW", _emit_nchw, schedule_dw_nchw))
register(Kernel("dw_nhwc", "direct", DW, "NHWC", "NHWC", _emit_nhwc, schedule_dw_nhwc))
register(Kernel("dw_nchwc", "spatial_pack", DW, "NCHW", "NCHWc", _emit_nchwc, schedule_dw_nchwc))
