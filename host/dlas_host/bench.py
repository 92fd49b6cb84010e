"""One benchmark job: build (or reuse) the artifact, ship it, time it on the device, check it, store it.

Every job ends in exactly one stored row: ``ok``, ``error`` (with the reason) or ``skipped``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dlas_agent.load import LoadMeter
from dlas_agent.protocol import LOAD_ENV_KEY, TimingLoad
from dlas_agent.stats import load_warnings, summarize

from . import __version__
from .cache import ArtifactCache
from .compile import (BuildSpec, CapabilityMissing, CompileError, artifact_manifest, build_torch_model,
                      compile_artifact, example_inputs, with_stored_model)
from .data import DatasetError
from .devices import Device
from .errors import DlasError
from .engines import ENGINES
from .evaluate import TOPK, DeviceAccuracy, EvalSet, EvaluationError, eval_set, evaluate_on_device, score
from .store import ResultRow, ResultStore
from .toolchain import ToolchainError
from .fleet.health import job_session
from .fleet.locks import cpu_use, device_lock, lock_wait_s
from .transport import AgentError, Timeouts

Progress = Callable[[str], None]


@dataclass
class RunOptions:
    number: int = 3
    repeat: int = 10
    warmup: int = 2
    check: bool = True  # compare outputs with the torch reference
    force_compile: bool = False
    eval_images: int | None = None  # accuracy on the device over this many test images (0: all; None: none)


def host_env() -> dict[str, Any]:
    import torch  # noqa: PLC0415
    import tvm  # noqa: PLC0415

    return {"host": platform.node(), "python": platform.python_version(), "dlas": __version__,
            "tvm": tvm.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


def base_row(spec: BuildSpec, device: Device, system: str) -> ResultRow:
    policy = spec.policy
    is_tvm = system == "tvm"
    row = ResultRow(
        dataset=spec.dataset, model=spec.model, system=system, device=device.name, batch=spec.batch,
        pruning=_pruning_label(spec), quantization=spec.quantize or "float32",
        algorithm=policy.algorithm if is_tvm else "n/a", layout=policy.layout if is_tvm else "n/a",
        sparse_format=policy.sparse_format if is_tvm else "dense", sparsity=policy.sparsity,
        sparse_block=f"{policy.bsr_block[0]}x{policy.bsr_block[1]}" if is_tvm and policy.sparse_format == "bsr" else "",
        tuning=spec.tuning if is_tvm else "n/a", target=json.dumps(device.target, sort_keys=True),
        threads=device.threads,
    )
    record_model(row, spec)
    return row


def apply_manifest(row: ResultRow, spec: BuildSpec, layers: list[Any]) -> None:
    """Label the row with what was built: the layer labels come from the manifest, never from the request.

    The manifest is checked against the request again (a cached artifact was checked when it was built),
    so a row whose labels contradict its artifact cannot be stored.
    """
    from .lower import manifest as mf  # noqa: PLC0415

    try:
        mf.check(layers, spec.policy, spec.quantize or "float32")
    except mf.ManifestError as exc:
        raise CompileError(str(exc)) from None
    labels = mf.labels(layers, spec.policy.layout)
    row.extra["asked"] = {k: getattr(row, k) for k in labels}
    for key, value in labels.items():
        setattr(row, key, value)
    row.built, row.manifest = mf.summary(layers), mf.to_dicts(layers)


def record_model(row: ResultRow, spec: BuildSpec) -> None:
    """The stored model's lineage on the row (``extra["model"]``): its base and how it was derived."""
    if spec.optimized_model:
        from .optimize import modelstore  # noqa: PLC0415

        try:
            row.extra["model"] = modelstore.lineage(modelstore.load(spec.optimized_model).meta)
        except modelstore.ModelStoreError:
            return  # the build reports the unknown model itself
        stored = row.extra["model"].get("sparsity")
        if isinstance(stored, (int, float)) and not row.sparsity:
            row.sparsity = float(stored)  # a TVM build's manifest says what it stored; a framework runs this


def _pruning_label(spec: BuildSpec) -> str:
    if spec.optimized_model:
        return f"model:{spec.optimized_model}"
    if spec.policy.sparsity > 0:
        return f"random:{spec.policy.sparsity:g}"
    return "none"


def reference_outputs(spec: BuildSpec) -> list[np.ndarray]:
    """The torch model's outputs on the example inputs; it uses this machine's CPU, so it waits for (and
    holds off) a timing on this machine (``cpu_use``)."""
    import torch  # noqa: PLC0415

    with cpu_use(f"torch reference {spec.model}/{spec.dataset}"):
        model = build_torch_model(spec)
        with torch.inference_mode():
            out = model(*[torch.from_numpy(a) for a in example_inputs(spec)])
    return [out.numpy()]


def record_load(row: ResultRow, load: TimingLoad | None) -> None:
    """The load seen during timing goes on the row (``extra["load"]``); its warnings come with the stats."""
    if load is not None:
        row.extra["load"] = json.loads(load.to_json())


def max_abs_err(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    if len(outputs) != len(reference):
        return float("inf")
    errs = [float(np.max(np.abs(o.astype(np.float64) - r.astype(np.float64)))) if o.shape == r.shape
            else float("inf") for o, r in zip(outputs, reference)]
    return max(errs) if errs else float("nan")


def start_row(spec: BuildSpec, device: Device, system: str, sweep_id: str, job_key: str
              ) -> tuple[BuildSpec, ResultRow]:
    """The spec as its stored model dictates and the job's row; an unknown, unreadable or mismatched stored
    model makes it an error row that says why."""
    try:
        spec = with_stored_model(spec)
        problem = ""
    except DlasError as exc:
        problem = str(exc)
    row = base_row(spec, device, system)
    row.sweep_id, row.job_key, row.host_env = sweep_id, job_key, host_env()
    if problem:
        row.status, row.error = "error", problem
    return spec, row


def bench_tvm(spec: BuildSpec, device: Device, store: ResultStore, opts: RunOptions | None = None,
              progress: Progress = lambda _msg: None, cache: ArtifactCache | None = None,
              timeouts: Timeouts | None = None, sweep_id: str = "", job_key: str = "") -> ResultRow:
    opts = opts or RunOptions()
    spec, row = start_row(spec, device, "tvm", sweep_id, job_key)
    if row.status == "error":
        store.add(row)
        return row
    try:
        progress(f"compiling {spec.model}/{spec.dataset} for {device.name}")
        artifact = compile_artifact(spec, device, cache, force=opts.force_compile)
        apply_manifest(row, spec, artifact_manifest(artifact))
        row.artifact_sha256, row.artifact_key, row.artifact_bytes = artifact.sha256, artifact.key, artifact.size
        row.compile_s = artifact.compile_s
        row.extra["artifact_cached"] = artifact.cached
        row.warnings += [f"schedule: {w}" for w in artifact.meta.get("schedule_warnings", [])]
        progress(f"running on {device.name} ({'cached' if artifact.cached else 'new'} artifact, "
                 f"{artifact.size / 2**20:.1f} MiB)")
        evals = eval_set_for(spec, opts.eval_images) if opts.eval_images is not None else None
        # The device's machine-wide lock (all names and data dirs of this device), then the session's own
        with device_lock(device, lock_wait_s(), purpose=f"timing {spec.model}/{spec.dataset}"), \
                job_session(device, timeouts) as client:  # name lock + health check + agent session
            row.device_env = json.loads(client.device_info().to_json())
            result, outputs = client.benchmark(artifact.path, artifact.sha256, example_inputs(spec),
                                               number=opts.number, repeat=opts.repeat, warmup=opts.warmup,
                                               num_threads=device.threads)
            if evals is not None and result.ok:
                progress(f"evaluating accuracy on {device.name} over {len(evals)} images")
                accuracy = evaluate_on_device(client, artifact.path, artifact.sha256, evals, spec.batch,
                                              num_threads=device.threads)
        if not result.ok or result.stats is None:
            raise AgentError(f"{device.name}: {result.error}")
        row.set_stats(result.stats)  # an agent that measured the load put its warning among the stats'
        if row.device_env.get("emulation"):
            row.warnings.append(f"emulated: {row.device_env['emulation']}; this timing says nothing about the "
                                "real device's speed")
        record_load(row, result.timing_load())  # None from an older agent: no load on the row
        row.load_s = result.load_s
        row.device_env["after_run"] = {k: v for k, v in result.env.items() if k != LOAD_ENV_KEY}
        if evals is not None:
            record_accuracy(row, accuracy, spec.batch)
        if opts.check:
            progress("checking outputs against torch")
            row.max_abs_err = max_abs_err(outputs, reference_outputs(spec))
    except CapabilityMissing as exc:
        row.status, row.error = "skipped", str(exc)
    except (CompileError, ToolchainError, AgentError, OSError, ValueError, EvaluationError, DatasetError) as exc:
        row.status, row.error = "error", str(exc)
        # Device and transport failures may pass (retry them); build failures will not.
        row.extra.update(error_kind=type(exc).__name__, transient=isinstance(exc, (AgentError, OSError)))
    store.add(row)
    return row


def eval_set_for(spec: BuildSpec, n: int) -> EvalSet:
    """The evaluation images of ``spec``'s dataset, preprocessed with its stored model's recipe if any."""
    prep = None
    if spec.optimized_model:
        from .optimize import modelstore  # noqa: PLC0415

        prep = modelstore.load(spec.optimized_model).meta.get("preprocessing")
    return eval_set(spec.dataset, n, preprocessing=prep)


def record_accuracy(row: ResultRow, acc: DeviceAccuracy, batch: int, timed_transfer: bool = True) -> None:
    """Top-1/top-5 of the timed artifact on the device, with the evidence needed to trust and compare them.
    ``timed_transfer``: the run timed host<->device copies apart from compute (agents do; engines don't)."""
    row.top1, row.top5 = acc.top1, acc.top5
    row.eval_images, row.eval_fingerprint = acc.images, acc.fingerprint
    record = acc.record()
    if row.median_ms and acc.compute_s > 0:
        # how fast evaluation ran against what the timed batch latency predicts (1.0: no harness overhead)
        predicted_s = acc.images / batch * row.median_ms / 1e3
        record["vs_timed_latency"] = round(predicted_s / acc.compute_s, 4)
        record["vs_timed_latency_end_to_end"] = round(predicted_s / acc.wall_s, 4) if acc.wall_s else None
    row.extra["eval"] = record
    if acc.images and timed_transfer:  # per image, timed on the agent: host<->device copies next to the model
        row.extra["compute_ms"] = round(1e3 * acc.compute_s / acc.images, 6)
        row.extra["transfer_ms"] = round(1e3 * acc.transfer_s / acc.images, 6)


def bench_engine(engine: str, spec: BuildSpec, device: Device, store: ResultStore, opts: RunOptions | None = None,
                 progress: Progress = lambda _msg: None, sweep_id: str = "", job_key: str = "") -> ResultRow:
    """Time a framework baseline in a fresh process (local device only: frameworks don't ship to agents)."""
    opts = opts or RunOptions()
    spec, row = start_row(spec, device, engine, sweep_id, job_key)
    if row.status == "error":
        pass  # the stored model's problem is the row's error
    elif engine not in ENGINES:
        row.status, row.error = "error", f"unknown engine {engine!r}; known: {', '.join(ENGINES)}"
    elif device.connection.type != "local":
        row.status = "skipped"
        row.error = f"{engine} baseline runs on the local device only ({device.name} is {device.connection.type})"
    elif spec.quantize not in (None, "float32"):
        row.status = "skipped"
        row.error = f"{engine} baseline runs the float32 model only; {spec.quantize} is built by TVM"
    else:
        progress(f"timing {engine} in a fresh process")
        try:
            evals = eval_set_for(spec, opts.eval_images) if opts.eval_images is not None else None
            # the baseline is a timing on this machine: it holds the machine exclusively, and the meter
            # (this process + the engine's, which it waits for) sees what else ran during the run
            with device_lock(device, lock_wait_s(), purpose=f"timing {engine} {spec.model}/{spec.dataset}"), \
                    LoadMeter() as meter:
                samples, outputs, picked = run_engine_process(engine, spec, device.threads, opts,
                                                              device=device.runtime_device, evals=evals)
            stats = summarize(samples)
            stats.warnings += load_warnings(meter.result)
            row.set_stats(stats)
            record_load(row, meter.result)
            if evals is not None and picked is not None:
                record_accuracy(row, engine_accuracy(evals, *picked), spec.batch, timed_transfer=False)
            if opts.check:
                row.max_abs_err = max_abs_err(outputs, reference_outputs(spec))
        except EngineSkipped as exc:
            row.status, row.error = "skipped", str(exc)
        except (RuntimeError, OSError, ValueError, DatasetError) as exc:  # DeviceBusy is a RuntimeError
            row.status, row.error = "error", str(exc)
    store.add(row)
    return row


class EngineSkipped(RuntimeError):
    pass


def engine_accuracy(evals: EvalSet, topk: np.ndarray, compute_s: float) -> DeviceAccuracy:
    """Score a framework baseline's top-k over ``evals`` (run in the engine's process, on this machine)."""
    if len(topk) != len(evals):
        raise EvaluationError(f"the engine returned {len(topk)} predictions for {len(evals)} images")
    top1, top5, c1, c5 = score(topk, evals.labels)
    return DeviceAccuracy(top1, top5, len(evals), evals.fingerprint, c1, c5, compute_s, 0.0, compute_s, topk)


def _engine_call(engine: str, payload: dict[str, Any], threads: int, device: str, timeout_s: float,
                 work: Path) -> dict[str, Any]:
    """Run ``python -m dlas_host.engines.run`` (its npz goes to ``work/outputs.npz``); its JSON reply, or the
    engine's error raised (EngineSkipped where the engine cannot run here)."""
    env = dict(os.environ, DLAS_ENGINE_DEVICE=device)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TVM_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-m", "dlas_host.engines.run", engine, json.dumps(payload),
                           str(work / "outputs.npz")], capture_output=True, text=True, timeout=timeout_s, env=env)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{engine} process failed (exit {proc.returncode}): {tail}")
    reply = json.loads(lines[-1])
    if not reply["ok"]:
        raise (EngineSkipped if reply.get("skipped") else RuntimeError)(f"{engine}: {reply['error']}")
    return reply


def run_engine_process(engine: str, spec: BuildSpec, threads: int, opts: RunOptions, timeout_s: float = 1800,
                       device: str = "cpu", evals: EvalSet | None = None
                       ) -> tuple[list[float], list[np.ndarray], tuple[np.ndarray, float] | None]:
    """(samples in ms, outputs, (top-k over ``evals``, seconds in the model) or None) of one engine run."""
    payload = spec.to_dict()
    payload["_run"] = {"threads": threads, "number": opts.number, "repeat": opts.repeat, "warmup": opts.warmup}
    with tempfile.TemporaryDirectory() as tmp:
        if evals is not None:
            np.save(Path(tmp) / "eval.npy", evals.images)
            payload["_run"]["eval"] = {"images": str(Path(tmp) / "eval.npy"), "batch": spec.batch, "k": TOPK}
        reply = _engine_call(engine, payload, threads, device, timeout_s, Path(tmp))
        with np.load(Path(tmp) / "outputs.npz") as npz:
            outputs = [npz[f"out{i}"] for i in range(len(npz.files)) if f"out{i}" in npz.files]
            picked = (npz["topk"], float(reply["eval_compute_s"])) if "topk" in npz.files else None
    return reply["samples_ms"], outputs, picked


def engine_node_profile(engine: str, spec: BuildSpec, threads: int, runs: int = 10, warmup: int = 2,
                        device: str = "cpu", timeout_s: float = 1800) -> list[dict[str, Any]]:
    """Per node of the engine's graph, in execution order: op, input shapes, median kernel ms (its profiler)."""
    payload = spec.to_dict()
    payload["_run"] = {"threads": threads, "number": 1, "repeat": 1, "warmup": warmup, "profile": {"runs": runs}}
    with tempfile.TemporaryDirectory() as tmp:
        return list(_engine_call(engine, payload, threads, device, timeout_s, Path(tmp))["nodes"])
