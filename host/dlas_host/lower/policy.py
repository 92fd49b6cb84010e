"""How a model's layers are lowered: the DLAS "Algorithms & Data Formats" choices for one build.

A policy is part of an artifact's identity (it goes into the cache key and into every result row),
so it is immutable and has a canonical string form.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..dimensions import SPARSE_FORMATS, parse_block  # noqa: F401 - parse_block: re-exported
from ..errors import DlasError

# Algorithms and layouts are owned by the kernel registry (``lower.registry``): ``validate()`` checks them.
# `stock` is TVM's own default pipeline with no project kernels (kept for comparison only).


class PolicyError(DlasError, ValueError):
    """A lowering choice that is unknown or unsupported; the message lists what is supported."""


@dataclass(frozen=True)
class LoweringPolicy:
    algorithm: str = "spatial_pack"
    layout: str = "NCHW"
    sparse_format: str = "dense"
    # Random unstructured sparsity injected into conv/dense weights for speed studies when no pruned
    # model is given (0 = keep the weights as they are).
    sparsity: float = 0.0
    bsr_block: tuple[int, int] = (4, 1)  # blocks over output channels reuse each loaded input vector
    # Layers less sparse than this stay on dense kernels: sparse ones only win past the measured crossover
    # (per-layer sweep: CSR/BSR beat dense from ~60-70 % zeros). 0 forces the sparse format everywhere.
    sparse_min_sparsity: float = 0.7
    # Per-layer overrides: depthwise convolutions often want another algorithm than dense ones.
    depthwise_algorithm: str | None = "direct"
    # Extra per-layer overrides, {"conv2d_3": "gemm"} keyed by the layer's index name in the graph.
    overrides: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check("sparse format", self.sparse_format, SPARSE_FORMATS)
        if not 0.0 <= self.sparse_min_sparsity <= 1.0:
            raise PolicyError(f"sparse_min_sparsity must be in [0, 1], got {self.sparse_min_sparsity}")
        if not 0.0 <= self.sparsity < 1.0:
            raise PolicyError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.is_stock and (self.sparse_format != "dense" or self.sparsity > 0):
            raise PolicyError("algorithm 'stock' builds with TVM's own kernels: no sparse formats or injected sparsity")
        if min(self.bsr_block) < 1:
            raise PolicyError(f"bsr_block must be positive, got {self.bsr_block[0]}x{self.bsr_block[1]}")

    def layer_algorithm(self, layer: str, op: str) -> tuple[str, str]:
        """(asked, built) algorithm of one layer (``op`` as in ``lower.registry.OPS``): overrides first, then
        the depthwise algorithm for depthwise layers, then the main one; grouped (non-depthwise) convs have no
        packed kernel, so spatial pack builds them with direct. The dispatcher and the manifest check share it."""
        if self.is_stock:
            return "stock", "stock"
        asked = dict(self.overrides).get(layer) or (
            self.depthwise_algorithm if op == "depthwise_conv2d" and self.depthwise_algorithm else self.algorithm)
        return asked, "direct" if asked == "spatial_pack" and op == "grouped_conv2d" else asked

    def validate(self) -> "LoweringPolicy":
        """Check algorithms and layouts against the registered kernels (imports TVM); returns self."""
        check_combination(self.algorithm, self.layout)
        between = "NHWC" if self.layout == "NHWC" else "NCHW"  # NCHWc lives inside spatial-pack kernels only
        if self.depthwise_algorithm is not None and not self.is_stock:
            check_combination(self.depthwise_algorithm, between, "depthwise algorithm")
        for layer, algo in self.overrides:
            check_combination(algo, between, f"override {layer}: algorithm")
        return self

    @property
    def is_stock(self) -> bool:
        return self.algorithm == "stock"

    def canonical(self) -> str:
        """Stable text form used in cache keys and result rows."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


def supported_text() -> str:
    from . import registry  # noqa: PLC0415 - loading the kernels imports TVM

    return "; ".join(f"{a}: {', '.join(registry.conv_layouts(a))}" for a in registry.algorithms())


def check_combination(algorithm: str, layout: str, what: str = "algorithm") -> None:
    """An algorithm some kernel registers, with a layout its kernels read; a one-line PolicyError otherwise."""
    from . import registry  # noqa: PLC0415

    if algorithm not in registry.algorithms():
        raise PolicyError(f"unknown {what} {algorithm!r}; supported: {', '.join(registry.algorithms())}")
    if layout not in registry.conv_layouts(algorithm):
        raise PolicyError(
            f"{what} {algorithm!r} does not support layout {layout!r}; supported combinations: {supported_text()}"
        )


def _check(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise PolicyError(f"unknown {what} {value!r}; supported: {', '.join(allowed)}")
