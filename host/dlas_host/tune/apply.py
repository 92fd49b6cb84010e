"""Tuned builds: the best record of every task, the default schedule where a task has none."""

from __future__ import annotations

import logging
from typing import Any

import tvm
from tvm import relax, tirx

from ..devices import Device
from ..lower.policy import LoweringPolicy
from . import tuning_target
from .records import TuningRecords

log = logging.getLogger(__name__)


class NoTuningRecords(LookupError):
    """The target has no record for any task of the model: the tuned build is skipped, not failed."""


def apply_records(lowered: tvm.IRModule, target: Any,
                  records: TuningRecords) -> tuple[tvm.IRModule, set[str], set[str], int]:
    """Replace each PrimFunc that has a record by its best schedule.

    Returns (module, names scheduled from records, names whose record lost to the default, PrimFunc count).

    A task whose best record lost to the default schedule when the tuner re-measured both keeps its
    default schedule (the record's win was measurement noise).
    """
    import tvm_ffi  # noqa: PLC0415
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod  # noqa: PLC0415

    database = records.database()
    with target, database:
        applied = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(lowered)
    keep_default = records.keep_default()
    total = 0
    tuned: set[str] = set()
    kept: set[str] = set()
    for gv, func in list(applied.functions_items()):
        if not isinstance(func, tirx.PrimFunc):
            continue
        total += 1
        if func.attrs is None or "tirx.is_scheduled" not in func.attrs:
            continue
        if str(tvm_ffi.structural_hash(_normalize_mod(lowered[gv]))) in keep_default:
            applied[gv] = lowered[gv]  # scheduled by default below
            kept.add(gv.name_hint)
            continue
        tuned.add(gv.name_hint)
    return applied, tuned, kept, total


def build_tuned(mod: tvm.IRModule, device: Device, policy: LoweringPolicy, records: TuningRecords | None = None,
                quantize: str | None = None) -> tuple[Any, list[Any]]:
    """Compile ``mod`` (already quantized) for ``device`` with its target's tuning records.

    Returns the executable and its build manifest, whose layers say which schedules came from records.
    """
    from .. import lower  # noqa: PLC0415

    target = tuning_target(device.tvm_target(), device.threads)
    records = records or TuningRecords(target)
    lowered = lower.lower_with_manifest(mod, target, policy, schedule=False, quantize=quantize)
    applied, tuned, kept, total = apply_records(lowered.mod, target, records)
    if not tuned and not kept:
        raise NoTuningRecords(f"no tuning records for this model on {device.name} (target {records.dir.name}); "
                                f"run `dlas-host tune --device {device.name}` with the same model options first")
    log.info("tuned build: %d of %d functions from records (%d records lost to the default), the rest default "
             "schedules", len(tuned), total, len(kept))
    scheduled = lower.schedule_module(applied, target)
    return tvm.compile(scheduled, target=target), lower.manifest.mark_tuned(lowered.manifest, tuned)
