"""Framework baselines, each timed in a fresh process with the device's thread count.

An engine module exposes ``run(spec, threads, number, repeat, warmup) -> (samples_ms, outputs)`` and is
started as ``python -m dlas_host.engines.run ENGINE`` so no two engines ever share a process (onnxruntime's
spinning threads make other engines in the same process look slower).
"""

ENGINES = {
    "torch": "dlas_host.engines.torch_eager",
    "onnxruntime": "dlas_host.engines.onnx_runtime",
    "torch_compile": "dlas_host.engines.torch_compiled",
}


class EngineUnavailable(RuntimeError):
    """The engine is not installed or cannot run this model here: the job is recorded as skipped."""
