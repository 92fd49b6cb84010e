"""Load a compiled library (after checking its hash), run it, time it on the device."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import devinfo
from .load import LoadMeter
from .protocol import LOAD_ENV_KEY, BenchmarkRequest, BenchmarkResult, KernelTimingRequest, KernelTimingResult
from .stats import load_warnings, summarize


class ArtifactRejected(RuntimeError):
    """The uploaded library does not match the hash the host announced: it is never loaded."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve(work_dir: Path, name: str) -> Path:
    """A file inside the session's work dir; names that try to leave it are refused."""
    if not name or os.sep in name or name in (".", "..") or (os.altsep and os.altsep in name):
        raise ValueError(f"bad file name {name!r}: plain names inside the agent's work dir only")
    return work_dir / name


def _flatten(value: Any) -> list[Any]:
    if hasattr(value, "numpy"):
        return [value]
    try:
        items = list(value)
    except TypeError:
        return [value]
    out: list[Any] = []
    for item in items:
        out.extend(_flatten(item))
    return out


def checked_library(work_dir: Path, name: str, sha256: str) -> Path:
    """The uploaded library ``name``, only if its content hashes to ``sha256``."""
    lib_path = resolve(work_dir, name)
    if not lib_path.is_file():
        raise FileNotFoundError(f"artifact {name} was not uploaded")
    actual = sha256_file(lib_path)
    if actual != sha256:
        raise ArtifactRejected(
            f"artifact {name} has sha256 {actual[:16]}..., expected {sha256[:16]}...: refused to load"
        )
    return lib_path


def _random_arg(rng: np.random.Generator, shape: list[int], dtype: str) -> np.ndarray:
    if dtype.startswith(("int", "uint")):
        return rng.integers(-8 if dtype.startswith("int") else 0, 8, size=shape).astype(dtype)
    if dtype == "bfloat16":
        import ml_dtypes  # noqa: PLC0415 - only bfloat16 kernels need it

        return rng.standard_normal(shape, dtype="float32").astype(ml_dtypes.bfloat16)
    return rng.standard_normal(shape).astype(dtype)


def time_kernel(request: KernelTimingRequest, work_dir: Path) -> KernelTimingResult:
    """Time one tuning candidate on the device (TVM time_evaluator semantics, as MetaSchedule's runners)."""
    import tvm  # noqa: PLC0415

    lib_path = checked_library(work_dir, request.artifact, request.sha256)
    try:
        if request.num_threads > 0:
            tvm.get_global_func("runtime.config_threadpool")(1, request.num_threads)
        lib = tvm.runtime.load_module(str(lib_path))
        dev = tvm.device(request.device, request.device_id)
        rng = np.random.default_rng(0)
        args = [tvm.runtime.tensor(_random_arg(rng, list(a["shape"]), str(a["dtype"])), dev) for a in request.args]
        timer = lib.time_evaluator(request.entry, dev, number=request.number, repeat=request.repeat,
                                   min_repeat_ms=request.min_repeat_ms, cooldown_interval_ms=request.cooldown_ms)
        dev.sync()
        run_secs = [float(s) for s in timer(*args).results]
    finally:
        lib_path.unlink(missing_ok=True)
    return KernelTimingResult(ok=True, run_secs=run_secs)


def run_benchmark(request: BenchmarkRequest, work_dir: Path) -> BenchmarkResult:
    import tvm  # noqa: PLC0415 - the runtime import costs seconds; keep `dlas-agent --help` fast
    from tvm.runtime.vm import VirtualMachine

    lib_path = checked_library(work_dir, request.artifact, request.sha256)
    if request.num_threads > 0:
        tvm.get_global_func("runtime.config_threadpool")(1, request.num_threads)

    t0 = time.perf_counter()
    lib = tvm.runtime.load_module(str(lib_path))
    dev = tvm.device(request.device, request.device_id)
    vm = VirtualMachine(lib, dev)
    load_s = time.perf_counter() - t0

    with np.load(resolve(work_dir, request.inputs)) as npz:
        arrays = [npz[f"arg{i}"] for i in range(len(npz.files))]
    args = [tvm.runtime.tensor(a, dev) for a in arrays]

    t0 = time.perf_counter()
    result = vm[request.entry](*args)
    dev.sync()
    first_run_ms = 1e3 * (time.perf_counter() - t0)
    outputs = [o.numpy() for o in _flatten(result)]

    for _ in range(max(0, request.warmup)):
        vm[request.entry](*args)
    dev.sync()

    vm.set_input(request.entry, *args)
    timer: Callable[..., Any] = vm.time_evaluator(
        "invoke_stateful", dev, number=request.number, repeat=request.repeat,
        min_repeat_ms=request.min_repeat_ms, cooldown_interval_ms=request.cooldown_ms,
    )
    with LoadMeter() as meter:  # what else ran on the machine meanwhile
        samples_ms = [1e3 * s for s in timer(request.entry).results]

    out_name = ""
    if request.outputs:
        out_path = resolve(work_dir, request.outputs)
        np.savez(out_path, **{f"out{i}": o for i, o in enumerate(outputs)})
        out_name = out_path.name
    stats = summarize(samples_ms)
    stats.warnings += load_warnings(meter.result)  # in the stats, so hosts of any version store it
    env = devinfo.snapshot()
    if meter.result is not None:
        env[LOAD_ENV_KEY] = json.loads(meter.result.to_json())
    return BenchmarkResult(
        ok=True,
        stats=stats,
        load_s=load_s,
        first_run_ms=first_run_ms,
        outputs=out_name,
        output_shapes=[list(o.shape) for o in outputs],
        env=env,
    )
