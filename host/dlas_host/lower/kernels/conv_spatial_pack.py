"""Spatial-pack convolution: NCHWc activations, weights packed offline as constants.

Input is packed to ``[n, C/ib, H, W, ib]``, weights to ``[O/ob, C/ib, KH, KW, ib, ob]``; the kernel
computes ``[n, O/ob, OH, OW, ob]`` with a register tile of ``rb`` output columns x ``ob`` output
channels (one SIMD vector), then unpacks to NCHW inside the same fused function, together with the
elementwise tail (bias, residual, relu), at the register tile.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from .. import schedule_cpu as sc
from ..common import ConvGeom, acc_cast, pad_nchw, pick_block
from ..registry import Kernel, KernelRequest, register
from ..targets import TargetInfo


def blocks_for(g: ConvGeom, info: TargetInfo, out_dtype: str) -> tuple[int, int]:
    lanes = info.lanes(out_dtype)
    ob = pick_block(g.o, lanes)
    if ob < 4 and g.o > lanes:  # awkward channel count: narrower vectors that still divide
        ob = pick_block(g.o, 8)
    ib = pick_block(g.c, lanes) if g.c > 4 else g.c
    return ib, ob


def pack_weight(w_oihw: np.ndarray, ib: int, ob: int) -> np.ndarray:
    o, c, kh, kw = w_oihw.shape
    return np.ascontiguousarray(w_oihw.reshape(o // ob, ob, c // ib, ib, kh, kw).transpose(0, 2, 4, 5, 3, 1))


def pack_data(data: te.Tensor, g: ConvGeom, ib: int, name: str = "dlas_pack_nchwc") -> te.Tensor:
    padded = pad_nchw(data, g)
    hp, wp = g.h + g.pad[0] + g.pad[2], g.w + g.pad[1] + g.pad[3]
    return te.compute((g.n, g.c // ib, hp, wp, ib), lambda n, co, y, x, ci: padded[n, co * ib + ci, y, x], name=name)


def unpack(conv: te.Tensor, g: ConvGeom, ob: int) -> te.Tensor:
    return te.compute((g.n, g.o, g.oh, g.ow), lambda n, o, y, x: conv[n, o // ob, y, x, o % ob], name="dlas_unpack")


def spatial_pack_nchw(data: te.Tensor, wp: te.Tensor, g: ConvGeom, out_dtype: str, info: TargetInfo,
                      ib: int, ob: int) -> te.Tensor:
    dvec = pack_data(data, g, ib)
    (sh, sw), (dh, dw) = g.stride, g.dilation
    rco = te.reduce_axis((0, g.c // ib), "rco")
    rci = te.reduce_axis((0, ib), "rci")
    ry = te.reduce_axis((0, g.kh), "ry")
    rx = te.reduce_axis((0, g.kw), "rx")
    rb = pick_block(g.ow, 14 if ob <= info.lanes(out_dtype) else 7)
    conv = te.compute(
        (g.n, g.o // ob, g.oh, g.ow, ob),
        lambda n, oc, y, x, oi: te.sum(
            acc_cast(dvec[n, rco, y * sh + ry * dh, x * sw + rx * dw, rci], out_dtype)
            * acc_cast(wp[oc, rco, ry, rx, rci, oi], out_dtype),
            axis=[rco, ry, rx, rci],
        ),
        name="dlas_conv_sp_nchwc",
        attrs={"dlas_sched": "spatial_pack", "dlas_rb": rb},
    )
    return unpack(conv, g, ob)


def nchwc_remap(ob: int):
    """Re-index an NCHW tail block into the NCHWc tile order (n, o//ob, y, x, o%ob)."""
    return lambda n, o, y, x: (n, o // ob, y, x, o % ob)


def schedule_spatial_pack(sch: sc.Sched, anchor, info: TargetInfo) -> None:
    lanes = info.lanes("float32")
    rb = sc.ann_int(sch, anchor, "dlas_rb")
    n, oc, y, x, oi, rco, ry, rx, rci = sch.get_loops(anchor)
    ob = sc.extent(sch, oi)
    xo, xi = sc.register_tile(sch, x, rb)
    if sc.SAMPLING.get():  # tuning: a 2-D register tile (rows x columns), weights reused across rows
        yo, yi = sch.split(y, sch.sample_perfect_tile(y, n=2, max_innermost_factor=4))
        sch.reorder(n, oc, yo, xo, rco, ry, rx, rci, yi, xi, oi)
        fused = sc.fuse_epilogue(sch, anchor, xo, nchwc_remap(ob), lanes, swap_inner=True)
        sc.schedule_producers(sch, anchor, lanes)
        sch.parallel(sch.fuse(n, oc, yo))
        sch.unroll(yi)
    else:
        sch.reorder(n, oc, y, xo, rco, ry, rx, rci, xi, oi)
        fused = sc.fuse_epilogue(sch, anchor, xo, nchwc_remap(ob), lanes, swap_inner=True)
        sc.schedule_producers(sch, anchor, lanes)
        sch.parallel(sch.fuse(n, oc, y))
    sch.unroll(xi)
    sch.vectorize(oi)
    init = sch.decompose_reduction(anchor, rco)
    sc.vectorize_init(sch, init)
    if not fused:
        sc.schedule_tail_generic(sch, anchor, lanes)


def _emit(req: KernelRequest):
    ib, ob = blocks_for(req.geom, req.info, req.out_dtype)
    wp = req.const(pack_weight(req.weight, ib, ob))
    return req.call(spatial_pack_nchw, req.data, wp, req.geom, req.out_dtype, req.info, ib, ob,
                    hint="dlas_conv_sp_nchwc")


register(Kernel("spatial_pack", "spatial_pack", ("conv2d",), "NCHW", "NCHWc", _emit, schedule_spatial_pack))
