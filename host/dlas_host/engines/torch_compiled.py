"""torch.compile (inductor): the compiled-PyTorch baseline, where it works on this device.

Compilation happens before timing (warm-up calls); a model or platform inductor cannot handle (no C++
compiler, unsupported op) is reported as skipped, not as a failure.
"""

from __future__ import annotations

import os

import numpy as np

from . import EngineUnavailable
from .torch_eager import Predict, time_callable

ENGINE = "torch_compile"  # the system name in results and sweeps (discovered by engines/__init__)


def run(spec, threads: int, number: int, repeat: int, warmup: int) -> tuple[list[float], list[np.ndarray], Predict]:
    import torch

    from ..compile import build_torch_model, example_inputs

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if os.environ.get("DLAS_ENGINE_DEVICE") == "cuda" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineUnavailable("torch has no usable CUDA device here")
    model = build_torch_model(spec).eval().to(device)
    inputs = [torch.from_numpy(a).to(device) for a in example_inputs(spec)]
    try:
        compiled = torch.compile(model, mode="max-autotune-no-cudagraphs" if device == "cuda" else "default")
        with torch.inference_mode():
            out = compiled(*inputs)
    except Exception as exc:  # noqa: BLE001 - inductor failures come in many types
        raise EngineUnavailable(f"torch.compile does not work here: {type(exc).__name__}: "
                                f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}") from None

    def call():
        with torch.inference_mode():
            compiled(*inputs)
        if device == "cuda":
            torch.cuda.synchronize()

    samples = time_callable(call, number, repeat, max(warmup, 3))

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return compiled(torch.from_numpy(batch).to(device)).detach().cpu().numpy()

    return samples, [out.detach().cpu().numpy()], predict
