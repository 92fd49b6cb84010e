"""The kernel registry: the one list of project kernels, filled by the kernel modules themselves.

Each module in ``lower/kernels/`` calls ``register(Kernel(...))`` at import: its name (the ``dlas_sched``
annotation of its anchor block), the algorithm and layer kinds it implements, the graph layout it reads,
the dtypes it takes, how to emit it into a Relax module and how to schedule it on a CPU. Everything that
lists algorithms (policy validation, the dispatcher, the scheduler, the build manifest, CLI help) asks
this module, so a new algorithm is one new file in ``lower/kernels/`` (see ``docs/adding-a-kernel.md``).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from ..errors import DlasError

OPS = ("conv2d", "grouped_conv2d", "depthwise_conv2d", "dense")
"""Layer kinds a kernel can implement (a grouped conv is not depthwise; dense = matmul with constant weights)."""
DTYPES = ("float32", "float16", "bfloat16", "int8")
STOCK = "stock"
"""TVM's own legalization and schedules: always available, never registered."""

KERNEL_PATTERN = 4  # relax kOutEWiseFusable: FuseOps may append the elementwise tail (bias, residual, relu)


class KernelLookupError(DlasError, ValueError):
    """No registered kernel implements the requested combination; the message lists what exists."""


@dataclass
class KernelRequest:
    """One layer to emit: what a kernel's ``emit`` and ``usable`` receive."""

    bb: Any  # relax.BlockBuilder
    data: Any  # the activation (relax.Expr)
    weight: np.ndarray  # OIHW for convolutions, (K, N) for dense layers
    geom: Any  # ConvGeom for convolutions, None for dense layers
    dtype: str  # activation dtype
    out_dtype: str
    info: Any  # TargetInfo

    def const(self, array: np.ndarray, dtype: str | None = None) -> Any:
        """A relax constant of ``array`` in ``dtype`` (default: the activation dtype; bfloat16 via ml_dtypes)."""
        from tvm import relax  # noqa: PLC0415

        return relax.const(np.ascontiguousarray(array).astype(np_dtype(dtype or self.dtype)))

    def call(self, fn: Callable, *args: Any, hint: str) -> Any:
        """``call_te`` with the relax tensors first; geometry and block sizes are closed over."""
        from tvm import relax  # noqa: PLC0415

        exprs = [a for a in args if isinstance(a, relax.Expr)]
        rest = args[len(exprs):]
        return self.bb.call_te(lambda *ts: fn(*ts, *rest), *exprs, primfunc_name_hint=hint,
                               primfunc_attrs={"op_pattern": KERNEL_PATTERN})


def _always(_req: KernelRequest) -> bool:
    return True


@dataclass(frozen=True)
class Kernel:
    name: str  # registry key: the ``dlas_sched`` annotation of the kernel's anchor block
    algorithm: str  # direct | gemm | spatial_pack | ... (the policy's algorithm names)
    ops: tuple[str, ...]  # layer kinds it implements (OPS)
    layout: str  # graph layout it reads and writes: NCHW | NHWC ("" for dense layers)
    tile_layout: str  # layout of its register tile (NCHWc for packed kernels); reported in the manifest
    emit: Callable[[KernelRequest], Any]
    cpu_schedule: Callable[..., None]
    dtypes: tuple[str, ...] = DTYPES
    usable: Callable[[KernelRequest], bool] = field(default=_always)  # e.g. needs a dot instruction
    priority: int = 0  # among usable kernels of one combination the highest wins (int8 dot before generic)


_KERNELS: dict[str, Kernel] = {}
_loaded = False


def register(kernel: Kernel) -> Kernel:
    if kernel.name in _KERNELS and _KERNELS[kernel.name] is not kernel:
        raise ValueError(f"kernel {kernel.name!r} registered twice")
    bad = set(kernel.ops) - set(OPS)
    if bad:
        raise ValueError(f"kernel {kernel.name!r}: unknown op(s) {sorted(bad)}; known: {', '.join(OPS)}")
    _KERNELS[kernel.name] = kernel
    return kernel


def load() -> dict[str, Kernel]:
    """Import every module of ``lower/kernels/`` once (they register themselves); returns the registry."""
    global _loaded
    if not _loaded:
        from . import kernels  # noqa: PLC0415

        for mod in pkgutil.iter_modules(kernels.__path__):
            importlib.import_module(f"{kernels.__name__}.{mod.name}")
        _loaded = True
    return _KERNELS


def get(name: str) -> Kernel:
    reg = load()
    if name not in reg:
        raise KernelLookupError(f"unknown kernel {name!r}; registered: {', '.join(sorted(reg))}")
    return reg[name]


def algorithms() -> tuple[str, ...]:
    """Every algorithm some kernel implements, plus ``stock``, in registration order."""
    return tuple(dict.fromkeys([k.algorithm for k in load().values()] + [STOCK]))


def conv_layouts(algorithm: str) -> tuple[str, ...]:
    """Policy layouts an algorithm supports: the graph layouts its conv kernels read and their tile layouts."""
    if algorithm == STOCK:
        return ("NCHW", "NHWC", "NCHWc")
    out: list[str] = []
    for k in load().values():
        if k.algorithm == algorithm and "conv2d" in k.ops:
            out += [k.layout, k.tile_layout]
    return tuple(dict.fromkeys(out))


def select(op: str, algorithm: str, layout: str, req: KernelRequest) -> Kernel:
    """The kernel for one layer: registered for (op, algorithm, layout, dtype) and usable, highest priority."""
    cands = [k for k in load().values()
             if op in k.ops and k.algorithm == algorithm and (op == "dense" or k.layout == layout)
             and req.dtype in k.dtypes and k.usable(req)]
    if not cands:
        have = sorted(f"{k.algorithm}/{k.layout or '-'}" for k in load().values() if op in k.ops)
        raise KernelLookupError(f"no kernel implements {op} with algorithm {algorithm!r}, layout {layout!r}, "
                                f"dtype {req.dtype}; registered for {op}: {', '.join(dict.fromkeys(have))}")
    return max(cands, key=lambda k: k.priority)


def np_dtype(dtype: str) -> Any:
    """numpy dtype for a TVM dtype name (bfloat16 through ml_dtypes)."""
    if dtype == "bfloat16":
        import ml_dtypes  # noqa: PLC0415

        return ml_dtypes.bfloat16
    return np.dtype(dtype)
