"""Generic (untuned) CPU schedules: project-kernel anchors with fused epilogues, and a fallback for the rest.

Every PrimFunc of the fused module is scheduled here. A function whose blocks include a project kernel
(block name starting with ``dlas_``, with a ``dlas_sched`` annotation naming its schedule) gets that
kernel's schedule; the elementwise tail that FuseOps attached to it (bias add, residual add, relu/clip,
NCHWc unpack) is inlined into one block and computed at the kernel's register tile, so the output is
written once. Every other function gets the fallback: inline what can be inlined, parallelize the outer
spatial loops, vectorize the innermost one.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

from tvm import s_tir, tirx

from . import registry
from .targets import TargetInfo

Sched = s_tir.Schedule

UNFUSED_TAILS: list[str] = []
"""Anchors whose elementwise tail could not be computed at the register tile (diagnostics, tests)."""


SAMPLING: ContextVar[bool] = ContextVar("dlas_schedule_sampling", default=False)
"""True while ``dlas_host.tune`` generates its design space: register tiles become sampled decisions."""

SCHEDULE_WARNINGS: list[str] = []
"""Best-effort schedule steps that failed outside any ``collect_warnings()`` block (deduplicated, capped)."""

_WARNINGS: ContextVar[list[str] | None] = ContextVar("dlas_schedule_warnings", default=None)


@contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Collect, for the build in this block, every best-effort schedule step that failed (a block left
    serial or unvectorized, a pad not inlined): ``with collect_warnings() as warnings: ...``."""
    bucket: list[str] = []
    token = _WARNINGS.set(bucket)
    try:
        yield bucket
    finally:
        _WARNINGS.reset(token)


def _warn(sch: Sched, block, step: str, exc: Exception) -> None:
    """Record that ``step`` failed on ``block`` (the schedule goes on without it)."""
    try:
        where = f"{sch.mod.get_global_vars()[0].name_hint}/{sch.get(block).name_hint}"
    except Exception:  # noqa: BLE001 - the message must not fail the build either
        where = "?"
    lines = str(exc).strip().splitlines()
    message = f"{where}: {step} failed: {type(exc).__name__}: {lines[-1][:200] if lines else ''}"
    bucket = _WARNINGS.get()
    if bucket is not None:
        bucket.append(message)
    elif message not in SCHEDULE_WARNINGS and len(SCHEDULE_WARNINGS) < 1000:
        SCHEDULE_WARNINGS.append(message)


def register_tile(sch: Sched, loop, default: int) -> list:
    """Split ``loop`` into (outer, register tile): ``default`` wide, or a MetaSchedule-sampled exact tile.

    The register tile is each kernel's main knob (columns kept in registers across the reduction); the
    tuner's mutators change it and its cost model learns which widths pay on the device.
    """
    if SAMPLING.get():
        factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max(16, default))
        return list(sch.split(loop, factors))
    return list(sch.split(loop, [None, default]))


def root_blocks(sch: Sched) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def extent(sch: Sched, loop) -> int:
    return int(sch.get(loop).extent)


def annotations(sch: Sched, block) -> dict:
    return {str(k): v for k, v in sch.get(block).annotations.items()}


def ann_int(sch: Sched, block, key: str) -> int:
    return int(annotations(sch, block)[key])


def n_spatial(sch: Sched, block) -> int:
    return sum(1 for iv in sch.get(block).iter_vars if int(iv.iter_type) == 0)


def is_reduction(sch: Sched, block) -> bool:
    return any(int(iv.iter_type) != 0 for iv in sch.get(block).iter_vars)


def vectorize_inner(sch: Sched, loop, lanes: int) -> None:
    """Vectorize ``loop``: whole if short, else in exact ``lanes`` chunks (a non-dividing tail stays scalar)."""
    ext = extent(sch, loop)
    if ext <= 1:
        return
    if ext <= 4 * lanes:
        sch.vectorize(loop)
    elif ext % lanes == 0:
        _, inner = sch.split(loop, [None, lanes])
        sch.vectorize(inner)


def vectorize_init(sch: Sched, init) -> None:
    """Vectorize the innermost loop of a decomposed reduction's init block (best effort)."""
    try:
        loop = sch.get_loops(init)[-1]
        if extent(sch, loop) > 1:
            sch.vectorize(loop)
    except Exception as exc:  # noqa: BLE001 - the init stays scalar
        _warn(sch, init, "vectorize reduction init", exc)


def parallel_outer(sch: Sched, loops: list) -> None:
    if not loops:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if extent(sch, fused) > 1:
        sch.parallel(fused)


def schedule_block_generic(sch: Sched, block, lanes: int) -> None:
    """Parallel outer spatial loops; vectorize the innermost spatial loop of an elementwise block."""
    loops = sch.get_loops(block)
    if not loops:
        return
    ns = min(n_spatial(sch, block), len(loops))
    spatial = list(loops[:ns])
    if is_reduction(sch, block):
        # keep the reduction serial inside each thread; parallelize all spatial loops
        parallel_outer(sch, spatial)
        return
    if len(spatial) == 1:
        ext = extent(sch, spatial[0])
        if ext > 4 * lanes and ext % lanes == 0:
            outer, inner = sch.split(spatial[0], [None, lanes])
            sch.parallel(outer)
            sch.vectorize(inner)
        elif ext > 1:
            sch.vectorize(spatial[0])
        return
    last = spatial[-1]
    parallel_outer(sch, spatial[:-1])
    vectorize_inner(sch, last, lanes)


def inline_all(sch: Sched, blocks: list, keep: set) -> list:
    """Inline every injective block not in ``keep``; returns the blocks that remain."""
    remaining = []
    for b in blocks:
        name = sch.get(b).name_hint
        if name in keep or is_reduction(sch, b):
            remaining.append(b)
            continue
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001 - an output block or one with several consumers stays
            remaining.append(b)
    return remaining


def schedule_generic(sch: Sched, info: TargetInfo) -> None:
    blocks = root_blocks(sch)
    if not blocks:
        return
    lanes = info.lanes("float32")
    remaining = inline_all(sch, blocks[:-1], set()) + [blocks[-1]]
    for b in remaining:
        try:
            schedule_block_generic(sch, b, lanes)
        except Exception as exc:  # noqa: BLE001 - leave an odd block serial rather than fail the build
            _warn(sch, b, "generic schedule (block left serial)", exc)


def fuse_epilogue(sch: Sched, anchor, loop, remap: Callable | None, lanes: int, swap_inner: bool = False,
                  local: bool = True) -> bool:
    """Inline the anchor's elementwise tail into its last block and compute that at ``loop``.

    ``remap`` re-indexes the tail's iteration space to the anchor's (e.g. NCHW -> NCHWc) so that the
    tail tile is exactly the anchor's register tile. Returns False (tail left at root, scheduled
    generically) when that is not possible.
    """
    blocks = root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    idx = names.index(sch.get(anchor).name_hint)
    tail = blocks[idx + 1:]
    if not tail:
        return True
    try:
        rest = inline_all(sch, tail[:-1], set())
        if rest:
            raise ValueError("tail is not a chain of elementwise blocks")
        final = tail[-1]
        if remap is not None:
            sch.transform_block_layout(final, remap)
        sch.reverse_compute_at(final, loop, preserve_unit_loops=True)
        if swap_inner:  # NCHWc tile -> NCHW store: make the spatial column the vector axis
            a, b = sch.get_loops(final)[-2:]
            sch.reorder(b, a)
        inner = sch.get_loops(final)[-1]
        if extent(sch, inner) > 1:
            sch.vectorize(inner)
        if local:  # tensor intrinsics expect global-scope operands, so int8 kernels keep it
            try:
                sch.set_scope(anchor, 0, "local")
            except Exception as exc:  # noqa: BLE001 - the tile stays in global scope
                _warn(sch, anchor, "local scope for the register tile", exc)
        return True
    except Exception as exc:  # noqa: BLE001
        UNFUSED_TAILS.append(f"{sch.get(anchor).name_hint}: {str(exc).splitlines()[0][:200]}")
        return False


def schedule_tail_generic(sch: Sched, anchor, lanes: int) -> None:
    """Fallback when the tail could not be fused: every block after the anchor at root, generic."""
    blocks = root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    idx = names.index(sch.get(anchor).name_hint)
    for b in blocks[idx + 1:]:
        try:
            schedule_block_generic(sch, b, lanes)
        except Exception as exc:  # noqa: BLE001 - the tail block stays serial
            _warn(sch, b, "generic schedule of an unfused tail (block left serial)", exc)


def schedule_producers(sch: Sched, anchor, lanes: int) -> None:
    """Padding / packing blocks before the anchor: inline pads into packs, then parallel + vectorize."""
    blocks = root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    idx = names.index(sch.get(anchor).name_hint)
    prods = blocks[:idx]
    # a pad feeding a pack is inlined into it; a pad feeding the anchor directly stays materialized
    keep = {sch.get(b).name_hint for b in prods if "pack" in sch.get(b).name_hint or "col" in sch.get(b).name_hint}
    pads_into_pack = [b for b in prods if "pad" in sch.get(b).name_hint and keep]
    for b in pads_into_pack:
        try:
            sch.compute_inline(b)
        except Exception as exc:  # noqa: BLE001 - the pad stays materialized
            _warn(sch, b, "inline pad into pack", exc)
    blocks = root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    idx = names.index(sch.get(anchor).name_hint)
    for b in blocks[:idx]:
        try:
            schedule_block_generic(sch, b, lanes)
        except Exception as exc:  # noqa: BLE001 - the producer stays serial
            _warn(sch, b, "generic schedule of a producer (block left serial)", exc)


def find_anchor(sch: Sched):
    for b in root_blocks(sch):
        if "dlas_sched" in annotations(sch, b):
            return b
    return None


def apply_schedule(sch: Sched, info: TargetInfo) -> None:
    """Schedule the function held by ``sch`` in place (its trace is the tuner's default record)."""
    anchor = find_anchor(sch)
    if anchor is None:
        schedule_generic(sch, info)
        return
    registry.get(str(annotations(sch, anchor)["dlas_sched"])).cpu_schedule(sch, anchor, info)


def schedule_func(func: tirx.PrimFunc, info: TargetInfo) -> tirx.PrimFunc:
    sch = Sched(func)
    apply_schedule(sch, info)
    return sch.mod["main"]
