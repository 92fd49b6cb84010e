"""Whether a device computes a quantized type natively, from what its agent recorded (``device_env``:
``cpu_flags`` from /proc/cpuinfo, ``gpus`` with their compute capability)."""

from __future__ import annotations

from typing import Any, Mapping

# Flags that mean native arithmetic (not only conversion: x86 F16C converts float16, it does not compute in it).
CPU_FLAGS = {
    "float16": ("avx512_fp16", "avx512fp16", "fphp", "asimdhp"),
    "bfloat16": ("avx512_bf16", "amx_bf16", "bf16", "asimdbf16", "svebf16"),
    "int8": ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "svei8mm"),
}
# Minimum CUDA compute capability for fast arithmetic in the type.
GPU_CAPABILITY = {"float16": 5.3, "bfloat16": 8.0, "int8": 6.1}


def native(device_env: Mapping[str, Any], dtype: str, accelerator: bool) -> tuple[bool | None, str]:
    """(True/False/None = unknown, the evidence in words) for ``dtype`` on the device."""
    if dtype not in CPU_FLAGS:
        return None, f"no rule for {dtype}"
    if accelerator:
        gpus = device_env.get("gpus")
        caps = []
        for gpu in gpus if isinstance(gpus, list) else []:
            try:
                caps.append(float(gpu.get("compute_capability")))
            except (AttributeError, TypeError, ValueError):
                continue
        if not caps:
            return None, "GPU compute capability not recorded"
        ok = max(caps) >= GPU_CAPABILITY[dtype]
        return ok, f"compute capability {max(caps):g} {'>=' if ok else '<'} {GPU_CAPABILITY[dtype]:g}"
    flags = device_env.get("cpu_flags")
    if not isinstance(flags, list) or not flags:
        return None, "CPU features not recorded"
    have = [f for f in CPU_FLAGS[dtype] if f in {str(x).lower() for x in flags}]
    if have:
        return True, "CPU flags " + ", ".join(have)
    return False, f"CPU flags lack {' / '.join(CPU_FLAGS[dtype][:3])}"


def describe(state: bool | None, evidence: str, dtype: str) -> str:
    if state is None:
        return f"native {dtype} support unknown: {evidence}"
    return f"{'native' if state else 'no native'} {dtype} arithmetic: {evidence}"
