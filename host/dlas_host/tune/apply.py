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
    """Replace each PrimFunc that has a record by its best schedule; returns (module, tuned, total)."""
    database = records.database()
    with target, database:
        applied = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(lowered)
    total = tuned = 0
    for gv, func in applied.functions_items():
        if isinstance(func, tirx.PrimFunc):
            total += 1
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
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
