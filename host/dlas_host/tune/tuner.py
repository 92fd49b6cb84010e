"""The tuning loop: extract tasks, seed defaults, allocate trials, search task by task, resume from records.

Trials are allocated to tasks in proportion to their share of the untuned model's latency (weight x
default-schedule latency, measured on the device first), in whole measurement batches; tasks too small
to earn a batch keep their default schedule. ``--trials N`` is the total for the model: running the same
command again resumes (trials already in the records count), and does nothing once the budget is spent.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import tvm
import tvm_ffi
from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

from ..compile import BuildSpec, CompileError, relax_module_for
from ..devices import Device
from ..fleet.locks import device_lock, lock_wait_s
from . import tuning_target
from .build import local_builder, remove_artifact
from .measure import DEVICE_LOST, AgentRunner, MeasureConfig, SessionPool, runner_result_ok
from .records import TuningRecords
from .space import default_schedule, space_for
from ..errors import DlasError


VALIDATION_ROUNDS = 3
VALIDATION_MARGIN = 0.02  # a record must beat the default schedule by 2 % when re-measured


class TuneError(DlasError, RuntimeError):
    """Tuning stopped early (device lost, bad options); records committed so far are kept."""


class _Stop(Exception):
    """Raised from the measure callback to end a task's search (time budget, device lost)."""


@dataclass
class TuneOptions:
    trials: int = 200
    time_budget_s: float | None = None
    batch: int = 8  # candidates per measurement round (MetaSchedule's num_trials_per_iter)
    space: str = "dlas"
    build_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    build_timeout_s: float = 30.0
    population: int = 256  # evolutionary search population (MetaSchedule's default 512 is slow on 2 cores)
    parallel: int = 0  # measurement slots for a tracker-pooled device (0: one per agent at the tracker)
    seed: int = 0
    measure: MeasureConfig = field(default_factory=MeasureConfig)


@dataclass
class TaskState:
    name: str
    key: str  # structural hash of the PrimFunc: the records' workload key
    weight: int
    mod: Any = field(repr=False)
    default_s: float | None = None
    best_s: float | None = None
    done: int = 0  # trials in the records (the seed excluded)
    alloc: int = 0
    failed: int = 0
    exhausted: bool = False  # the design space has no unmeasured candidate left
    choice: str = ""  # "tuned" | "default": the validated winner ("" until validated)

    @property
    def share_s(self) -> float:
        return self.weight * (self.default_s or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.name, "weight": self.weight, "choice": self.choice or "default", "default_ms": _ms(self.default_s), "best_ms": _ms(self.best_s),
                "trials": self.done, "alloc": self.alloc, "failed": self.failed, "exhausted": self.exhausted,
                "speedup": (self.default_s / self.best_s) if self.default_s and self.best_s else None}


@dataclass
class TuneReport:
    device: str
    target: str
    records_dir: str
    tasks: list[TaskState]
    trials_run: int = 0
    elapsed_s: float = 0.0
    stopped: str = ""  # why tuning ended before the budget (time budget, device lost); "" when complete
    events: list[str] = field(default_factory=list)

    @property
    def untuned_ms(self) -> float:
        return sum(t.weight * (t.default_s or 0.0) for t in self.tasks) * 1e3

    @property
    def tuned_ms(self) -> float:
        return sum(t.weight * min(x for x in (t.best_s, t.default_s) if x is not None) for t in self.tasks
                   if t.best_s is not None or t.default_s is not None) * 1e3

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "target": self.target, "records_dir": self.records_dir,
                "trials_run": self.trials_run, "elapsed_s": self.elapsed_s, "stopped": self.stopped,
                "kernels_untuned_ms": self.untuned_ms, "kernels_tuned_ms": self.tuned_ms, "events": self.events,
                "tasks": [t.to_dict() for t in self.tasks]}


ProgressFn = Callable[[dict[str, Any]], None]


def lowered_for_tuning(spec: BuildSpec, target: Any) -> Any:
    """The model exactly as a tuned build compiles it: quantized, lowered and fused, not scheduled."""
    from .. import lower  # noqa: PLC0415
    from ..compile import build_torch_model, quantize_for_build  # noqa: PLC0415

    model, mod = relax_module_for(spec)
    if spec.quantize and not spec.optimized_model:
        mod = quantize_for_build(model if model is not None else build_torch_model(spec), mod, spec)
    if spec.policy.is_stock:
        raise CompileError("tuning works on the project's kernels; algorithm 'stock' has none (pick direct, "
                           "gemm or spatial_pack)")
    return lower.lower(mod, target, spec.policy, schedule=False)


def extract(spec: BuildSpec, target: Any) -> list[TaskState]:
    lowered = lowered_for_tuning(spec, target)
    tasks = []
    for t in ms.relax_integration.extract_tasks(lowered, target):
        mod = t.dispatched[0]
        tasks.append(TaskState(name=t.task_name, key=str(tvm_ffi.structural_hash(mod)), weight=int(t.weight), mod=mod))
    return tasks


def allocate(tasks: list[TaskState], trials: int, batch: int) -> None:
    """Whole batches per task, proportional to its share of the untuned latency (largest remainder)."""
    units = max(0, trials // batch)
    measured = any(t.default_s for t in tasks)

    def share(t: TaskState) -> float:  # no default measured (GPU targets): by weight alone
        return t.share_s if measured else float(t.weight)

    total = sum(share(t) for t in tasks)
    for t in tasks:
        t.alloc = 0
    if units == 0 or total <= 0:
        return
    raw = [(units * share(t) / total, t) for t in tasks]
    given = 0
    for r, t in raw:
        t.alloc = int(math.floor(r)) * batch
        given += int(math.floor(r))
    for r, t in sorted(raw, key=lambda x: x[0] - math.floor(x[0]), reverse=True)[: units - given]:
        t.alloc += batch


@derived_object
class _CommitAndReport(PyMeasureCallback):
    """Commit measured candidates (never device-lost ones), update progress, stop on budget or loss."""

    def __init__(self, tuner: "Tuner", task: TaskState) -> None:
        super().__init__()
        self.tuner, self.task = tuner, task

    def apply(self, task_scheduler: Any, task_id: int, measure_candidates: list, builder_results: list,
              runner_results: list) -> None:
        tuner, task = self.tuner, self.task
        db = tuner.database
        ctx = task_scheduler.tasks_[task_id].ctx
        workload = db.commit_workload(ctx.mod)
        for cand, built, ran in zip(measure_candidates, builder_results, runner_results):
            if built.artifact_path is not None:
                remove_artifact(str(built.artifact_path))
            if ran.error_msg is not None and str(ran.error_msg).startswith(DEVICE_LOST):
                continue  # never measured: not a trial, it will be tried again on resume
            ok = built.error_msg is None and runner_result_ok(ran)
            run_secs = [float(s) for s in ran.run_secs] if ok else None
            db.commit_tuning_record(ms.database.TuningRecord(cand.sch.trace, workload, run_secs, ctx.target,
                                                             cand.args_info))
            task.done += 1
            tuner.trials_run += 1
            if ok:
                mean = sum(run_secs) / len(run_secs)
                task.best_s = mean if task.best_s is None else min(task.best_s, mean)
            else:
                task.failed += 1
        tuner.emit("batch", task)
        if not measure_candidates:  # the search found nothing new: this task's space is exhausted
            task.exhausted = True
            tuner.records.mark_exhausted(task.key, tuner.options.space)
            raise _Stop("space exhausted")
        if tuner.pool.lost:
            raise _Stop(tuner.pool.lost)
        if tuner.out_of_time():
            raise _Stop("time budget spent")


class Tuner:
    """Tune one model for one kind of device (see module docstring)."""

    def __init__(self, spec: BuildSpec, devices: list[Device], options: TuneOptions | None = None,
                 records: TuningRecords | None = None, progress: ProgressFn | None = None) -> None:
        if not devices:
            raise TuneError("no device to tune on")
        kinds = {str(d.tvm_target()) for d in devices}
        if len(kinds) > 1:
            raise TuneError(f"devices {', '.join(d.name for d in devices)} have different targets; tuning "
                            "shares work only between devices of the same kind")
        self.spec = spec
        self.devices = devices
        self.options = options or TuneOptions()
        if self.options.batch < 1 or self.options.trials < 1:
            raise TuneError(f"trials must be >= 1 and batch >= 1 (got trials {self.options.trials}, "
                            f"batch {self.options.batch})")
        self.target = tuning_target(devices[0].tvm_target(), devices[0].threads)
        self.records = records or TuningRecords(self.target)
        self.database = self.records.database()
        self.progress = progress
        self.trials_run = 0
        self.started = 0.0
        self.pool: SessionPool | None = None  # type: ignore[assignment]
        self.tasks: list[TaskState] = []

    # ------------------------------------------------------------------ helpers
    def emit(self, event: str, task: TaskState | None = None) -> None:
        if self.progress is None:
            return
        planned = sum(t.done if t.exhausted else max(t.alloc, t.done) for t in self.tasks)
        done = sum(min(t.done, t.alloc) if not t.exhausted else t.done for t in self.tasks)
        elapsed = time.monotonic() - self.started
        rate = self.trials_run / elapsed if elapsed > 0 and self.trials_run else 0.0
        self.progress({
            "event": event, "task": task.name if task else "", "task_best_ms": _ms(task.best_s) if task else None,
            "task_default_ms": _ms(task.default_s) if task else None,
            "tasks_total": len(self.tasks), "tasks_done": sum(1 for t in self.tasks if t.done >= t.alloc or t.exhausted),
            "trials_done": done, "trials_planned": planned, "elapsed_s": elapsed,
            "eta_s": (planned - done) / rate if rate else None,
        })

    def out_of_time(self) -> bool:
        budget = self.options.time_budget_s
        return budget is not None and time.monotonic() - self.started >= budget

    def _slots(self) -> list[Device]:
        slots: list[Device] = []
        for d in self.devices:
            n = 1
            if d.connection.type == "tracker":
                n = self.options.parallel or tracker_agents(d)
            slots.extend([d] * max(1, n))
        return slots

    def _workload_stats(self, task: TaskState) -> None:
        workload = self.database.commit_workload(task.mod)
        records = self.database.get_top_k(workload, 1_000_000)
        seeded = task.key in self.records.defaults()
        task.done = max(0, len(records) - (1 if seeded else 0))
        if records:
            times = [[float(x) for x in r.run_secs] for r in records if r.run_secs]
            task.best_s = min(sum(t) / len(t) for t in times) if times else None
        entry = self.records.defaults().get(task.key, {})
        task.exhausted = self.options.space in entry.get("exhausted", [])
        task.choice = entry.get("choice", "")
        if task.choice == "default" and task.default_s is not None:
            task.best_s = task.default_s
        elif task.choice == "tuned":
            task.best_s = float(entry["validated_tuned_s"]) * (task.default_s or 0) / float(entry["validated_default_s"]) \
                if task.default_s else task.best_s

    # ------------------------------------------------------------------ phases
    def _seed_defaults(self, builder: Any, runner: AgentRunner) -> None:
        """Measure each task's default schedule once per target and record it (the untuned baseline)."""
        defaults = self.records.defaults()
        todo = []
        for task in self.tasks:
            if task.key in defaults:
                task.default_s = float(defaults[task.key]["default_s"])
                continue
            sch = default_schedule(task.mod, self.target)
            if sch is not None:
                todo.append((task, sch))
        if not todo:
            return
        self.emit("seeding")
        built = builder.build([ms.builder.BuilderInput(sch.mod, self.target) for _, sch in todo])
        inputs, ready = [], []
        for (task, sch), b in zip(todo, built):
            if b.error_msg is not None:
                raise TuneError(f"default schedule of {task.name} does not build: {str(b.error_msg).splitlines()[-1]}")
            args = ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])
            inputs.append(ms.runner.RunnerInput(str(b.artifact_path), self.devices[0].runtime_device, args))
            ready.append((task, sch, args, str(b.artifact_path)))
        # Twice: the first pass runs on a freshly started agent right after the parallel build and reads
        # high (cold thread pool, clocks still settling); the faster of the two passes is the baseline.
        passes = [[f.result() for f in runner.run(inputs)] for _ in range(2)]
        for i, (task, sch, args, path) in enumerate(ready):
            remove_artifact(path)
            results = [p[i] for p in passes]
            if not all(runner_result_ok(r) for r in results):
                if self.pool.lost:
                    raise TuneError(f"{self.pool.lost}; re-run the same command to resume")
                bad = next(r for r in results if not runner_result_ok(r))
                raise TuneError(f"default schedule of {task.name} fails on the device: {bad.error_msg}")
            secs = min(([float(s) for s in r.run_secs] for r in results), key=lambda v: sum(v) / len(v))
            workload = self.database.commit_workload(task.mod)
            self.database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, secs, self.target, args))
            task.default_s = sum(secs) / len(secs)
            self.records.set_default(task.key, task.name, task.default_s)

    def _tune_task(self, task: TaskState, builder: Any, runner: AgentRunner, cost_model: Any, work_dir: str) -> None:
        remaining = task.alloc - task.done
        if remaining <= 0 or task.exhausted:
            return
        opts = self.options
        ctx = ms.TuneContext(
            mod=task.mod, target=self.target, space_generator=space_for(task.mod, self.target, opts.space),
            search_strategy=ms.search_strategy.EvolutionarySearch(
                population_size=opts.population, init_min_unmeasured=min(50, opts.population // 2)),
            task_name=task.name, rand_state=opts.seed + int(task.key) % 100_000,
            num_threads=opts.build_workers).clone()
        self.emit("task", task)
        try:
            ms.tune.tune_tasks(
                tasks=[ctx], task_weights=[float(task.weight)], work_dir=work_dir, max_trials_global=remaining,
                max_trials_per_task=remaining, num_trials_per_iter=min(opts.batch, remaining), builder=builder,
                runner=runner, database=self.database, cost_model=cost_model,
                measure_callbacks=[_CommitAndReport(self, task), ms.measure_callback.UpdateCostModel()],
                task_scheduler="round-robin")
        except Exception as exc:  # noqa: BLE001 - _Stop and errors cross the C++ task scheduler as TVMError
            if self.pool.lost or self.out_of_time() or task.exhausted:
                return
            if "No tasks to tune" in str(exc):
                return
            raise TuneError(f"{task.name}: {type(exc).__name__}: {str(exc).strip().splitlines()[-1]}") from exc

    def _validate(self, task: TaskState, builder: Any, runner: AgentRunner) -> None:
        """Re-measure the best record against the default schedule, alternating, and keep the real winner.

        Searching keeps the minimum of many noisy measurements, which flatters the winner; a record is used
        by tuned builds only if it is still at least ``VALIDATION_MARGIN`` faster when re-measured.
        """
        workload = self.database.commit_workload(task.mod)
        top = self.database.get_top_k(workload, 1)
        default = default_schedule(task.mod, self.target)
        if not top or default is None:
            return
        if str(top[0].trace) == str(default.trace):
            self.records.set_choice(task.key, "default", task.default_s or 0.0, task.default_s or 0.0)
            return
        tuned = s_tir.Schedule(task.mod)
        top[0].trace.apply_to_schedule(tuned, remove_postproc=False)
        built = builder.build([ms.builder.BuilderInput(default.mod, self.target),
                               ms.builder.BuilderInput(tuned.mod, self.target)])
        if any(b.error_msg is not None for b in built):
            return
        args = ms.arg_info.ArgInfo.from_prim_func(default.mod["main"])
        paths = [str(b.artifact_path) for b in built]
        times: dict[int, list[float]] = {0: [], 1: []}
        try:
            for _ in range(VALIDATION_ROUNDS):
                for i in (0, 1):  # alternate, so drifts (clock, temperature) hit both alike
                    result = runner.run([ms.runner.RunnerInput(paths[i], self.devices[0].runtime_device, args)])[0].result()
                    if not runner_result_ok(result):
                        return
                    secs = [float(s) for s in result.run_secs]
                    times[i].append(sum(secs) / len(secs))
        finally:
            for p in paths:
                remove_artifact(p)
        d, t = statistics.median(times[0]), statistics.median(times[1])
        task.choice = "tuned" if t < d * (1 - VALIDATION_MARGIN) else "default"
        self.records.set_choice(task.key, task.choice, d, t)
        self.emit("validated", task)

    def run(self) -> TuneReport:
        self.started = time.monotonic()
        self.tasks = extract(self.spec, self.target)
        for task in self.tasks:
            self._workload_stats(task)
        self.pool = SessionPool(self._slots(), self.options.measure)
        runner = AgentRunner(self.pool)
        builder = local_builder(self.devices[0], self.options.build_workers, self.options.build_timeout_s)
        report = TuneReport(device=", ".join(d.name for d in self.devices), target=str(self.target),
                            records_dir=str(self.records.dir), tasks=self.tasks)
        try:
            with contextlib.ExitStack() as held, tempfile.TemporaryDirectory(prefix="dlas-tune-") as work_dir:
                for device in self.devices:  # tuning measurements are timings: the devices are ours alone
                    held.enter_context(device_lock(device, lock_wait_s(), purpose=f"tuning {self.spec.model}"))
                self._seed_defaults(builder, runner)
                allocate(self.tasks, self.options.trials, self.options.batch)
                self.tasks.sort(key=lambda t: t.share_s, reverse=True)
                self.emit("planned")
                cost_model = ms.cost_model.XGBModel(num_tuning_cores=self.options.build_workers)
                for task in self.tasks:
                    if self.pool.lost or self.out_of_time():
                        break
                    before = task.done
                    self._tune_task(task, builder, runner, cost_model, work_dir)
                    if task.done > before and not self.pool.lost:
                        self._validate(task, builder, runner)
        finally:
            self.pool.close()
            runner.executor.shutdown(wait=False)
        for task in self.tasks:
            self._workload_stats(task)
        report.trials_run = self.trials_run
        report.elapsed_s = time.monotonic() - self.started
        report.events = list(self.pool.events)
        if self.pool.lost:
            report.stopped = f"{self.pool.lost}; {self.trials_run} trial(s) recorded; re-run to resume"
        elif self.out_of_time() and any(t.done < t.alloc and not t.exhausted for t in self.tasks):
            report.stopped = "time budget spent; re-run to resume"
        self.emit("finished")
        return report


def tracker_agents(device: Device) -> int:
    """How many agents serve the device's key at its tracker (each gets a measurement slot)."""
    from tvm import rpc  # noqa: PLC0415

    conn = device.connection
    try:
        summary = rpc.connect_tracker(conn.host, conn.port).summary()
    except Exception:  # noqa: BLE001 - unreachable tracker: one slot; the queue timeout reports it
        return 1
    servers = [s for s in summary.get("server_info", []) if str(s.get("key", "")).split(":", 1)[-1] == conn.key]
    return max(1, len(servers))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3
