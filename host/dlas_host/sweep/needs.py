"""Which cached artifacts unfinished sweeps still need, so ``dlas-host cache gc`` never removes them.

A sweep is unfinished while its status (``SweepState.live_status``) is not ``done``; it needs the artifact of
each TVM job without a final row (what ``sweep resume`` runs). The key of that artifact is the one the run
computes (``compile.build_key`` of ``runner.build_spec``, TVM imported lazily); stored models the jobs build
from are looked up, never made. Where a key cannot be computed (a pruned model not made yet, a device gone
from the registry, an unreadable spec), every entry of that job's model, dataset and device is kept instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import dimensions
from ..devices import Registry
from .spec import Job, SweepSpec, expand

KeyFn = Callable[[Any, Any], str]  # (BuildSpec, Device) -> cache key


@dataclass
class SweepNeeds:
    """Cache keys (exact) and (model, dataset, device) triples (loose: ``None`` any, model ``*`` any) to keep."""

    keys: dict[str, str] = field(default_factory=dict)  # key -> sweep id
    loose: dict[tuple[str, str | None, str | None], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)

    def reason(self, key: str, meta: dict[str, Any]) -> str | None:
        """Why the entry ``key`` (with its index ``meta``) must stay, or ``None``."""
        if key in self.keys:
            return f"needed by unfinished sweep {self.keys[key]}"
        model, dataset, device = meta.get("model"), meta.get("dataset"), meta.get("device")
        for (m, d, dev), sweep_id in self.loose.items():
            if m in ("*", model) and d in (None, dataset) and dev in (None, device):
                return f"may be needed by unfinished sweep {sweep_id}"
        return None


def unfinished_needs(db_path: Path, registry: Registry | Callable[[], Registry],
                     key_fn: KeyFn | None = None) -> SweepNeeds:
    """What every unfinished sweep in the results database ``db_path`` still needs from the cache
    (``registry`` may be a function that loads it: only called when a sweep is unfinished)."""
    from ..store import ResultStore  # noqa: PLC0415
    from .state import SweepState  # noqa: PLC0415

    needs = SweepNeeds()
    state = SweepState(db_path)
    store = ResultStore(db_path)
    for listed in state.list():
        if listed["status"] == "done":
            continue
        sweep_id = listed["id"]
        needs.sweeps.append(sweep_id)
        try:
            record = state.get(sweep_id)
            spec = SweepSpec(**record["spec"])
        except Exception as exc:  # noqa: BLE001 - unreadable: keep everything it could mean
            needs.notes.append(f"sweep {sweep_id}: cannot read its spec ({exc}); keeping every entry")
            needs.loose[("*", None, None)] = sweep_id
            continue
        try:
            if callable(registry):
                registry = registry()
            jobs = expand(spec, registry, record["devices"])
        except Exception as exc:  # noqa: BLE001 - e.g. a device no longer registered
            models = _spec_models(spec)
            needs.notes.append(f"sweep {sweep_id}: cannot expand its jobs ({str(exc).splitlines()[0][:160]}); "
                               f"keeping every entry of {', '.join(sorted(models)) or 'its models'}")
            for model in models or {"*"}:
                needs.loose[(model, None, None)] = sweep_id
            continue
        done = store.job_keys(sweep_id)
        pending = [j for j in jobs if j.key not in done and j.system == "tvm"]
        _add_job_keys(needs, sweep_id, spec, pending, registry, key_fn)
    return needs


def _add_job_keys(needs: SweepNeeds, sweep_id: str, spec: SweepSpec, jobs: list[Job], registry: Registry,
                  key_fn: KeyFn | None) -> None:
    if not jobs:
        return
    from .runner import build_spec, prune_key  # noqa: PLC0415

    if key_fn is None:
        from ..compile import build_key, with_stored_model  # noqa: PLC0415 - TVM

        def key_fn(bspec: Any, device: Any) -> str:
            return build_key(with_stored_model(bspec), device)

    ids = stored_model_ids(jobs, spec)
    wants_base = bool(spec.bases or spec.train)
    for job in jobs:
        base_missing = wants_base and f"{job.model}|{job.dataset}|none" not in ids
        if (job.pruning != "none" and prune_key(job) not in ids) or base_missing:
            needs.loose[(job.model, job.dataset, job.device)] = sweep_id  # its model is not made yet
            continue
        try:
            key = key_fn(build_spec(job, ids, spec.run.calib_samples), registry.get(job.device))
        except Exception:  # noqa: BLE001 - cannot tell its key: keep what it could be
            needs.loose[(job.model, job.dataset, job.device)] = sweep_id
            continue
        needs.keys.setdefault(key, sweep_id)


def stored_model_ids(jobs: list[Job], spec: SweepSpec) -> dict[str, str]:
    """The stored models a sweep's run would use (``runner.prepare_pruned_models``), looked up, never made:
    named or trained bases, and pruned variants derived from a base. A pruned model made without a base is
    made afresh by each run, so it has no id here."""
    if not (spec.bases or spec.train):
        return {}
    try:
        from ..optimize import modelstore  # noqa: PLC0415
        from ..optimize.base_model import Recipe, find_trained  # noqa: PLC0415
    except ImportError:
        return {}
    ids: dict[str, str] = {}
    for model, dataset in sorted({(j.model, j.dataset) for j in jobs}):
        named = spec.bases.get(f"{model}/{dataset}") or spec.bases.get(model)
        try:
            entry = modelstore.load(named) if named else (
                find_trained(Recipe(model=model, dataset=dataset, **spec.train.model_dump())) if spec.train else None)
        except Exception:  # noqa: BLE001 - not stored (yet)
            entry = None
        if entry is not None:
            ids[f"{model}|{dataset}|none"] = entry.id
    recipe = {"finetune_epochs": spec.run.finetune_epochs, "finetune_lr": spec.run.finetune_lr}
    stored = modelstore.list_models()
    for job in jobs:
        base_id = ids.get(f"{job.model}|{job.dataset}|none")
        if job.pruning == "none" or base_id is None:
            continue
        try:
            from ..optimize.spec import PruneSpec  # noqa: PLC0415

            as_stored = json.loads(json.dumps(PruneSpec.parse(job.pruning).as_dict()))
        except Exception:  # noqa: BLE001
            continue
        for meta in reversed(stored):  # the match runner.make_pruned_from_base reuses
            if (meta.get("base_id") == base_id and meta.get("prune") == as_stored
                    and meta.get("finetune") == recipe and not meta.get("quantize")):
                ids[f"{job.model}|{job.dataset}|{job.pruning}"] = meta["id"]
                break
    return ids


def _spec_models(spec: SweepSpec) -> set[str]:
    models = set(spec.grid.model_dump().get("models", [])) if spec.grid is not None else set()
    default = dimensions.get("model").default
    return models | {str(j.get("model") or default) for j in spec.jobs}
