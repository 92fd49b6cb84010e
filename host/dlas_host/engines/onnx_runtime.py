"""onnxruntime: the deployment-runtime baseline (CPU; CUDA when the device is an Nvidia GPU and the
installed onnxruntime has the CUDA provider). The model is exported to ONNX in this process."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from . import EngineUnavailable
from .torch_eager import Predict, time_callable

ENGINE = "onnxruntime"  # the system name in results and sweeps (discovered by engines/__init__)


def export_onnx(model, inputs, path: Path) -> None:
    import torch

    with torch.no_grad():
        try:  # the TorchScript exporter: no onnxscript optimizer pass, stable for torchvision CNNs
            torch.onnx.export(model, tuple(inputs), str(path), input_names=["input"], output_names=["output"],
                              opset_version=17, dynamo=False)
        except TypeError:  # an older torch without the `dynamo` switch
            torch.onnx.export(model, tuple(inputs), str(path), input_names=["input"], output_names=["output"],
                              opset_version=17)


def run(spec, threads: int, number: int, repeat: int, warmup: int) -> tuple[list[float], list[np.ndarray], Predict]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise EngineUnavailable("onnxruntime is not installed here") from None
    import torch

    from ..compile import build_torch_model, example_inputs

    device = os.environ.get("DLAS_ENGINE_DEVICE", "cpu")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise EngineUnavailable("this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        providers = ["CUDAExecutionProvider"]
    model = build_torch_model(spec).eval()
    arrays = example_inputs(spec)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            export_onnx(model, [torch.from_numpy(a) for a in arrays], path)
        except Exception as exc:  # noqa: BLE001 - an export failure means no baseline for this model
            raise EngineUnavailable(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    name = session.get_inputs()[0].name
    feed = {name: arrays[0]}
    outputs = session.run(None, feed)
    samples = time_callable(lambda: session.run(None, feed), number, repeat, warmup)

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: batch})[0])

    return samples, [np.asarray(outputs[0])], predict
