"""Host-side builder for tuning candidates: compile in parallel worker processes, export shared libraries.

MetaSchedule's default builder imports every tensor intrinsic (CUDA ones included: ~25 s per worker, and
its worker pool is restarted for every batch) and exports a .tar that the device must link itself. Ours
compiles only what the candidate needs and links a .so on the host with the device's (cross) compiler,
checked for the device's architecture, so agents need no compiler.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any


class BuildCandidate:
    """``f_build`` for ``LocalBuilder``; pickled into the workers, so it carries only the device's JSON."""

    def __init__(self, device_json: str) -> None:
        self.device_json = device_json

    def __call__(self, mod: Any, target: Any, _params: Any) -> Any:
        import tvm  # noqa: PLC0415
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock  # noqa: PLC0415

        from ..devices import Device  # noqa: PLC0415
        from ..toolchain import build_context  # noqa: PLC0415

        device = Device.model_validate_json(self.device_json)
        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        with build_context(device):
            return tvm.compile(mod, target=target)


class ExportSharedLibrary:
    """``f_export`` for ``LocalBuilder``: a checked .so for the device (cross-linked when needed)."""

    def __init__(self, device_json: str) -> None:
        self.device_json = device_json

    def __call__(self, rt_mod: Any) -> str:
        from pathlib import Path  # noqa: PLC0415

        from ..devices import Device  # noqa: PLC0415
        from ..toolchain import export_library  # noqa: PLC0415

        device = Device.model_validate_json(self.device_json)
        path = Path(tempfile.mkdtemp(prefix="dlas-cand-")) / "candidate.so"
        export_library(rt_mod, path, device)
        return str(path)


def local_builder(device: Any, workers: int, timeout_s: float) -> Any:
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    device_json = device.model_dump_json()
    return ms.builder.LocalBuilder(max_workers=max(1, workers), timeout_sec=timeout_s,
                                   f_build=BuildCandidate(device_json), f_export=ExportSharedLibrary(device_json))


def remove_artifact(path: str) -> None:
    """Delete a candidate library and its temporary directory."""
    try:
        os.remove(path)
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass
