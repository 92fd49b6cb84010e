"""The observation rules: each a pure function from normalised rows to findings, run in this order."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from ..findings import Finding
from ..rows import Meas, prepare
from .accuracy import accuracy_cost
from .algorithm import algorithms
from .compression import compression_by_device
from .correlation import correlations
from .quality import emulated_timings, failures, unstable_timings
from .quantization import quantization_native
from .sparse import sparse_crossover
from .systems import best_system
from .transfer import transfer_share
from .tuning import tuning_changes_best

Rule = Callable[[list[Meas]], list[Finding]]

RULES: list[Rule] = [
    best_system, algorithms, tuning_changes_best, quantization_native, sparse_crossover, compression_by_device,
    accuracy_cost, correlations, transfer_share, unstable_timings, emulated_timings, failures,
]


def observe(rows: Iterable[Mapping[str, Any] | Meas]) -> list[Finding]:
    meas = prepare(rows)
    return [f for rule in RULES for f in rule(meas)]
