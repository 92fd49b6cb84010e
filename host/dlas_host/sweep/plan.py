"""``dlas-host sweep plan``: what a sweep will cost before it runs, without compiling or importing TVM.

From the expanded jobs: distinct builds (as the runner dedupes them, by the build spec and the device target;
the pruned model a job builds from stands for the stored model id it will get), distinct tuning tasks (one
per tuned build spec and device, as ``runner.tune_phase``), models to train and prune, and host and device
time per phase and disk, from the median costs of earlier rows in the results database (per model, dataset
and target; else per target kind), or stated defaults when there are none.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..cache import human_size, key_of
from ..devices import Registry
from .spec import DEFAULT_BSR_BLOCK, Job, SweepSpec, expand

DEFAULT_BUILD_S = 60.0  # one TVM build, when no earlier row of the model/dataset/target has a compile time
DEFAULT_TIMING_S = 2.0  # one timing job (load, warm-up, repeats), when no earlier row has a latency
DEFAULT_TRIAL_S = 1.5  # one tuning trial (build + measure a candidate)
DEFAULT_ARTIFACT_BYTES = 64 * 2**20  # one compiled artifact
DEFAULT_EPOCH_S = 30.0  # one epoch of training or fine-tuning a base on the host
DEFAULT_PRUNE_S = 10.0  # scoring and pruning one model (fine-tuning apart)
_ROWS_LIMIT = 20000  # the newest rows costs are taken from


@dataclass
class Phase:
    name: str
    count: int  # what the phase makes or runs
    host_s: float
    device_s: float
    source: str  # "measured", "default" or "measured+default" (some groups had no rows)


@dataclass
class SweepPlan:
    name: str
    jobs: int
    jobs_by_system: dict[str, int]
    tvm_jobs: int
    builds: int  # distinct TVM artifacts
    tuning_tasks: int
    bases_to_train: int
    pruned_models: int
    devices: int
    disk_bytes: int
    disk_source: str
    phases: list[Phase] = field(default_factory=list)
    compile_workers: int = 1
    wall_s: float = 0.0  # phases one after another; builds on compile_workers; devices in parallel
    defaults: dict[str, float] = field(default_factory=dict)

    @property
    def host_s(self) -> float:
        return sum(p.host_s for p in self.phases)

    @property
    def device_s(self) -> float:
        return sum(p.device_s for p in self.phases)

    @property
    def saved_builds(self) -> int:
        return self.tvm_jobs - self.builds

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "host_s": self.host_s, "device_s": self.device_s, "saved_builds": self.saved_builds}

    def summary(self) -> str:
        """One paragraph: jobs, distinct builds, estimated time and disk."""
        made = []
        if self.bases_to_train:
            made.append(f"{self.bases_to_train} base(s) to train")
        if self.pruned_models:
            made.append(f"{self.pruned_models} pruned model(s)")
        return (f"plan {self.name}: {self.jobs} jobs on {self.devices} device(s) "
                f"({', '.join(f'{k} {v}' for k, v in sorted(self.jobs_by_system.items()))}); "
                f"{self.builds} distinct TVM builds for {self.tvm_jobs} TVM jobs ({self.saved_builds} saved by "
                f"de-duplication); {self.tuning_tasks} tuning task(s)" + (f"; {', '.join(made)}" if made else "")
                + f"; estimated {fmt_s(self.wall_s)} end to end (host {fmt_s(self.host_s)}, device "
                f"{fmt_s(self.device_s)}); disk up to "
                f"{human_size(self.disk_bytes)} ({self.disk_source}); at most: stored models and cached "
                "artifacts are reused.")


def fmt_s(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------------------------------------ keys
def build_plan_key(job: Job, registry: Registry, calib_samples: int) -> str:
    """The build a TVM job needs, as ``compile.build_key`` tells builds apart, without TVM: the build spec
    (the pruned model named by its pruning, which becomes a stored model id) and the device's target."""
    from ..lower.policy import LoweringPolicy, parse_block  # noqa: PLC0415

    device = registry.get(job.device)
    policy = LoweringPolicy(algorithm=job.algorithm, layout=job.layout, sparse_format=job.sparse_format,
                            bsr_block=parse_block(job.bsr_block or DEFAULT_BSR_BLOCK))
    spec = {"model": job.model, "dataset": job.dataset, "policy": policy.canonical(),
            "quantize": None if job.quantization == "float32" else job.quantization,
            "optimized_model": f"{job.model}|{job.dataset}|{job.pruning}", "tuning": job.tuning,
            "calib_samples": calib_samples if job.quantization == "int8" else None}
    return key_of({"spec": spec, "target": device.target, "arch": device.arch,
                   "threads": device.threads if job.tuning == "tuned" else None})  # tuning records: per threads


def tune_plan_key(job: Job, registry: Registry, calib_samples: int) -> str:
    """One tuning task per tuned build spec and device (``runner.tune_key``)."""
    return f"{build_plan_key(job, registry, calib_samples)}|{job.device}"


# ------------------------------------------------------------------------------------------------ costs
def _kind(target: Any) -> str:
    if isinstance(target, dict):
        return str(target.get("kind", "?"))
    try:
        value = json.loads(target) if isinstance(target, str) and target else {}
    except ValueError:
        return str(target).split()[0] if str(target).strip() else "?"
    return str(value.get("kind", "?")) if isinstance(value, dict) else "?"


def _target_text(target: Any) -> str:
    return json.dumps(target, sort_keys=True) if isinstance(target, dict) else str(target or "")


@dataclass
class Costs:
    """Medians of earlier rows, keyed (what, model, dataset, target JSON) and (what, model, dataset, kind)."""

    samples: dict[tuple[str, ...], list[float]] = field(default_factory=dict)

    def add(self, what: str, model: str, dataset: str, target: Any, value: float | None) -> None:
        if value is None or value <= 0:
            return
        for where in (_target_text(target), "kind:" + _kind(target)):
            self.samples.setdefault((what, model, dataset, where), []).append(float(value))

    def get(self, what: str, model: str, dataset: str, target: Any) -> float | None:
        for where in (_target_text(target), "kind:" + _kind(target)):
            values = self.samples.get((what, model, dataset, where))
            if values:
                return statistics.median(values)
        return None


def measured_costs(db_path: Path | None, spec: SweepSpec) -> Costs:
    """Build time, timing-job time and artifact size of earlier ``ok`` rows (the newest ``_ROWS_LIMIT``).

    A timing job's time is its load time plus its median latency times the runs the spec asks for
    (number x (repeat + warmup)), plus the row's accuracy evaluation wall time when the spec evaluates."""
    costs = Costs()
    if db_path is None or not Path(db_path).is_file():
        return costs
    from ..store import connect  # noqa: PLC0415

    runs = spec.run.number * (spec.run.repeat + spec.run.warmup)
    with connect(Path(db_path)) as db:
        if not db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='results'").fetchone():
            return costs
        rows = db.execute("SELECT model, dataset, system, target, compile_s, load_s, median_ms, artifact_bytes, "
                          "extra FROM results WHERE status = 'ok' ORDER BY id DESC LIMIT ?", (_ROWS_LIMIT,)).fetchall()
    for r in rows:
        model, dataset, target = r["model"], r["dataset"], r["target"]
        if r["system"] == "tvm":
            costs.add("build", model, dataset, target, r["compile_s"])
            costs.add("bytes", model, dataset, target, r["artifact_bytes"])
        if r["median_ms"]:
            eval_s = 0.0
            if spec.run.eval_images is not None:
                try:
                    eval_s = float((json.loads(r["extra"] or "{}").get("eval") or {}).get("wall_s") or 0.0)
                except (ValueError, TypeError, AttributeError):
                    eval_s = 0.0
            job_s = (r["load_s"] or 0.0) + r["median_ms"] / 1e3 * runs + eval_s
            costs.add(f"timing:{r['system']}", model, dataset, target, job_s)
    return costs


# ------------------------------------------------------------------------------------------------ plan
def plan_sweep(spec: SweepSpec, registry: Registry, only_devices: list[str] | None = None,
               db_path: Path | None = None, jobs: list[Job] | None = None) -> SweepPlan:
    """The plan of ``spec`` (its ``jobs`` when already expanded), costed from the results database."""
    jobs = expand(spec, registry, only_devices) if jobs is None else jobs
    costs = measured_costs(db_path, spec)
    run = spec.run
    tvm_jobs = [j for j in jobs if j.system == "tvm"]
    builds: dict[str, Job] = {}
    for job in tvm_jobs:
        builds.setdefault(build_plan_key(job, registry, run.calib_samples), job)
    tunes = {tune_plan_key(j, registry, run.calib_samples) for j in tvm_jobs if j.tuning == "tuned"} \
        if run.tune_trials > 0 else set()
    pairs = sorted({(j.model, j.dataset) for j in jobs})
    to_train = [p for p in pairs if spec.train is not None
                and not (spec.bases.get(f"{p[0]}/{p[1]}") or spec.bases.get(p[0]))]
    pruned = {(j.model, j.dataset, j.pruning) for j in jobs if j.pruning != "none"}
    used: set[str] = set()

    def cost(what: str, job: Job, default: float) -> float:
        value = costs.get(what, job.model, job.dataset, registry.get(job.device).target)
        used.add("default" if value is None else "measured")
        return default if value is None else value

    def source() -> str:
        out = "+".join(s for s in ("measured", "default") if s in used) or "none"
        used.clear()
        return out

    epochs = spec.train.epochs if spec.train else 0
    phases = [Phase("models", len(to_train) + len(pruned),
                    len(to_train) * epochs * DEFAULT_EPOCH_S
                    + len(pruned) * (DEFAULT_PRUNE_S + run.finetune_epochs * DEFAULT_EPOCH_S), 0.0,
                    "default" if to_train or pruned else "none")]
    tune_s = len(tunes) * run.tune_trials * DEFAULT_TRIAL_S
    phases.append(Phase("tune", len(tunes), tune_s, tune_s, "default" if tunes else "none"))
    build_s = sum(cost("build", job, DEFAULT_BUILD_S) for job in builds.values())
    phases.append(Phase("compile", len(builds), build_s, 0.0, source()))
    per_device: dict[str, float] = {}
    for job in jobs:
        per_device[job.device] = per_device.get(job.device, 0.0) + cost(f"timing:{job.system}", job, DEFAULT_TIMING_S)
    phases.append(Phase("run", len(jobs), 0.0, sum(per_device.values()), source()))
    workers = max(1, (os.cpu_count() or 2) // 2)  # runner.compile_phase's local pool
    disk = sum(int(cost("bytes", job, DEFAULT_ARTIFACT_BYTES)) for job in builds.values())
    return SweepPlan(
        name=spec.name, jobs=len(jobs), jobs_by_system=_count(j.system for j in jobs), tvm_jobs=len(tvm_jobs),
        builds=len(builds), tuning_tasks=len(tunes), bases_to_train=len(to_train), pruned_models=len(pruned),
        devices=len({j.device for j in jobs}), disk_bytes=disk, disk_source=source(), phases=phases,
        compile_workers=workers,
        wall_s=phases[0].host_s + tune_s + build_s / workers + max(per_device.values(), default=0.0),
        defaults={"build_s": DEFAULT_BUILD_S, "timing_s": DEFAULT_TIMING_S, "trial_s": DEFAULT_TRIAL_S,
                  "artifact_bytes": DEFAULT_ARTIFACT_BYTES, "epoch_s": DEFAULT_EPOCH_S, "prune_s": DEFAULT_PRUNE_S})


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))
