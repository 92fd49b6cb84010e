"""int8 x int8 -> int32 kernels with hardware dot products (spatial-pack conv, dense).

x86 AVX512-VNNI ``vpdpbusd`` multiplies *unsigned* bytes by signed bytes, 16 int32 lanes x 4-byte
groups (``dot_16x4_vnni``). Signed int8 activations are shifted to uint8 (+128) while packing and the
exact correction ``128 * sum(weights)`` per output channel is subtracted in the unpack step, so results
equal the int8 reference bit for bit. Arm ``sdot`` (``dot_4x4_i8i8s32_sdot``) is signed x signed,
4 lanes x 4 bytes, no shift. Layouts: activations ``[n, C/4, H, W, 4]``, weights
``[O/L, C/4, KH, KW, L, 4]`` (L = 16 VNNI, 4 sdot), padded with zeros up to a multiple of 4 channels.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from .. import schedule_cpu as sc
from ..common import ConvGeom, pad_nchw, pick_block
from ..registry import Kernel, KernelRequest, register
from .conv_spatial_pack import nchwc_remap
from ..targets import TargetInfo

INTRIN = {"vnni": "dlas_dot_16x4_vnni", "sdot": "dlas_dot_4x4_sdot"}
_REGISTERED = False


def _register_intrinsics() -> None:
    """Register our two dot-product intrinsics once.

    Own versions rather than ``tvm.s_tir.tensor_intrin``'s: TVM's ``dot_16x4_vnni`` passes ``<16 x i32>``
    operands to ``llvm.x86.avx512.vpdpbusd.512``, which LLVM 22 (the wheel's) declares with ``<64 x i8>``
    operands and rejects at verification; and importing that package costs ~23 s (CUDA intrinsics).
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from tvm.s_tir import TensorIntrin  # noqa: PLC0415

    for key, (lanes, a_dtype, llvm_name, ops) in {
        "vnni": (16, "uint8", "llvm.x86.avx512.vpdpbusd.512", 64),
        "sdot": (4, "int8", "llvm.aarch64.neon.sdot.v4i32.v16i8", 16),
    }.items():
        TensorIntrin.register(INTRIN[key], _dot_desc(lanes, a_dtype), _dot_impl(lanes, a_dtype, llvm_name, ops),
                              override=True)
    _REGISTERED = True


def _dot_desc(lanes: int, a_dtype: str):
    """C[i] += A[k] * B[i, k] for i < lanes, k < 4 (int32 accumulation)."""
    from tvm.script import tirx as T  # noqa: PLC0415

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _dot_impl(lanes: int, a_dtype: str, llvm_name: str, nbytes: int):
    """One instruction: the 4 A bytes broadcast to every lane, B's lanes x 4 bytes, lanes int32 sums."""
    from tvm.script import tirx as T  # noqa: PLC0415

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a_word = T.reinterpret(A.vload([0], f"{a_dtype}x4"), dtype="int32")
            a_bytes = T.reinterpret(T.broadcast(a_word, lanes), dtype=f"{a_dtype}x{nbytes}")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_name),
                C.vload([0], dtype=f"int32x{lanes}"),
                a_bytes,
                B.vload([0, 0], dtype=f"int8x{nbytes}"),
                dtype=f"int32x{lanes}",
            )

    return impl


def lanes_for(info: TargetInfo) -> int:
    return 16 if info.int8_dot == "vnni" else 4


def int8_dot_usable(g: ConvGeom, info: TargetInfo, out_dtype: str) -> bool:
    return info.int8_dot in INTRIN and out_dtype == "int32" and g.groups == 1 and g.o % lanes_for(info) == 0


def dense_int8_usable(w_shape: tuple[int, int], info: TargetInfo, out_dtype: str) -> bool:
    return info.int8_dot in INTRIN and out_dtype == "int32" and w_shape[1] % lanes_for(info) == 0


def _shift(info: TargetInfo) -> bool:
    return info.int8_dot == "vnni"


def pack_weight(w_oihw: np.ndarray, ib: int, ob: int, info: TargetInfo) -> tuple[np.ndarray, np.ndarray]:
    o, c, kh, kw = w_oihw.shape
    cp = -(-c // ib) * ib
    w = np.zeros((o, cp, kh, kw), np.int8)
    w[:, :c] = w_oihw
    wp = np.ascontiguousarray(w.reshape(o // ob, ob, cp // ib, ib, kh, kw).transpose(0, 2, 4, 5, 1, 3))
    comp = (128 * w_oihw.astype(np.int32).sum(axis=(1, 2, 3))) if _shift(info) else np.zeros(o, np.int32)
    return wp, comp.astype(np.int32)


def pack_dense(w_kn: np.ndarray, info: TargetInfo) -> tuple[np.ndarray, np.ndarray]:
    k, n = w_kn.shape
    lanes = lanes_for(info)
    kp = -(-k // 4) * 4
    w = np.zeros((kp, n), np.int8)
    w[:k] = w_kn
    wp = np.ascontiguousarray(w.reshape(kp // 4, 4, n // lanes, lanes).transpose(2, 0, 3, 1))
    comp = (128 * w_kn.astype(np.int32).sum(axis=0)) if _shift(info) else np.zeros(n, np.int32)
    return wp, comp.astype(np.int32)


def _to_dot_dtype(v, info: TargetInfo):
    if _shift(info):
        return (v.astype("int32") + 128).astype("uint8")
    return v


def conv_int8_nchwc(data: te.Tensor, wp: te.Tensor, comp: te.Tensor, g: ConvGeom, info: TargetInfo,
                    ib: int, ob: int) -> te.Tensor:
    padded = pad_nchw(data, g)
    cpo = int(wp.shape[1])
    hp, wpad = g.h + g.pad[0] + g.pad[2], g.w + g.pad[1] + g.pad[3]
    dot_dtype = "uint8" if _shift(info) else "int8"

    def pack_f(n, co, y, x, ci):
        c = co * ib + ci
        val = _to_dot_dtype(padded[n, tirx.min(c, g.c - 1), y, x], info)
        return tirx.if_then_else(c < g.c, val, tirx.const(0, dot_dtype)) if cpo * ib != g.c else val

    dvec = te.compute((g.n, cpo, hp, wpad, ib), pack_f, name="dlas_pack_int8")
    (sh, sw), (dh, dw) = g.stride, g.dilation
    rco, rci = te.reduce_axis((0, cpo), "rco"), te.reduce_axis((0, ib), "rci")
    ry, rx = te.reduce_axis((0, g.kh), "ry"), te.reduce_axis((0, g.kw), "rx")
    conv = te.compute(
        (g.n, g.o // ob, g.oh, g.ow, ob),
        lambda n, oc, y, x, oi: te.sum(
            dvec[n, rco, y * sh + ry * dh, x * sw + rx * dw, rci].astype("int32")
            * wp[oc, rco, ry, rx, oi, rci].astype("int32"),
            axis=[rco, ry, rx, rci]),
        name="dlas_conv_int8", attrs={"dlas_sched": "conv_int8", "dlas_rb": pick_block(g.ow, 8),
                                      "dlas_dot": info.int8_dot or ""})
    return te.compute((g.n, g.o, g.oh, g.ow), lambda n, o, y, x: conv[n, o // ob, y, x, o % ob] - comp[o],
                      name="dlas_unpack")


def dense_int8(x: te.Tensor, wp: te.Tensor, comp: te.Tensor, n_out: int, info: TargetInfo) -> te.Tensor:
    lead = [int(s) for s in x.shape[:-1]]
    k = int(x.shape[-1])
    kpo, lanes = int(wp.shape[1]), int(wp.shape[2])
    dot_dtype = "uint8" if _shift(info) else "int8"

    def pack_f(*idx):
        *m, ko, ki = idx
        kk = ko * 4 + ki
        val = _to_dot_dtype(x[(*m, tirx.min(kk, k - 1))], info)
        return tirx.if_then_else(kk < k, val, tirx.const(0, dot_dtype)) if kpo * 4 != k else val

    xq = te.compute((*lead, kpo, 4), pack_f, name="dlas_pack_int8")
    rko, rki = te.reduce_axis((0, kpo), "rko"), te.reduce_axis((0, 4), "rki")

    def acc_f(*idx):
        *m, jo, ji = idx
        return te.sum(xq[(*m, rko, rki)].astype("int32") * wp[jo, rko, ji, rki].astype("int32"), axis=[rko, rki])

    acc = te.compute((*lead, n_out // lanes, lanes), acc_f, name="dlas_dense_int8",
                     attrs={"dlas_sched": "dense_int8", "dlas_dot": info.int8_dot or ""})

    def out_f(*idx):
        *m, j = idx
        return acc[(*m, j // lanes, j % lanes)] - comp[j]

    return te.compute((*lead, n_out), out_f, name="dlas_unpack")


def schedule_conv_int8(sch: sc.Sched, anchor, info: TargetInfo) -> None:
    _register_intrinsics()
    lanes = info.lanes("float32")
    rb = sc.ann_int(sch, anchor, "dlas_rb")
    dot = str(sc.annotations(sch, anchor)["dlas_dot"])
    n, oc, y, x, oi, rco, ry, rx, rci = sch.get_loops(anchor)
    ob = sc.extent(sch, oi)
    xo, xi = sc.register_tile(sch, x, rb)
    sch.reorder(n, oc, y, xo, rco, ry, rx, xi, oi, rci)
    fused = sc.fuse_epilogue(sch, anchor, xo, nchwc_remap(ob), lanes, swap_inner=True, local=False)
    sc.schedule_producers(sch, anchor, lanes)
    sch.parallel(sch.fuse(n, oc, y))
    sch.unroll(xi)
    init = sch.decompose_reduction(anchor, rco)
    sc.vectorize_init(sch, init)
    if not fused:
        sc.schedule_tail_generic(sch, anchor, lanes)
    sch.tensorize(oi, INTRIN[dot])


def schedule_dense_int8(sch: sc.Sched, anchor, info: TargetInfo) -> None:
    _register_intrinsics()
    lanes = info.lanes("float32")
    dot = str(sc.annotations(sch, anchor)["dlas_dot"])
    *lead, jo, ji, rko, rki = sch.get_loops(anchor)
    sch.reorder(*lead, jo, rko, ji, rki)
    ln = sc.extent(sch, ji)
    fused = sc.fuse_epilogue(sch, anchor, jo, lambda *idx: (*idx[:-1], idx[-1] // ln, idx[-1] % ln), lanes,
                             local=False)
    sc.schedule_producers(sch, anchor, lanes)
    outer = sch.fuse(*lead, jo) if lead else jo
    sch.parallel(outer)
    init = sch.decompose_reduction(anchor, rko)
    sc.vectorize_init(sch, init)
    if not fused:
        sc.schedule_tail_generic(sch, anchor, lanes)
    sch.tensorize(ji, INTRIN[dot])


def _signed_int8(req: KernelRequest) -> bool:
    return req.dtype == "int8" and req.weight.dtype == np.int8  # the VNNI shift trick assumes signed int8


def _emit_conv(req: KernelRequest):
    ib, ob = 4, lanes_for(req.info)
    wp, comp = pack_weight(req.weight, ib, ob, req.info)
    return req.call(conv_int8_nchwc, req.data, req.const(wp, "int8"), req.const(comp, "int32"), req.geom, req.info,
                    ib, ob, hint="dlas_conv_sp_int8")


def _emit_dense(req: KernelRequest):
    wp, comp = pack_dense(req.weight, req.info)
    return req.call(dense_int8, req.data, req.const(wp, "int8"), req.const(comp, "int32"), req.weight.shape[1],
                    req.info, hint="dlas_dense_int8")


register(Kernel("conv_int8", "spatial_pack", ("conv2d",), "NCHW", "NCHWc", _emit_conv, schedule_conv_int8,
                dtypes=("int8",), priority=10,
                usable=lambda req: _signed_int8(req) and int8_dot_usable(req.geom, req.info, req.out_dtype)))
register(Kernel("dense_int8", "gemm", ("dense",), "", "NC", _emit_dense, schedule_dense_int8, dtypes=("int8",),
                priority=10,
                usable=lambda req: _signed_int8(req) and dense_int8_usable(req.weight.shape, req.info, req.out_dtype)))
