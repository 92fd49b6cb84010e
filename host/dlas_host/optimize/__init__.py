"""DLAS layer 3: model optimizations (pruning, quantization) and the store of optimized models."""

from .spec import PruneSpec, QuantSpec, SpecError

__all__ = ["PruneSpec", "QuantSpec", "SpecError"]
