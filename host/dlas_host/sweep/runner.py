"""Running a sweep: optimized models once, each distinct artifact compiled once, then devices in parallel.

Phases:
1. models: each (model, dataset, pruning) becomes a stored optimized model once (data-free scores only; a
   pruning that needs data is a skipped job with the reason: make it with ``dlas-host optimize``);
2. compile: the distinct artifacts of all pending TVM jobs are built into the content-addressed cache on a
   local process pool (default) or a Ray cluster (``ray`` / ``ray:ADDRESS``);
3. run: one worker *process* per device (a stuck RPC client can then never freeze the other devices), one
   job at a time under the device lock; transient failures are retried with exponential backoff; a device
   that fails ``quarantine_after`` jobs in a row is quarantined and its remaining jobs are recorded as
   skipped, retryable. Every job's row is written the moment it ends, so a host crash loses nothing.

Exactly once, under any kill:
- one runner per sweep (``runlock``: a second ``resume`` is a one-line error naming the live one);
- nothing outlives the runner (``reaper``: workers die with it, a guard kills the rest after a SIGKILL,
  SIGTERM/SIGINT stop the workers before the runner exits "interrupted"); a resume first kills whatever an
  earlier run of the sweep left;
- a job's final row is stored only if it has none (``ResultStore.add_job_row``), so ``resume`` runs exactly
  the jobs without a final row: never run ones, failed ones, and skips whose reason may pass (a quarantined
  device, a transient error while making a pruned model, a failed tuning run), which it supersedes.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sqlite3
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..devices import Registry
from ..errors import DlasError
from ..store import ResultRow, ResultsDbError, ResultStore
from . import reaper
from .runlock import RunnerLock
from .spec import DEFAULT_BSR_BLOCK, Job, RunSettings, SweepSpec, expand
from .state import SweepState, SweepSummary

if TYPE_CHECKING:  # the compile layer imports TVM: only runs with TVM jobs load it
    from ..compile import BuildSpec


class SweepError(DlasError, RuntimeError):
    pass


class SweepInterrupted(DlasError):
    """The runner stopped on SIGINT/SIGTERM after stopping its workers; ``sweep resume`` finishes the sweep."""

    def __init__(self, sweep_id: str, signum: int, summary: SweepSummary) -> None:
        self.sweep_id, self.signum, self.summary = sweep_id, signum, summary
        name = signal.Signals(signum).name
        super().__init__(f"sweep {sweep_id} interrupted by {name}: {summary.finished}/{summary.total} jobs final; "
                         f"`dlas-host sweep resume {sweep_id}` runs the other {summary.pending}")


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGINT) in the runner: unwinds like Ctrl-C, so the same cleanup runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ------------------------------------------------------------------------------------------------ jobs -> specs
def build_spec(job: Job, model_ids: dict[str, str], calib_samples: int = RunSettings().calib_samples) -> BuildSpec:
    from ..compile import BuildSpec  # noqa: PLC0415
    from ..lower.policy import LoweringPolicy, parse_block  # noqa: PLC0415

    policy = (LoweringPolicy(algorithm=job.algorithm, layout=job.layout, sparse_format=job.sparse_format,
                             bsr_block=parse_block(job.bsr_block or DEFAULT_BSR_BLOCK))
              if job.system == "tvm" else LoweringPolicy(algorithm="stock"))
    return BuildSpec(model=job.model, dataset=job.dataset, policy=policy,
                     quantize=None if job.quantization == "float32" else job.quantization,
                     optimized_model=model_ids.get(prune_key(job)),  # a pruned model or a trained base
                     tuning=job.tuning if job.system == "tvm" else "untuned", calib_samples=calib_samples)


def prune_key(job: Job) -> str:
    return f"{job.model}|{job.dataset}|{job.pruning}"


# Failures that say something about the request or the code: they will fail the same way next time.
_PERMANENT = (DlasError, ImportError, ValueError, TypeError, KeyError, AttributeError, NotImplementedError)


def may_pass(exc: BaseException) -> bool:
    """Whether a failure may pass on its own (I/O, memory, a busy database, a runtime error of the framework):
    the jobs it skips are retried on resume."""
    if isinstance(exc, (OSError, MemoryError, sqlite3.Error, ResultsDbError)):
        return True
    return not isinstance(exc, _PERMANENT)


def prepare_bases(jobs: list[Job], spec: SweepSpec | None, log: Callable[[str], None]
                  ) -> tuple[dict[str, str], dict[str, tuple[str, bool]]]:
    """Trained bases per (model, dataset), keyed like an unpruned job: named in ``spec.bases`` (id or name),
    else trained with ``spec.train`` (a recipe already stored is reused, never retrained)."""
    ids: dict[str, str] = {}
    errors: dict[str, tuple[str, bool]] = {}
    if spec is None or not (spec.bases or spec.train):
        return ids, errors
    for model, dataset in sorted({(j.model, j.dataset) for j in jobs}):
        key = f"{model}|{dataset}|none"
        named = spec.bases.get(f"{model}/{dataset}") or spec.bases.get(model)
        try:
            if named:
                from ..optimize import modelstore  # noqa: PLC0415

                try:
                    entry = modelstore.load(named)
                except modelstore.ModelStoreError as exc:
                    # the user imports or trains it, then resumes: its jobs are retried, not lost
                    errors[key] = (f"no base {named!r} for {model}/{dataset}: {exc}; import it (dlas-host models "
                                   f"import FILE --model {model} --dataset {dataset} --name {named}) or train it, "
                                   "then resume the sweep", True)
                    log(f"[yellow]no base[/] {model}/{dataset}: {errors[key][0][:200]}")
                    continue
            elif spec.train:
                from ..optimize.base_model import Recipe, find_trained, train_base  # noqa: PLC0415

                recipe = Recipe(model=model, dataset=dataset, **spec.train.model_dump())
                entry = find_trained(recipe)  # type: ignore[assignment]
                if entry is None:
                    log(f"training the base {model}/{dataset} ({spec.train.epochs} epochs; resumable)")
                    entry = train_base(recipe, progress=False)
                else:
                    log(f"stored base {model}/{dataset}: {entry.meta.get('name') or entry.id}, not retrained")
            else:
                continue
            if (entry.meta.get("base_model"), entry.meta.get("dataset")) != (model, dataset):
                raise SweepError(f"base {named!r} is {entry.meta.get('base_model')}/{entry.meta.get('dataset')}, "
                                 f"not {model}/{dataset}")
            ids[key] = entry.id
            log(f"base {model}/{dataset} -> model {entry.id}")
        except Exception as exc:  # noqa: BLE001 - recorded as the skip reason of every job that needs it
            errors[key] = (f"{type(exc).__name__}: {exc}", may_pass(exc))
            log(f"[yellow]no base[/] {model}/{dataset}: {errors[key][0][:200]}")
    return ids, errors


def prepare_pruned_models(jobs: list[Job], log: Callable[[str], None], spec: SweepSpec | None = None
                          ) -> tuple[dict[str, str], dict[str, tuple[str, bool]]]:
    """(ids, errors): a stored model id per pruning key (and per trained base), or (the reason it could not be
    made, whether that reason may pass: its jobs are then skipped as retryable)."""
    ids, errors = prepare_bases(jobs, spec, log)
    for key in sorted({prune_key(j) for j in jobs if j.pruning != "none"}):
        model, dataset, pruning = key.split("|")
        base_key = f"{model}|{dataset}|none"
        if base_key in errors:
            errors[key] = errors[base_key]
            continue
        try:
            if base_key in ids:
                ids[key] = make_pruned_from_base(model, dataset, pruning, ids[base_key], spec.run)  # type: ignore[union-attr]
            else:
                ids[key] = make_pruned_model(model, dataset, pruning)
            log(f"pruned {model}/{dataset} {pruning} -> model {ids[key]}")
        except Exception as exc:  # noqa: BLE001 - recorded as the skip reason of every job that needs it
            errors[key] = (f"{type(exc).__name__}: {exc}", may_pass(exc))
            log(f"[yellow]could not make the pruned model[/] {model}/{dataset} {pruning}: {errors[key][0][:200]}"
                + (" (may pass: resume retries its jobs)" if errors[key][1] else ""))
    return ids, errors


def make_pruned_from_base(model: str, dataset: str, pruning: str, base_id: str, run: RunSettings) -> str:
    """Prune a trained base and fine-tune it as the spec asks (``dlas-host optimize --base``); stored once."""
    from ..optimize import modelstore  # noqa: PLC0415
    from ..optimize.pipeline import OptimizeRequest, run as optimize  # noqa: PLC0415
    from ..optimize.spec import PruneSpec  # noqa: PLC0415

    prune_spec = PruneSpec.parse(pruning)
    recipe = {"finetune_epochs": run.finetune_epochs, "finetune_lr": run.finetune_lr}
    as_stored = json.loads(json.dumps(prune_spec.as_dict()))  # meta.json has lists where the spec has tuples
    for meta in reversed(modelstore.list_models()):  # made by an earlier run: a resume never redoes it
        if (meta.get("base_id") == base_id and meta.get("prune") == as_stored
                and meta.get("finetune") == recipe and not meta.get("quantize")):
            return meta["id"]
    result = optimize(OptimizeRequest(model, dataset, prune=prune_spec, base=base_id,
                                      finetune_epochs=run.finetune_epochs, finetune_lr=run.finetune_lr,
                                      progress=False, extra_meta={"source": "sweep", "finetune": recipe}))
    return result["id"]


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
def tune_key(spec: BuildSpec, device: str) -> str:
    return f"{spec.describe()}|{device}"


def tune_phase(jobs: list[Job], model_ids: dict[str, str], registry: Registry, trials: int,
               log: Callable[[str], None], progress: Progress | None, calib_samples: int) -> dict[str, str]:
    """Tune each distinct (model as built, device) of the tuned jobs up to ``trials`` before compiling.

    Records are per target, so a re-run (or ``sweep resume``) finds the budget spent and moves on; a
    tuning failure is logged and its tuned jobs become skipped rows naming the reason at build time,
    retryable (the device may be back next time). Returns the failures by ``tune_key``.
    """
    from ..tune.tuner import Tuner, TuneOptions  # noqa: PLC0415

    distinct: dict[str, tuple[BuildSpec, Any]] = {}
    for job in jobs:
        if job.system != "tvm" or job.tuning != "tuned" or (job.pruning != "none" and prune_key(job) not in model_ids):
            continue
        spec = build_spec(job, model_ids, calib_samples)
        distinct.setdefault(tune_key(spec, job.device), (spec, registry.get(job.device)))
    failures: dict[str, str] = {}
    task = progress.add_task("tune (distinct models x devices)", total=len(distinct)) if progress else None
    for key, (spec, device) in distinct.items():
        try:
            report = Tuner(spec, [device], TuneOptions(trials=trials)).run()
            log(f"tuned {spec.model}/{spec.dataset} on {device.name}: {report.trials_run} new trials, kernels "
                f"{report.untuned_ms:.2f} -> {report.tuned_ms:.2f} ms" + (f" ({report.stopped})" if report.stopped else ""))
        except Exception as exc:  # noqa: BLE001 - the tuned jobs record the consequence
            failures[key] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
            log(f"[yellow]tuning failed[/] {spec.model}/{spec.dataset} on {device.name}: {failures[key]}")
        if progress:
            progress.advance(task)
    return failures


# ------------------------------------------------------------------------------------------------ compile phase
def _compile_one(spec_dict: dict[str, Any], devices_file: str, device_name: str) -> tuple[str, str]:
    """Worker: build into the shared cache. Returns (device, error or '')."""
    from ..compile import BuildSpec, compile_artifact  # noqa: PLC0415
    from ..devices import load  # noqa: PLC0415

    try:
        compile_artifact(BuildSpec.from_dict(spec_dict), load(devices_file).get(device_name))
        return device_name, ""
    except Exception as exc:  # noqa: BLE001 - the run phase records the error on the job's row
        return device_name, f"{type(exc).__name__}: {exc}"


def compile_phase(jobs: list[Job], model_ids: dict[str, str], registry: Registry, executor: str,
                  log: Callable[[str], None], progress: Progress | None, calib_samples: int) -> int:
    """Build every distinct artifact not in the cache yet, once; returns how many were built."""
    buildable = [j for j in jobs if j.system == "tvm" and (j.pruning == "none" or prune_key(j) in model_ids)]
    if not buildable:
        return 0
    from ..cache import ArtifactCache  # noqa: PLC0415
    from ..compile import build_key  # noqa: PLC0415 - TVM: only when there is something to build

    distinct: dict[str, tuple[dict[str, Any], str]] = {}
    for job in buildable:
        spec = build_spec(job, model_ids, calib_samples)
        device = registry.get(job.device)
        try:
            key = build_key(spec, device)
        except Exception:  # noqa: BLE001 - an unbuildable job fails (and is recorded) in the run phase
            continue
        distinct.setdefault(key, (spec.to_dict(), device.name))
    cache = ArtifactCache()
    distinct = {k: v for k, v in distinct.items() if cache.get(k) is None}  # a resume rebuilds nothing it has
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
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                   initializer=_pool_worker_init, initargs=(os.getpid(),))
        try:
            futures = [pool.submit(_compile_one, spec, str(registry.path), dev) for spec, dev in work]
            for fut in as_completed(futures):
                _, error = fut.result()
                if error:
                    log(f"[yellow]compile failed[/] {error.splitlines()[0][:200]}")
                if progress:
                    progress.advance(task)
        except BaseException:
            for proc in list(getattr(pool, "_processes", {}).values()):  # do not wait for running builds
                with contextlib.suppress(OSError, AttributeError):
                    proc.kill()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return len(distinct)


def _pool_worker_init(runner_pid: int) -> None:
    """Compile workers: Ctrl-C is the runner's to handle; they die with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reaper.die_with_parent(runner_pid)


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
                  run: dict[str, Any], sweep_id: str, model_ids: dict[str, str],
                  model_errors: dict[str, tuple[str, bool]], events: Any, runner_pid: int | None = None,
                  token: str = "", retry_of: dict[str, int] | None = None,
                  tune_failures: dict[str, str] | None = None) -> None:
    """One device's queue, run in its own process (and process group), which dies with the runner."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # its engine processes with it; Ctrl-C in a terminal is the runner's to handle
    if runner_pid is not None:
        reaper.die_with_parent(runner_pid)
    os.environ["DLAS_DATA_DIR"] = data_dir
    from ..bench import RunOptions, bench_engine, bench_tvm  # noqa: PLC0415
    from ..devices import load  # noqa: PLC0415

    settings = RunSettings(**run)
    device = load(devices_file).get(device_name)
    store = ResultStore(db_path)
    state = SweepState(db_path)
    retry_of, tune_failures = retry_of or {}, tune_failures or {}
    opts = RunOptions(number=settings.number, repeat=settings.repeat, warmup=settings.warmup,
                      eval_images=settings.eval_images)
    failures_in_a_row = 0
    quarantine_reason = ""
    for raw in jobs:
        job = Job(**raw)
        events.put(("start", device_name, job.label()))
        state.claim(sweep_id, job.key, token)
        model_error = model_errors.get(prune_key(job))
        if quarantine_reason:
            row = _skipped_row(job, device, sweep_id, quarantine_reason, retryable=True, kind="quarantine")
        elif model_error:
            row = _skipped_row(job, device, sweep_id, model_error[0], retryable=model_error[1], kind="pruned_model")
        else:
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
            failed_tuning = tune_failures.get(tune_key(spec, job.device)) if job.tuning == "tuned" else None
            if row.status == "skipped" and failed_tuning:  # no records because tuning failed this time
                row.extra.update(retryable=True, skip_kind="tuning_failed", tuning_error=failed_tuning)
        if job.key in retry_of:
            row.extra["retry_of"] = retry_of[job.key]  # the retryable skip this row supersedes
        key = job.key
        row_id, stored = store.add_job_row(
            row, on_stored=lambda db, rid, key=key: SweepState.close_claim(db, sweep_id, key, token, rid))
        if not stored:
            events.put(("duplicate", device_name, f"{job.label()}: already has a final row ({row_id}); this "
                                                  "run's row was not stored"))
        failures_in_a_row = failures_in_a_row + 1 if row.status == "error" else 0
        if failures_in_a_row >= settings.quarantine_after and not quarantine_reason:
            quarantine_reason = (f"device {device_name} quarantined after {failures_in_a_row} failed jobs in a row; "
                                 f"last error: {row.error[:200]}")
            events.put(("quarantine", device_name, quarantine_reason))
        events.put(("done", device_name, row.status))
    events.put(("finished", device_name, ""))


def _skipped_row(job: Job, device: Any, sweep_id: str, reason: str, retryable: bool = False,
                 kind: str = "") -> ResultRow:
    from ..bench import base_row  # noqa: PLC0415

    row = base_row(build_spec(job, {}), device, job.system)
    row.pruning = job.pruning
    row.status, row.error, row.sweep_id, row.job_key = "skipped", reason, sweep_id, job.key
    if retryable:  # not final: `sweep resume` runs the job again
        row.extra.update(retryable=True, skip_kind=kind)
    return row


# ------------------------------------------------------------------------------------------------ orchestration
def start_sweep(spec: SweepSpec, registry: Registry, store: ResultStore, only_devices: list[str] | None = None) -> str:
    jobs = expand(spec, registry, only_devices)
    return SweepState(store.path).create(spec.name, spec.model_dump(), only_devices, len(jobs), [j.key for j in jobs])


def run_sweep(sweep_id: str, registry: Registry, store: ResultStore, executor: str = "local",
              console: Console | None = None, show_progress: bool = True) -> dict[str, int]:
    """Run (or resume) the sweep's jobs that have no final row yet; returns counts by status.

    Raises ``SweepBusy`` when another live runner holds the sweep, and ``SweepInterrupted`` after SIGINT or
    SIGTERM, once every process of the run is gone.
    """
    state = SweepState(store.path)
    record = state.get(sweep_id)
    sweep_id = record["id"]
    spec = SweepSpec(**record["spec"])
    jobs = expand(spec, registry, record["devices"])
    console = console or Console(stderr=True)
    contain = reaper.Containment(sweep_id)
    lock = RunnerLock(store.path, sweep_id)
    with _signals_as_interrupts():
        try:
            lock.acquire(contain.token)
        except KeyboardInterrupt:  # nothing of the run started yet
            lock.release()
            raise
        try:
            return _run_locked(sweep_id, spec, jobs, registry, store, state, contain, executor, console,
                               show_progress)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
            with _signals_ignored():
                contain.stop()
                state.set_status(sweep_id, "interrupted")
                summary = state.summary(sweep_id)
            raise SweepInterrupted(sweep_id, getattr(exc, "signum", signal.SIGINT), summary) from None
        finally:
            with _signals_ignored():
                contain.stop()
                lock.release()


def _run_locked(sweep_id: str, spec: SweepSpec, jobs: list[Job], registry: Registry, store: ResultStore,
                state: SweepState, contain: reaper.Containment, executor: str, console: Console,
                show_progress: bool) -> dict[str, int]:
    from ..paths import data_dir  # noqa: PLC0415

    log = console.print
    stale = reaper.kill_earlier_runs(sweep_id, contain.token)
    if stale:
        log(f"[yellow]stopped {stale} process(es) left by an earlier run of this sweep[/]")
    contain.start()
    state.start_run(sweep_id, contain.token, [j.key for j in jobs])
    rows = store.job_rows(sweep_id)
    done = {r["job_key"] for r in rows if r["final"]}
    retry_of = {r["job_key"]: r["id"] for r in rows if r["retryable"] and r["superseded_by"] is None}
    pending = [j for j in jobs if j.key not in done]
    retrying = sum(j.key in retry_of for j in pending)
    log(f"sweep {sweep_id} ({spec.name}): {len(jobs)} jobs, {len(jobs) - len(pending)} already done, "
        f"{len(pending)} to run on {len({j.device for j in pending})} device(s)"
        + (f" ({retrying} skipped earlier for a reason that may pass)" if retrying else ""))
    if pending:
        _run_pending(sweep_id, spec, pending, registry, store, contain, executor, console, show_progress,
                     retry_of, str(data_dir()))
    contain.stop()  # nothing of the run is left when the status says it ended
    summary = state.summary(sweep_id)
    state.set_status(sweep_id, "done" if summary.finished == len(jobs) else "incomplete")
    return summary.counts


def _run_pending(sweep_id: str, spec: SweepSpec, pending: list[Job], registry: Registry, store: ResultStore,
                 contain: reaper.Containment, executor: str, console: Console, show_progress: bool,
                 retry_of: dict[str, int], data_dir: str) -> None:
    log = console.print
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not show_progress, transient=False) as progress:
        model_ids, model_errors = prepare_pruned_models(pending, log, spec)
        tune_failures: dict[str, str] = {}
        if spec.run.tune_trials > 0:
            tune_failures = tune_phase(pending, model_ids, registry, spec.run.tune_trials, log, progress,
                                       spec.run.calib_samples)
        compile_phase(pending, model_ids, registry, executor, log, progress, spec.run.calib_samples)
        by_device: dict[str, list[Job]] = {}
        for job in pending:
            by_device.setdefault(job.device, []).append(job)
        overall = progress.add_task("all devices", total=len(pending))
        tasks = {dev: progress.add_task(f"  {dev}", total=len(js)) for dev, js in by_device.items()}
        ctx = mp.get_context("spawn")
        events = ctx.Queue()
        workers = {dev: ctx.Process(target=device_worker, name=f"sweep-{dev}", daemon=True,
                                    args=(dev, str(registry.path), str(store.path), data_dir,
                                          [asdict(j) for j in js], spec.run.model_dump(), sweep_id, model_ids,
                                          model_errors, events, os.getpid(), contain.token,
                                          {j.key: retry_of[j.key] for j in js if j.key in retry_of},
                                          tune_failures))
                   for dev, js in by_device.items()}
        for proc in workers.values():
            proc.start()
        _pump(events, workers, progress, tasks, overall, log)
        for proc in workers.values():
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise ``Terminated`` (a KeyboardInterrupt) once; more are ignored while the
    run stops its processes. A signal the caller ignores (``nohup``, a background job) stays ignored. Only the
    main thread can take signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: Any) -> None:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signum)

    saved = {sig: signal.signal(sig, interrupt) for sig in _STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


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
        elif kind in ("retry", "quarantine", "duplicate"):
            log(f"[yellow]{dev}[/] {kind}: {detail}")
        elif kind == "finished":
            progress.update(tasks[dev], description=f"  {dev}: finished")
            live.discard(dev)
