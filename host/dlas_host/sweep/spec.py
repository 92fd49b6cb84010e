"""Sweep specifications: a grid (or an explicit list) over the six DLAS layers and the devices.

A spec expands into jobs; each job has a stable key (hash of its dimensions), which is what makes a sweep
resumable: a job whose key already has a final row in the store is not run again.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, field, make_dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .. import dimensions
from ..cache import key_of
from ..dimensions import DIMENSIONS
from ..devices import Registry
from ..errors import DlasError

class SweepSpecError(DlasError, ValueError):
    """A sweep spec that is malformed or names something unknown."""


class RunSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    number: int = Field(3, ge=1)
    repeat: int = Field(10, ge=1)
    warmup: int = Field(2, ge=0)
    retries: int = Field(2, ge=0)  # extra attempts after a transient (device/transport) failure
    quarantine_after: int = Field(3, ge=1)  # consecutive failed jobs that take a device out of the sweep
    calib_samples: int = Field(64, ge=1)
    tune_trials: int = Field(0, ge=0)  # > 0: tune every tuned job's model on its device first (dlas-host tune)
    eval_images: Optional[int] = Field(None, ge=0)  # every job: top-1/top-5 over N test images (0: all)
    finetune_epochs: int = Field(0, ge=0)  # fine-tuning of pruned variants of a trained base (masks kept)
    finetune_lr: float = Field(0.01, gt=0)


Grid = create_model(  # one list per DLAS dimension (dimensions.DIMENSIONS), the dimension's default first
    "Grid", __config__=ConfigDict(extra="forbid"),
    **{d.grid: (list[str], [d.default]) for d in DIMENSIONS})


class TrainSettings(BaseModel):
    """``train:`` in a spec: bases with no stored model named in ``bases`` are trained first (dlas-host train)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(10, ge=1)
    lr: float = Field(0.05, gt=0)
    batch_size: int = Field(64, ge=1)
    max_steps_per_epoch: Optional[int] = Field(None, ge=1)
    seed: int = 0


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    # trained bases: "model/dataset" (or "model") -> stored model id or name; pruned variants derive from them
    bases: dict[str, str] = {}
    train: Optional[TrainSettings] = None
    grid: Grid | None = None
    jobs: list[dict[str, Any]] = []  # explicit jobs: the same keys as a grid point (single values)
    exclude: list[dict[str, Any]] = []  # a job matching every key/value of an entry is dropped
    run: RunSettings = RunSettings()


DIM_KEYS = tuple(d.name for d in DIMENSIONS)
_GRID_TO_DIM = {d.grid: d.name for d in DIMENSIONS}
DEFAULT_BSR_BLOCK = dimensions.get("bsr_block").default


def _key(self: Any) -> str:
    data = asdict(self)
    if not self.bsr_block or self.bsr_block == DEFAULT_BSR_BLOCK:
        data.pop("bsr_block")  # sweeps stored before blocks were a dimension keep their job keys
    return key_of(data)[:20]


def _label(self: Any) -> str:
    parts = [self.model, self.dataset, self.system]
    if self.system == "tvm":
        fmt = f"{self.sparse_format}{self.bsr_block}" if self.sparse_format == "bsr" else self.sparse_format
        parts += [f"{self.algorithm}/{self.layout}/{fmt}", self.tuning]
    if self.pruning != "none":
        parts.append(self.pruning)
    if self.quantization != "float32":
        parts.append(self.quantization)
    return " ".join(parts)


Job = make_dataclass(  # one field per DLAS dimension: a job is one point of the grid
    "Job", [(d.name, str, field(default=d.default)) for d in DIMENSIONS], frozen=True,
    namespace={"key": property(_key), "label": _label,
               "__doc__": "One point of a sweep: a value for every DLAS dimension (see dlas_host.dimensions)."})
Job.__module__ = __name__


def load_spec(source: str | Path) -> SweepSpec:
    """A spec from a YAML file, or a shipped preset by name (``quick``, ``dlas-paper``)."""
    path = Path(source)
    if path.is_file():
        try:
            text, where = path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as exc:
            raise SweepSpecError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    else:
        preset = resources.files("dlas_host.presets") / f"{source}.yaml"
        if not preset.is_file():
            known = sorted(p.name.removesuffix(".yaml") for p in resources.files("dlas_host.presets").iterdir()
                           if p.name.endswith(".yaml"))
            raise SweepSpecError(f"{source}: no such sweep file or preset; presets: {', '.join(known)}")
        text, where = preset.read_text(), f"preset {source}"
    return parse_spec(text, where)


def parse_spec(text: str, where: str = "sweep spec") -> SweepSpec:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SweepSpecError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise SweepSpecError(f"{where}: not valid YAML: nested too deeply") from None
    if not isinstance(raw, dict):
        raise SweepSpecError(f"{where}: expected a mapping with 'name' and 'grid' or 'jobs'")
    try:
        spec = SweepSpec(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise SweepSpecError(f"{where}: field {loc}: {msg}") from None
    if spec.grid is None and not spec.jobs:
        raise SweepSpecError(f"{where}: give a 'grid' or a list of 'jobs'")
    return spec


def _normalise(job: dict[str, Any]) -> Job:
    """Dimensions that do not apply to a job collapse to their 'n/a' value, so equal jobs get equal keys."""
    return Job(**dimensions.applicable(job))


def _check_values(job: Job, registry: Registry) -> None:
    from ..lower.policy import LoweringPolicy, parse_block  # noqa: PLC0415

    registry.get(job.device)
    values = asdict(job)
    for dim in DIMENSIONS:
        if dim.name != "device" and values[dim.name] != (dim.not_applicable if dim.tvm_only else None):
            dim.check(values[dim.name])
    if job.system == "tvm":
        LoweringPolicy(algorithm=job.algorithm, layout=job.layout, sparse_format=job.sparse_format,
                       bsr_block=parse_block(job.bsr_block or DEFAULT_BSR_BLOCK)).validate()


def _devices(names: list[str], registry: Registry) -> list[str]:
    out: list[str] = []
    for name in names:
        if name == "all":
            out += list(registry.devices)
        elif name.startswith("tag:"):
            out += [d.name for d in registry.select(tags=[name[4:]])]
        else:
            try:
                out.append(registry.get(name).name)
            except ValueError as exc:
                raise SweepSpecError(str(exc)) from None
    return list(dict.fromkeys(out))


def _excluded(job: Job, rules: list[dict[str, Any]]) -> bool:
    data = asdict(job)
    for rule in rules:
        if all(_matches(data.get(k), v) for k, v in rule.items()):
            return True
    return False


def _matches(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, list):
        return value in wanted
    if isinstance(wanted, str) and wanted.startswith("!"):
        return value != wanted[1:]
    return value == wanted


def expand(spec: SweepSpec, registry: Registry, only_devices: list[str] | None = None) -> list[Job]:
    """All jobs of the spec, deduplicated, exclusions applied, validated."""
    jobs: list[Job] = []
    for rule in spec.exclude:
        bad = set(rule) - set(DIM_KEYS)
        if bad:
            raise SweepSpecError(f"exclude: unknown dimension(s) {sorted(bad)}; known: {', '.join(DIM_KEYS)}")
    if spec.grid is not None:
        grid = spec.grid.model_dump()
        grid["devices"] = _devices(grid["devices"], registry)
        names = list(_GRID_TO_DIM)
        for combo in itertools.product(*(grid[n] for n in names)):
            jobs.append(_normalise({_GRID_TO_DIM[n]: v for n, v in zip(names, combo)}))
    for raw in spec.jobs:
        bad = set(raw) - set(DIM_KEYS)
        if bad:
            raise SweepSpecError(f"jobs: unknown dimension(s) {sorted(bad)}; known: {', '.join(DIM_KEYS)}")
        defaults = {_GRID_TO_DIM[k]: v[0] for k, v in Grid().model_dump().items()}
        for device in _devices([raw.get("device", "local")], registry):
            jobs.append(_normalise({**defaults, **raw, "device": device}))
    jobs = [j for j in dict.fromkeys(jobs) if not _excluded(j, spec.exclude)]
    if only_devices:
        jobs = [j for j in jobs if j.device in only_devices]
    for job in jobs:
        try:
            _check_values(job, registry)
        except ValueError as exc:
            raise SweepSpecError(f"{spec.name}: job {job.label()} on {job.device}: {exc}") from None
    return jobs
