"""Running a sweep: optimized models once, each distinct artifact compiled once, then devices in parallel.

Phases:
1. models: each (model, dataset, pruning) becomes a stored optimized model once (data-free scores only; a
   pruning that needs data is a skipped job with the reason: make it with ``dlas-host optimize``);
2. compile: the distinct artifacts of all pending TVM jobs are built into the content-addressed cache on a
   local process pool (default) or a Ray cluster (``ray`` / ``ray:ADDRESS``);
3. run: one worker *process* per device (a stuck RPC client can then never freeze the other devices), one
   job at a time under the device lock; transient failures are retried with exponential backoff; a device
   that fails ``quarantine_after`` jobs in a row is quarantined and its remaining jobs are recorded as
   skipped. Every job's final row is written the moment it ends, so a host crash loses nothing, and
   ``resume`` runs exactly the jobs without a final row.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..compile import BuildSpec
from ..devices import Registry
from ..lower.policy import LoweringPolicy, parse_block
from ..store import ResultRow, ResultStore
from .spec import DEFAULT_BSR_BLOCK, Job, RunSettings, SweepSpec, expand
from .state import SweepState
from ..errors import DlasError


class SweepError(DlasError, RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------ jobs -> specs
def build_spec(job: Job, model_ids: dict[str, str], calib_samples: int = RunSettings().calib_samples) -> BuildSpec:
    policy = (LoweringPolicy(algorithm=job.algorithm, layout=job.layout, sparse_format=job.sparse_format,
                             bsr_block=parse_block(job.bsr_block or DEFAULT_BSR_BLOCK))
              if job.system == "tvm" else LoweringPolicy(algorithm="stock"))
    return BuildSpec(model=job.model, dataset=job.dataset, policy=policy,
                     quantize=None if job.quantization == "float32" else job.quantization,
                     optimized_model=model_ids.get(prune_key(job)) if job.pruning != "none" else None,
                     tuning=job.tuning if job.system == "tvm" else "untuned", calib_samples=calib_samples)


def prune_key(job: Job) -> str:
    return f"{job.model}|{job.dataset}|{job.pruning}"


def prepare_pruned_models(jobs: list[Job], log: Callable[[str], None]) -> tuple[dict[str, str], dict[str, str]]:
    """(ids, errors): a stored model id per pruning key, or the reason it could not be made."""
    ids: dict[str, str] = {}
    errors: dict[str, str] = {}
    for key in sorted({prune_key(j) for j in jobs if j.pruning != "none"}):
        model, dataset, pruning = key.split("|")
        try:
            ids[key] = make_pruned_model(model, dataset, pruning)
            log(f"pruned {model}/{dataset} {pruning} -> model {ids[key]}")
        except Exception as exc:  # noqa: BLE001 - recorded as the skip reason of every job that needs it
            errors[key] = f"{type(exc).__name__}: {exc}"
    return ids, errors


def make_pruned_model(model: str, dataset: str, pruning: str) -> str:
    try:
        from ..optimize import modelstore  # noqa: PLC0415
        from ..optimize.prune import prune  # noqa: PLC0415
        from ..optimize.report import sparsity_report  # noqa: PLC0415
        from ..optimize.spec import PruneSpec  # noqa: PLC0415
    except ImportError as exc:
        raise SweepError(f"pruning needs the optimize layer (dlas_host.optimize): {exc}") from None
    from .. import zoo  # noqa: PLC0415

    spec = PruneSpec.parse(pruning)
    loader = None
    if spec.needs_data:  # grad / taylor scores: a few batches of the dataset's training split
        from .. import data  # noqa: PLC0415

        loader, _ = data.loaders(dataset, batch_size=32, train_limit=32 * spec.score_batches, seed=0)
    net = zoo.create(model, dataset)
    prune(net, spec, loader=loader, example_input=zoo.example_input(dataset))
    report = sparsity_report(net).summary()
    entry = modelstore.save(net, {"base_model": model, "dataset": dataset, "prune": spec.as_dict(),
                                  "quantize": None, "sparsity": report.get("sparsity", 0.0),
                                  "params": sum(p.numel() for p in net.parameters()), "source": "sweep"})
    return entry.id


# ------------------------------------------------------------------------------------------------ tune phase
def tune_phase(jobs: list[Job], model_ids: dict[str, str], registry: Registry, trials: int,
               log: Callable[[str], None], progress: Progress | None, calib_samples: int) -> int:
    """Tune each distinct (model as built, device) of the tuned jobs up to ``trials`` before compiling.

    Records are per target, so a re-run (or ``sweep resume``) finds the budget spent and moves on; a
    tuning failure is logged and its tuned jobs become skipped rows naming the reason at build time.
    """
    from ..tune.tuner import Tuner, TuneOptions  # noqa: PLC0415

    distinct: dict[str, tuple[BuildSpec, Any]] = {}
    for job in jobs:
        if job.system != "tvm" or job.tuning != "tuned" or (job.pruning != "none" and prune_key(job) not in model_ids):
            continue
        spec = build_spec(job, model_ids, calib_samples)
        distinct.setdefault(f"{spec.describe()}|{job.device}", (spec, registry.get(job.device)))
    task = progress.add_task("tune (distinct models x devices)", total=len(distinct)) if progress else None
    for spec, device in distinct.values():
        try:
            report = Tuner(spec, [device], TuneOptions(trials=trials)).run()
            log(f"tuned {spec.model}/{spec.dataset} on {device.name}: {report.trials_run} new trials, kernels "
                f"{report.untuned_ms:.2f} -> {report.tuned_ms:.2f} ms" + (f" ({report.stopped})" if report.stopped else ""))
        except Exception as exc:  # noqa: BLE001 - the tuned jobs record the consequence
            log(f"[yellow]tuning failed[/] {spec.model}/{spec.dataset} on {device.name}: {str(exc).splitlines()[0][:200]}")
        if progress:
            progress.advance(task)
    return len(distinct)


# ------------------------------------------------------------------------------------------------ compile phase
def _compile_one(spec_dict: dict[str, Any], devices_file: str, device_name: str) -> tuple[str, str]:
    """Worker: build into the shared cache. Returns (device, error or '')."""
    from ..compile import compile_artifact  # noqa: PLC0415
    from ..devices import load  # noqa: PLC0415

    try:
        compile_artifact(BuildSpec.from_dict(spec_dict), load(devices_file).get(device_name))
        return device_name, ""
    except Exception as exc:  # noqa: BLE001 - the run phase records the error on the job's row
        return device_name, f"{type(exc).__name__}: {exc}"


def compile_phase(jobs: list[Job], model_ids: dict[str, str], registry: Registry, executor: str,
                  log: Callable[[str], None], progress: Progress | None, calib_samples: int) -> int:
    """Build every distinct artifact once; returns how many distinct builds there were."""
    from ..compile import build_key  # noqa: PLC0415

    distinct: dict[str, tuple[dict[str, Any], str]] = {}
    for job in jobs:
        if job.system != "tvm" or (job.pruning != "none" and prune_key(job) not in model_ids):
            continue
        spec = build_spec(job, model_ids, calib_samples)
        device = registry.get(job.device)
        try:
            key = build_key(spec, device)
        except Exception:  # noqa: BLE001 - an unbuildable job fails (and is recorded) in the run phase
            continue
        distinct.setdefault(key, (spec.to_dict(), device.name))
    if not distinct:
        return 0
    task = progress.add_task("compile (distinct artifacts)", total=len(distinct)) if progress else None
    work = list(distinct.values())
    if executor.startswith("ray"):
        results = _compile_on_ray(work, str(registry.path), executor)
        for _ in results:
            if progress:
                progress.advance(task)
    else:
        workers = max(1, min(len(work), (os.cpu_count() or 2) // 2))
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_compile_one, spec, str(registry.path), dev) for spec, dev in work]
            for fut in as_completed(futures):
                _, error = fut.result()
                if error:
                    log(f"[yellow]compile failed[/] {error.splitlines()[0][:200]}")
                if progress:
                    progress.advance(task)
    return len(distinct)


def _compile_on_ray(work: list[tuple[dict[str, Any], str]], devices_file: str, executor: str) -> list[str]:
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        raise SweepError("--executor ray needs Ray: pip install 'ray[default]'") from None
    address = executor.partition(":")[2] or None
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(_compile_one)
    # Cluster nodes share the data dir (DLAS_DATA_DIR on a shared filesystem), so they fill the same cache.
    return [err for _, err in ray.get([remote.remote(spec, devices_file, dev) for spec, dev in work])]


# ------------------------------------------------------------------------------------------------ run phase
class _Capture:
    """A store stand-in: lets the worker decide whether a failed attempt is final before recording it."""

    def __init__(self) -> None:
        self.row: ResultRow | None = None

    def add(self, row: ResultRow) -> int:
        self.row = row
        return 0


def device_worker(device_name: str, devices_file: str, db_path: str, data_dir: str, jobs: list[dict[str, Any]],
                  run: dict[str, Any], sweep_id: str, model_ids: dict[str, str], model_errors: dict[str, str],
                  events: Any) -> None:
    """One device's queue, run in its own process."""
    os.environ["DLAS_DATA_DIR"] = data_dir
    from ..bench import RunOptions, bench_engine, bench_tvm  # noqa: PLC0415
    from ..devices import load  # noqa: PLC0415

    settings = RunSettings(**run)
    device = load(devices_file).get(device_name)
    store = ResultStore(db_path)
    opts = RunOptions(number=settings.number, repeat=settings.repeat, warmup=settings.warmup)
    failures_in_a_row = 0
    quarantine_reason = ""
    for raw in jobs:
        job = Job(**raw)
        events.put(("start", device_name, job.label()))
        if quarantine_reason or (job.pruning != "none" and prune_key(job) in model_errors):
            row = _skipped_row(job, device, sweep_id, quarantine_reason or model_errors[prune_key(job)])
            store.add(row)
            events.put(("done", device_name, row.status))
            continue
        spec = build_spec(job, model_ids, settings.calib_samples)
        row = None
        for attempt in range(settings.retries + 1):
            capture = _Capture()
            if job.system == "tvm":
                row = bench_tvm(spec, device, capture, opts, sweep_id=sweep_id, job_key=job.key)
            else:
                row = bench_engine(job.system, spec, device, capture, opts, sweep_id=sweep_id, job_key=job.key)
            row.extra["attempt"] = attempt + 1
            if row.status != "error" or not row.extra.get("transient") or attempt == settings.retries:
                break
            delay = min(60.0, 2.0 * 2 ** attempt)
            events.put(("retry", device_name, f"{job.label()}: {row.error[:120]} (retry in {delay:.0f} s)"))
            time.sleep(delay)
        store.add(row)
        failures_in_a_row = failures_in_a_row + 1 if row.status == "error" else 0
        if failures_in_a_row >= settings.quarantine_after:
            quarantine_reason = (f"device {device_name} quarantined after {failures_in_a_row} failed jobs in a row; "
                                 f"last error: {row.error[:200]}")
            events.put(("quarantine", device_name, quarantine_reason))
        events.put(("done", device_name, row.status))
    events.put(("finished", device_name, ""))


def _skipped_row(job: Job, device: Any, sweep_id: str, reason: str) -> ResultRow:
    from ..bench import base_row  # noqa: PLC0415

    row = base_row(build_spec(job, {}), device, job.system)
    row.pruning = job.pruning
    row.status, row.error, row.sweep_id, row.job_key = "skipped", reason, sweep_id, job.key
    return row


# ------------------------------------------------------------------------------------------------ orchestration
def start_sweep(spec: SweepSpec, registry: Registry, store: ResultStore, only_devices: list[str] | None = None) -> str:
    jobs = expand(spec, registry, only_devices)
    return SweepState(store.path).create(spec.name, spec.model_dump(), only_devices, len(jobs))


def run_sweep(sweep_id: str, registry: Registry, store: ResultStore, executor: str = "local",
              console: Console | None = None, show_progress: bool = True) -> dict[str, int]:
    """Run (or resume) the sweep's jobs that have no final row yet; returns counts by status."""
    from ..paths import data_dir  # noqa: PLC0415

    state = SweepState(store.path)
    record = state.get(sweep_id)
    sweep_id = record["id"]
    spec = SweepSpec(**record["spec"])
    jobs = expand(spec, registry, record["devices"])
    done = store.job_keys(sweep_id)
    pending = [j for j in jobs if j.key not in done]
    console = console or Console(stderr=True)
    log = console.print
    state.set_status(sweep_id, "running")
    log(f"sweep {sweep_id} ({spec.name}): {len(jobs)} jobs, {len(jobs) - len(pending)} already done, "
        f"{len(pending)} to run on {len({j.device for j in pending})} device(s)")
    if not pending:
        state.set_status(sweep_id, "done")
        return state.counts(sweep_id)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not show_progress, transient=False) as progress:
        model_ids, model_errors = prepare_pruned_models(pending, log)
        if spec.run.tune_trials > 0:
            tune_phase(pending, model_ids, registry, spec.run.tune_trials, log, progress, spec.run.calib_samples)
        compile_phase(pending, model_ids, registry, executor, log, progress, spec.run.calib_samples)
        by_device: dict[str, list[dict[str, Any]]] = {}
        for job in pending:
            by_device.setdefault(job.device, []).append(asdict(job))
        overall = progress.add_task("all devices", total=len(pending))
        tasks = {dev: progress.add_task(f"  {dev}", total=len(js)) for dev, js in by_device.items()}
        ctx = mp.get_context("spawn")
        events = ctx.Queue()
        workers = {dev: ctx.Process(target=device_worker, name=f"sweep-{dev}", daemon=True,
                                    args=(dev, str(registry.path), str(store.path), str(data_dir()), js,
                                          spec.run.model_dump(), sweep_id, model_ids, model_errors, events))
                   for dev, js in by_device.items()}
        for proc in workers.values():
            proc.start()
        try:
            _pump(events, workers, progress, tasks, overall, log)
        except KeyboardInterrupt:
            for proc in workers.values():
                proc.terminate()
            state.set_status(sweep_id, "interrupted")
            raise
    counts = state.counts(sweep_id)
    finished = sum(counts.get(s, 0) for s in ("ok", "skipped"))
    state.set_status(sweep_id, "done" if finished == len(jobs) else "incomplete")
    return counts


def _pump(events: Any, workers: dict[str, Any], progress: Progress, tasks: dict[str, Any], overall: Any,
          log: Callable[[str], None]) -> None:
    live = set(workers)
    while live:
        try:
            kind, dev, detail = events.get(timeout=1.0)
        except queue_mod.Empty:
            for dev in list(live):
                if not workers[dev].is_alive():
                    live.discard(dev)
                    if workers[dev].exitcode:
                        log(f"[red]device worker {dev} died[/] (exit {workers[dev].exitcode}); "
                            "`dlas-host sweep resume` runs its remaining jobs")
            continue
        if kind == "start":
            progress.update(tasks[dev], description=f"  {dev}: {detail}")
        elif kind == "done":
            progress.advance(tasks[dev])
            progress.advance(overall)
        elif kind in ("retry", "quarantine"):
            log(f"[yellow]{dev}[/] {kind}: {detail}")
        elif kind == "finished":
            progress.update(tasks[dev], description=f"  {dev}: finished")
            live.discard(dev)
