"""Generic (untuned) CUDA schedules.

Project kernels (anchors): one output element per thread, spatial loops fused and bound to
blockIdx/threadIdx, reduction serial in a register accumulator, producers (pad/pack/im2col) inlined into
the kernel; the elementwise tail runs as a second kernel of the same function. Everything else: dlight's default GPU
rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback).
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from . import schedule_cpu as sc
from .targets import TargetInfo

THREADS = 128


def schedule_anchor_gpu(sch: sc.Sched, anchor, threads: int = THREADS) -> None:
    blocks = sc.root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    idx = names.index(sch.get(anchor).name_hint)
    for b in reversed(blocks[:idx]):  # pads, packs, im2col: recomputed in the kernel
        sch.compute_inline(b)
    blocks = sc.root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    idx = names.index(sch.get(anchor).name_hint)
    tail = blocks[idx + 1:]
    for b in tail[:-1]:
        sch.compute_inline(b)
    ns = sc.n_spatial(sch, anchor)
    loops = sch.get_loops(anchor)
    spatial = sch.fuse(*loops[:ns])
    bx, tx = sch.split(spatial, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    local = sch.cache_write(anchor, 0, "local")
    sch.reverse_compute_at(local, tx, preserve_unit_loops=True)
    if tail:
        final = sc.root_blocks(sch)[-1]
        floops = sch.get_loops(final)
        f = sch.fuse(*floops)
        fb, ft = sch.split(f, [None, threads])
        sch.bind(fb, "blockIdx.x")
        sch.bind(ft, "threadIdx.x")


def schedule_module_gpu(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    from tvm.s_tir import dlight as dl  # noqa: PLC0415

    out = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        sch = sc.Sched(func)
        anchor = sc.find_anchor(sch)
        if anchor is None:
            continue
        try:
            schedule_anchor_gpu(sch, anchor)
            out[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        except Exception:  # noqa: BLE001 - let dlight's fallback take it
            pass
    for gv, f in out.items():
        mod[gv] = f
    with target:
        mod = dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
        )(mod)
    return mod
