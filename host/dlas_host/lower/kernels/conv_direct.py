"""Direct (sliding-window) convolution in NCHW and NHWC; no reshaping of the activations.

NCHW: register tile of ``ob`` output channels x ``vw`` output columns, vectorized along the row.
NHWC: register tile of ``rb`` output columns x one SIMD vector of output channels (weights HWIO).
"""

from __future__ import annotations

import numpy as np
from tvm import te

from .. import schedule_cpu as sc
from ..common import ConvGeom, acc_cast, channel_block, pad_nchw, pad_nhwc, pick_block
from ..registry import Kernel, KernelRequest, register
from ..targets import TargetInfo


def weight_nchw(w_oihw: np.ndarray) -> np.ndarray:
    return w_oihw


def weight_nhwc(w_oihw: np.ndarray) -> np.ndarray:
    """OIHW -> HWIO so a vector of output channels is contiguous."""
    return np.ascontiguousarray(w_oihw.transpose(2, 3, 1, 0))


def _group_base(g: ConvGeom, o):
    return 0 if g.groups == 1 else (o // g.og) * g.cg


def direct_nchw(data: te.Tensor, weight: te.Tensor, g: ConvGeom, out_dtype: str, info: TargetInfo) -> te.Tensor:
    padded = pad_nchw(data, g)
    rc = te.reduce_axis((0, g.cg), "rc")
    ry = te.reduce_axis((0, g.kh), "ry")
    rx = te.reduce_axis((0, g.kw), "rx")
    (sh, sw), (dh, dw) = g.stride, g.dilation
    lanes = info.lanes(out_dtype)
    vw = pick_block(g.ow, max(lanes, 16))
    ob = pick_block(g.og, 8 if vw > lanes // 2 else 16)
    return te.compute(
        (g.n, g.o, g.oh, g.ow),
        lambda n, o, y, x: te.sum(
            acc_cast(padded[n, _group_base(g, o) + rc, y * sh + ry * dh, x * sw + rx * dw], out_dtype)
            * acc_cast(weight[o, rc, ry, rx], out_dtype),
            axis=[rc, ry, rx],
        ),
        name="dlas_conv_direct_nchw",
        attrs={"dlas_sched": "direct_nchw", "dlas_ob": ob, "dlas_vw": vw},
    )


def direct_nhwc(data: te.Tensor, weight: te.Tensor, g: ConvGeom, out_dtype: str, info: TargetInfo) -> te.Tensor:
    padded = pad_nhwc(data, g)
    rc = te.reduce_axis((0, g.cg), "rc")
    ry = te.reduce_axis((0, g.kh), "ry")
    rx = te.reduce_axis((0, g.kw), "rx")
    (sh, sw), (dh, dw) = g.stride, g.dilation
    lanes = info.lanes(out_dtype)
    oc = channel_block(g.o, lanes)
    rb = pick_block(g.ow, 8)
    return te.compute(
        (g.n, g.oh, g.ow, g.o),
        lambda n, y, x, o: te.sum(
            acc_cast(padded[n, y * sh + ry * dh, x * sw + rx * dw, _group_base(g, o) + rc], out_dtype)
            * acc_cast(weight[ry, rx, rc, o], out_dtype),
            axis=[ry, rx, rc],
        ),
        name="dlas_conv_direct_nhwc",
        attrs={"dlas_sched": "direct_nhwc", "dlas_oc": oc, "dlas_rb": rb},
    )


def schedule_direct_nchw(sch: sc.Sched, anchor, info: TargetInfo) -> None:
    lanes = info.lanes("float32")
    ob, vw = sc.ann_int(sch, anchor, "dlas_ob"), sc.ann_int(sch, anchor, "dlas_vw")
    n, o, y, x, rc, ry, rx = sch.get_loops(anchor)
    oo, oi = sch.split(o, [None, ob])
    xo, xi = sc.register_tile(sch, x, vw)
    sch.reorder(n, oo, y, xo, rc, ry, rx, oi, xi)
    fused = sc.fuse_epilogue(sch, anchor, xo, None, lanes)
    sc.schedule_producers(sch, anchor, lanes)
    par = sch.fuse(n, oo, y)
    sch.parallel(par)
    sch.unroll(oi)
    sch.vectorize(xi)
    init = sch.decompose_reduction(anchor, rc)
    sc.vectorize_init(sch, init)
    if not fused:
        sc.schedule_tail_generic(sch, anchor, lanes)


def schedule_direct_nhwc(sch: sc.Sched, anchor, info: TargetInfo) -> None:
    lanes = info.lanes("float32")
    oc, rb = sc.ann_int(sch, anchor, "dlas_oc"), sc.ann_int(sch, anchor, "dlas_rb")
    n, y, x, o, ry, rx, rc = sch.get_loops(anchor)
    oo, oi = sch.split(o, [None, oc])
    xo, xi = sc.register_tile(sch, x, rb)
    # channel block outside the column blocks: its weight slice stays in cache across the row
    sch.reorder(n, y, oo, xo, ry, rx, rc, xi, oi)
    fused = sc.fuse_epilogue(sch, anchor, xo, None, lanes)
    sc.schedule_producers(sch, anchor, lanes)
    par = sch.fuse(n, y, oo)
    sch.parallel(par)
    sch.unroll(xi)
    sch.vectorize(oi)
    init = sch.decompose_reduction(anchor, ry)
    sc.vectorize_init(sch, init)
    if not fused:
        sc.schedule_tail_generic(sch, anchor, lanes)


def _emit_nchw(req: KernelRequest):
    return req.call(direct_nchw, req.data, req.const(weight_nchw(req.weight)), req.geom, req.out_dtype, req.info,
                    hint="dlas_conv_direct_nchw")


def _emit_nhwc(req: KernelRequest):
    return req.call(direct_nhwc, req.data, req.const(weight_nhwc(req.weight)), req.geom, req.out_dtype, req.info,
                    hint="dlas_conv_direct_nhwc")


register(Kernel("direct_nchw", "direct", ("conv2d", "grouped_conv2d"), "NCHW", "NCHW", _emit_nchw,
                schedule_direct_nchw))
register(Kernel("direct_nhwc", "direct", ("conv2d", "grouped_conv2d"), "NHWC", "NHWC", _emit_nhwc,
                schedule_direct_nhwc))
