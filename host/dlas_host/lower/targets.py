"""What the kernels need to know about a target: family, SIMD width, int8 dot-product support."""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.target import codegen


@dataclass(frozen=True)
class TargetInfo:
    family: str  # "x86", "arm", "cuda", "gpu" (other GPU kinds), "cpu" (any other llvm)
    vector_bytes: int  # SIMD register width in bytes (CPU); 0 on GPUs
    int8_dot: str | None  # "vnni" (x86 vpdpbusd), "sdot" (Arm dotprod) or None
    num_cores: int

    def lanes(self, dtype: str) -> int:
        """SIMD lanes for ``dtype``: avx512 -> 16 floats, avx2 -> 8, neon -> 4."""
        bits = tvm.runtime.DataType(dtype).bits
        return max(1, self.vector_bytes * 8 // bits)

    @property
    def is_gpu(self) -> bool:
        return self.family in ("cuda", "gpu")


def _has(features: list[str], target: tvm.target.Target) -> bool:
    try:
        return bool(codegen.target_has_features(features, target))
    except Exception:  # noqa: BLE001 - an LLVM that does not know the feature name
        return False


def target_info(target: tvm.target.Target) -> TargetInfo:
    target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
    kind = target.kind.name
    cores = int(target.attrs.get("num-cores", 0) or 0)
    if kind == "cuda":
        return TargetInfo("cuda", 0, "dp4a", cores)
    if "gpu" in target.keys:
        return TargetInfo("gpu", 0, None, cores)
    if kind != "llvm":
        raise ValueError(f"unsupported target kind {kind!r}")
    if "arm_cpu" in target.keys or str(target.attrs.get("mtriple", "")).startswith(("aarch64", "arm")):
        sdot = _has(["dotprod"], target)
        return TargetInfo("arm", 16, "sdot" if sdot else None, cores)
    if _has(["avx512f"], target):
        return TargetInfo("x86", 64, "vnni" if _has(["avx512vnni"], target) else None, cores)
    if _has(["avx2"], target):
        return TargetInfo("x86", 32, None, cores)
    return TargetInfo("cpu", 16, None, cores)
