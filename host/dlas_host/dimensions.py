"""The DLAS dimensions a job varies, declared once: name, sweep-grid key, default, help, allowed values.

The sweep spec schema (``sweep.spec.Grid`` and ``Job``), its validation, the results store's dimension
columns and the CLI's choices are generated from this table. Allowed values come from the layer that owns
them (algorithms and layouts from the kernel registry, systems from the engines, models and datasets from
the zoo), so adding a value is one registration where it is implemented; adding a dimension is one entry
here. Values are looked up lazily: importing this module imports neither torch nor TVM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable
from .errors import DlasError

QUANTIZATIONS = ("float32", "float16", "bfloat16", "int8")
TUNINGS = ("untuned", "tuned")
SPARSE_FORMATS = ("dense", "csr", "bsr", "coo")  # the sparse kernels (lower/sparse*.py) implement csr, bsr, coo


class DimensionError(DlasError, ValueError):
    """A value a dimension does not know; the message lists the known ones."""


def _algorithms() -> tuple[str, ...]:
    from .lower import registry  # noqa: PLC0415 - imports TVM

    return registry.algorithms()


def _layouts() -> tuple[str, ...]:
    from .lower import registry  # noqa: PLC0415

    return tuple(dict.fromkeys(lay for a in registry.algorithms() for lay in registry.conv_layouts(a)))


def _systems() -> tuple[str, ...]:
    from .engines import ENGINES  # noqa: PLC0415 - a dict of module names, no framework import

    return ("tvm", *ENGINES)


def _models() -> tuple[str, ...]:
    from . import zoo  # noqa: PLC0415

    return tuple(zoo.MODELS)


def _datasets() -> tuple[str, ...]:
    from . import zoo  # noqa: PLC0415

    return tuple(zoo.DATASETS)


def _check_pruning(value: str) -> None:
    if value != "none":
        from .optimize.spec import PruneSpec  # noqa: PLC0415

        PruneSpec.parse(value)


def parse_block(text: str) -> tuple[int, int]:
    """``"4x1"`` -> (4, 1): a BSR block of rows (output channels) x columns; a DimensionError otherwise."""
    rows, sep, cols = text.strip().lower().partition("x")
    if not (sep and rows.isdigit() and cols.isdigit() and int(rows) > 0 and int(cols) > 0):
        raise DimensionError(f"bad BSR block {text!r}; expected RxC with positive integers, e.g. 4x1")
    return int(rows), int(cols)


@dataclass(frozen=True)
class Dimension:
    name: str  # job key
    grid: str  # key of the sweep grid's list of values
    default: str
    help: str
    column: str = ""  # result column ("" = same as name)
    choices: Callable[[], tuple[str, ...]] | None = None  # the known values (None: checked by `parse`)
    parse: Callable[[str], None] | None = None  # validates an open-ended value (raises a one-line ValueError)
    tvm_only: bool = False  # framework baselines have no such choice: the value collapses to `not_applicable`
    not_applicable: str = "n/a"
    cheap: bool = False  # its values are known without importing torch or TVM (so CLI help can list them)

    def help_text(self) -> str:
        return f"{self.help}: {' | '.join(self.known())}" if self.cheap else self.help

    @property
    def result_column(self) -> str:
        return self.column or self.name

    def known(self) -> tuple[str, ...]:
        return self.choices() if self.choices else ()

    def check(self, value: str) -> None:
        if self.choices is not None and value not in self.known():
            raise DimensionError(f"unknown {self.name.replace('_', ' ')} {value!r}; supported: "
                                 f"{', '.join(self.known())}")
        if self.parse is not None:
            self.parse(value)


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("device", "devices", "local", "device names, tag:NAME or all (devices.yaml)"),
    Dimension("dataset", "datasets", "cifar10", "dataset the model is shaped for", choices=_datasets),
    Dimension("model", "models", "resnet18", "zoo model", choices=_models),
    Dimension("pruning", "pruning", "none", "none or KIND:SCOPE:SCORE:AMOUNT[:block=RxC] (see `dlas-host optimize`)",
              parse=_check_pruning),
    Dimension("quantization", "quantization", "float32", "weights and activations dtype", choices=lambda: QUANTIZATIONS,
              cheap=True),
    Dimension("algorithm", "algorithms", "spatial_pack", "convolution algorithm: one a kernel registers "
              "(`dlas-host kernels` lists them) or stock (TVM's own pipeline)", choices=_algorithms, tvm_only=True),
    Dimension("layout", "layouts", "NCHW", "activation layout: NCHW, NHWC or NCHWc, as the algorithm's kernels read",
              choices=_layouts, tvm_only=True),
    Dimension("sparse_format", "sparse_formats", "dense", "weight format of layers sparse enough to gain",
              choices=lambda: SPARSE_FORMATS, tvm_only=True, not_applicable="dense", cheap=True),
    Dimension("bsr_block", "bsr_blocks", "4x1", "RxC block of BSR layers", column="sparse_block",
              parse=parse_block, tvm_only=True, not_applicable=""),
    Dimension("system", "systems", "tvm", "tvm or a framework baseline", choices=_systems, cheap=True),
    Dimension("tuning", "tuning", "untuned", "TVM schedules: the project's defaults or tuning records",
              choices=lambda: TUNINGS, tvm_only=True, cheap=True),
)
BY_NAME = {d.name: d for d in DIMENSIONS}

RESULT_AXES = ("dataset", "model", "batch", "pruning", "quantization", "algorithm", "layout", "sparse_format",
               "sparse_block", "sparsity", "system", "tuning", "device", "target")
"""Result columns that say what was measured (the dimensions' columns plus batch, sparsity and target)."""
assert {d.result_column for d in DIMENSIONS} <= set(RESULT_AXES)


def get(name: str) -> Dimension:
    return BY_NAME[name]


def applicable(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the dimensions that do not apply to its system collapsed (equal jobs, equal keys)."""
    out = dict(values)
    if out.get("system", "tvm") != "tvm":
        out.update({d.name: d.not_applicable for d in DIMENSIONS if d.tvm_only})
    if out.get("sparse_format") != "bsr":
        out["bsr_block"] = ""
    return out
