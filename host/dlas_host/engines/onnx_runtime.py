"""onnxruntime: the deployment-runtime baseline (CPU; CUDA when the device is an Nvidia GPU and the
installed onnxruntime has the CUDA provider). The model is exported to ONNX in this process."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

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


def _session(spec, threads: int, profile_prefix: str | None = None) -> tuple[Any, list[np.ndarray]]:
    """(InferenceSession of the spec's model exported to ONNX, the example inputs); with ``profile_prefix``
    onnxruntime's own profiler records every node's kernel time."""
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
        if profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    return session, arrays


def run(spec, threads: int, number: int, repeat: int, warmup: int) -> tuple[list[float], list[np.ndarray], Predict]:
    session, arrays = _session(spec, threads)
    name = session.get_inputs()[0].name
    feed = {name: arrays[0]}
    outputs = session.run(None, feed)
    samples = time_callable(lambda: session.run(None, feed), number, repeat, warmup)

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: batch})[0])

    return samples, [np.asarray(outputs[0])], predict


def _shapes(value: Any) -> list[list[int]]:
    """``[{"float": [1, 64, 32, 32]}, ...]`` (a profile event's input_type_shape) -> ``[[1, 64, 32, 32], ...]``."""
    out = []
    for item in value if isinstance(value, list) else []:
        dims = next(iter(item.values()), []) if isinstance(item, dict) and item else []
        out.append([int(d) for d in dims] if isinstance(dims, list) else [])
    return out


def summarize_trace(events: list[dict[str, Any]], skip: int) -> list[dict[str, Any]]:
    """Per node of an onnxruntime profile trace, in execution order: op type, input and output shapes (prepacked
    constant weights may be missing from the inputs), median kernel ms over the runs after the first ``skip``
    (warm-up) runs."""
    nodes: dict[str, dict[str, Any]] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        args = event.get("args") or {}
        node = nodes.setdefault(name[:-len("_kernel_time")], {
            "node": name[:-len("_kernel_time")], "op": str(args.get("op_name", "")),
            "inputs": _shapes(args.get("input_type_shape")), "outputs": _shapes(args.get("output_type_shape")),
            "durations_us": []})
        node["durations_us"].append(float(event.get("dur", 0)))
    out = []
    for node in nodes.values():
        runs = node.pop("durations_us")
        kept = runs[skip:] or runs
        out.append({**node, "ms": float(np.median(kept)) / 1e3, "runs": len(kept)})
    return out


def node_profile(spec, threads: int, runs: int, warmup: int) -> list[dict[str, Any]]:
    """Every node's kernel time from onnxruntime's own profiler (the same export and options as ``run``)."""
    with tempfile.TemporaryDirectory() as tmp:
        session, arrays = _session(spec, threads, profile_prefix=str(Path(tmp) / "ort"))
        feed = {session.get_inputs()[0].name: arrays[0]}
        for _ in range(warmup + runs):
            session.run(None, feed)
        trace = json.loads(Path(session.end_profiling()).read_text())
    return summarize_trace(trace if isinstance(trace, list) else [], warmup)
