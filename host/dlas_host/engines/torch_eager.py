"""torch eager mode: the reference framework baseline."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

ENGINE = "torch"  # the system name in results and sweeps (discovered by engines/__init__)
Predict = Callable[[np.ndarray], np.ndarray]  # a batch of images (the spec's batch size) -> logits


def time_callable(fn, number: int, repeat: int, warmup: int) -> list[float]:
    """Samples in ms; each sample is the mean of ``number`` calls (TVM time_evaluator semantics)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append(1e3 * (time.perf_counter() - t0) / number)
    return samples


def run(spec, threads: int, number: int, repeat: int, warmup: int) -> tuple[list[float], list[np.ndarray], Predict]:
    import torch

    from ..compile import build_torch_model, example_inputs

    if threads:
        torch.set_num_threads(threads)
    model = build_torch_model(spec)
    inputs = [torch.from_numpy(a) for a in example_inputs(spec)]
    with torch.inference_mode():
        out = model(*inputs)
        samples = time_callable(lambda: model(*inputs), number, repeat, warmup)

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()

    return samples, [out.numpy()], predict
