"""Generic (untuned) CUDA schedules.

Project kernels (anchors): see ``schedule_anchor_gpu`` (thread per output, shared-memory staging of
each reduction chunk); the elementwise tail runs as a second kernel of the same function. If a kernel
cannot take that schedule, dlight's fallback schedules it. Everything else: dlight's default GPU
rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback).
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from . import schedule_cpu as sc
from .targets import TargetInfo

THREADS = 128
SHARED_LIMIT_BYTES = 48 * 1024  # static shared memory per block on every CUDA arch


def schedule_anchor_gpu(sch: sc.Sched, anchor, threads: int = THREADS, chunk: int = 8, stage: bool = True) -> None:
    """Shared-memory tiled schedule for any project kernel.

    A thread block computes ``threads`` consecutive outputs (one per thread, accumulated in a register).
    The outermost reduction loop is split into chunks; per chunk, every input the kernel reads
    (activation region, weight slice) is staged into shared memory by a cooperative fetch of all the
    block's threads, so neighbouring outputs reuse each loaded element.
    """
    blocks = sc.root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    idx = names.index(sch.get(anchor).name_hint)
    for b in reversed(blocks[:idx]):  # pads, packs, im2col: recomputed while staging
        sch.compute_inline(b)
    blocks = sc.root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    idx = names.index(sch.get(anchor).name_hint)
    tail = blocks[idx + 1:]
    for b in tail[:-1]:
        sch.compute_inline(b)
    ns = sc.n_spatial(sch, anchor)
    loops = sch.get_loops(anchor)
    spatial, reduce = loops[:ns], loops[ns:]
    fused = sch.fuse(*spatial)
    bx, tx = sch.split(fused, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    local = sch.cache_write(anchor, 0, "local")
    sch.reverse_compute_at(local, tx, preserve_unit_loops=True)
    if reduce and stage:
        ko, _ = sch.split(reduce[0], [None, min(chunk, sc.extent(sch, reduce[0]))])
        n_reads = len(sch.get(anchor).reads)
        for i in range(n_reads):
            shared = sch.cache_read(anchor, i, "shared")
            sch.compute_at(shared, ko)
            fetch = sch.fuse(*sch.get_loops(shared)[3:])  # loops below (bx, tx, ko)
            _, ft = sch.split(fetch, [None, threads])
            sch.bind(ft, "threadIdx.x")
    if tail:
        final = sc.root_blocks(sch)[-1]
        f = sch.fuse(*sch.get_loops(final))
        fb, ft = sch.split(f, [None, threads])
        sch.bind(fb, "blockIdx.x")
        sch.bind(ft, "threadIdx.x")


def shared_bytes(func: tirx.PrimFunc) -> int:
    """Shared memory one block of ``func`` allocates once buffers are compacted, as the build will do."""
    from tvm.s_tir import analysis as sa  # noqa: PLC0415
    from tvm.s_tir import transform as st  # noqa: PLC0415

    mod = tvm.IRModule({"main": func})
    mod = tvm.transform.Sequential([st.LowerInitBlock(), st.PlanAndUpdateBufferAllocationLocation(),
                                    st.ConvertBlocksToOpaque(), st.CompactBufferAllocation(),
                                    st.LowerOpaqueBlock()])(mod)
    sizes = sa.calculate_allocated_bytes(mod["main"])
    sizes = sizes.get("main", sizes) if hasattr(sizes, "get") else sizes
    return int(sizes.get("shared", 0)) if hasattr(sizes, "get") else 0


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
            if shared_bytes(sch.mod["main"]) > SHARED_LIMIT_BYTES:  # staging too big: read global memory
                sch = sc.Sched(func)
                schedule_anchor_gpu(sch, sc.find_anchor(sch), stage=False)
            out[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        except Exception as exc:  # noqa: BLE001 - let dlight's fallback take it
            sc.UNFUSED_TAILS.append(f"gpu {gv.name_hint}: {str(exc).splitlines()[0][:200]}")
    for gv, f in out.items():
        mod[gv] = f
    with target:
        mod = dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
        )(mod)
    return mod
