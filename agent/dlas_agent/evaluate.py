"""Accuracy runs on the device: the timed artifact over a chunk of evaluation images, top-k indices back.

The host uploads images in chunks (``.npy``, whole batches of the artifact's batch size) and calls
``dlas.evaluate`` once per chunk; the loaded module stays cached in the session process, keyed by the
artifact's hash, so the library is loaded once per session. Only numpy: the agent stays torch-free.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .protocol import EvalRequest, EvalResult
from .runner import _flatten, checked_library, resolve

_VMS: dict[str, tuple[Any, Any]] = {}  # sha256 -> (VirtualMachine, device), per session process


def topk_of(logits: np.ndarray, k: int) -> np.ndarray:
    """Top-k class indices per row, best first (ties: the lower index first, as torch.topk on CPU)."""
    logits = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    k = min(k, logits.shape[1])
    return np.argsort(-logits, axis=1, kind="stable")[:, :k].astype(np.int32)


def _vm(request: EvalRequest, work_dir: Path) -> tuple[Any, Any]:
    import tvm  # noqa: PLC0415
    from tvm.runtime.vm import VirtualMachine  # noqa: PLC0415

    if request.sha256 not in _VMS:
        lib_path = checked_library(work_dir, request.artifact, request.sha256)
        if request.num_threads > 0:
            tvm.get_global_func("runtime.config_threadpool")(1, request.num_threads)
        dev = tvm.device(request.device, request.device_id)
        _VMS[request.sha256] = (VirtualMachine(tvm.runtime.load_module(str(lib_path)), dev), dev)
    return _VMS[request.sha256]


def run_evaluation(request: EvalRequest, work_dir: Path) -> EvalResult:
    import tvm  # noqa: PLC0415

    vm, dev = _vm(request, work_dir)
    images = np.load(resolve(work_dir, request.images), allow_pickle=False)
    if images.ndim < 2 or len(images) % request.batch:
        raise ValueError(f"evaluation chunk of shape {images.shape} is not whole batches of {request.batch}")
    picks: list[np.ndarray] = []
    compute_s = transfer_s = 0.0
    for start in range(0, len(images), request.batch):
        t0 = time.perf_counter()
        x = tvm.runtime.tensor(np.ascontiguousarray(images[start:start + request.batch]), dev)
        dev.sync()
        t1 = time.perf_counter()
        out = _flatten(vm[request.entry](x))[0]  # the logits: the model's first output
        dev.sync()
        t2 = time.perf_counter()
        logits = out.numpy()
        t3 = time.perf_counter()
        compute_s += t2 - t1
        transfer_s += (t1 - t0) + (t3 - t2)
        picks.append(topk_of(logits, request.k))
    topk = np.concatenate(picks) if picks else np.zeros((0, request.k), np.int32)
    out_path = resolve(work_dir, request.outputs)
    np.save(out_path, topk)
    resolve(work_dir, request.images).unlink(missing_ok=True)  # the chunk is done: free the device's disk
    return EvalResult(ok=True, images=int(len(images)), compute_s=compute_s, transfer_s=transfer_s,
                      outputs=out_path.name)
