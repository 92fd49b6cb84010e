"""Tuned builds: the best record of every task, the default schedule where a task has none."""

from __future__ import annotations

import logging
from typing import Any

import tvm
from tvm import relax, tirx

from ..compile import CapabilityMissing
from ..devices import Device
from ..lower.policy import LoweringPolicy
from . import tuning_target
from .records import TuningRecords

log = logging.getLogger(__name__)


def apply_records(lowered: tvm.IRModule, target: Any, records: TuningRecords) -> tuple[tvm.IRModule, int, int]:
    """Replace each PrimFunc that has a record by its best schedule; returns (module, from records, total).

    A task whose best record lost to the default schedule when the tuner re-measured both keeps its
    default schedule (the record's win was measurement noise).
    """
    import tvm_ffi  # noqa: PLC0415
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod  # noqa: PLC0415

    database = records.database()
    with target, database:
        applied = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(lowered)
    keep_default = records.keep_default()
    total = tuned = 0
    for gv, func in list(applied.functions_items()):
        if not isinstance(func, tirx.PrimFunc):
            continue
        total += 1
        if func.attrs is None or "tirx.is_scheduled" not in func.attrs:
            continue
        if str(tvm_ffi.structural_hash(_normalize_mod(lowered[gv]))) in keep_default:
            applied[gv] = lowered[gv]  # scheduled by default below
        tuned += 1
    return applied, tuned, total


def build_tuned(mod: tvm.IRModule, device: Device, policy: LoweringPolicy, records: TuningRecords | None = None) -> Any:
    """Compile ``mod`` (already quantized) for ``device`` with its target's tuning records."""
    from .. import lower  # noqa: PLC0415

    target = tuning_target(device.tvm_target(), device.threads)
    records = records or TuningRecords(target)
    lowered = lower.lower(mod, target, policy, schedule=False)
    applied, tuned, total = apply_records(lowered, target, records)
    if tuned == 0:
        raise CapabilityMissing(f"no tuning records for this model on {device.name} (target {records.dir.name}); "
                                f"run `dlas-host tune --device {device.name}` with the same model options first")
    log.info("tuned build: %d of %d functions from records, the rest default schedules", tuned, total)
    scheduled = lower.schedule_module(applied, target)
    return tvm.compile(scheduled, target=target)
