"""Tuning records: one MetaSchedule JSON database per target, in the project's data directory.

Layout of ``<data>/tuning/<target-id>/``: ``target.json`` (the target, for listing), MetaSchedule's
``database_workload.json`` and ``database_tuning_record.json`` (one JSON line per workload / measured
candidate, appended batch by batch, so a killed run keeps everything measured before it) and
``defaults.json`` (each task's default-schedule latency: the untuned baseline the tuner allocates
trials by and never falls below).

Records are keyed by task (the structural hash of the PrimFunc) and target, so they are shared by every
model and run that contains the same kernel on the same kind of device.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths

log = logging.getLogger(__name__)

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
DEFAULTS = "defaults.json"
TARGET = "target.json"


class RecordsError(RuntimeError):
    """A records archive or database that cannot be read."""


def target_id(target: Any) -> str:
    """Readable, stable directory name for a target: kind, cpu/arch and a hash of the whole target."""
    text = str(target)
    config = dict(target.export()) if hasattr(target, "export") else json.loads(text)
    parts = [str(config.get("kind", "target"))]
    for key in ("mcpu", "arch", "mtriple"):
        if config.get(key):
            parts.append(str(config[key]))
            break
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts))
    return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def default_root() -> Path:
    """``$DLAS_TUNING_DIR`` if set (records shared between checkouts or hosts), else ``<data dir>/tuning``."""
    env = os.environ.get("DLAS_TUNING_DIR")
    if env:
        path = Path(env).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return paths.sub_dir("tuning")


@dataclass
class TargetSummary:
    target_id: str
    target: str
    workloads: int
    records: int
    size_bytes: int


class TuningRecords:
    """The records of one target (see module docstring)."""

    def __init__(self, target: Any, root: Path | None = None) -> None:
        self.target = target
        self.dir = (root or default_root()) / target_id(target)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / TARGET
        if not meta.exists():
            meta.write_text(json.dumps({"target": str(target)}) + "\n")
        self._repair()

    # ------------------------------------------------------------------ files
    @property
    def workload_file(self) -> Path:
        return self.dir / WORKLOADS

    @property
    def record_file(self) -> Path:
        return self.dir / RECORDS

    def _repair(self) -> None:
        """Drop lines a killed process left half-written (the database refuses to load them otherwise)."""
        for path in (self.workload_file, self.record_file):
            if not path.exists():
                continue
            lines = path.read_text().splitlines()
            good = []
            for line in lines:
                try:
                    json.loads(line)
                    good.append(line)
                except json.JSONDecodeError:
                    continue
            if len(good) != len(lines):
                log.warning("%s: dropped %d unreadable line(s) left by an interrupted run", path,
                            len(lines) - len(good))
                path.write_text("".join(f"{ln}\n" for ln in good))

    def database(self) -> Any:
        from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

        return ms.database.JSONDatabase(path_workload=str(self.workload_file),
                                        path_tuning_record=str(self.record_file), allow_missing=True,
                                        module_equality="structural")

    def digest(self) -> str:
        """Hash of the records (part of a tuned artifact's cache key: new records mean a new build)."""
        h = hashlib.sha256()
        for path in (self.workload_file, self.record_file):
            if path.exists():
                h.update(path.read_bytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ defaults (untuned baselines)
    def defaults(self) -> dict[str, dict[str, Any]]:
        path = self.dir / DEFAULTS
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("%s unreadable; default latencies will be measured again", path)
            return {}

    def set_default(self, workload_key: str, task: str, seconds: float) -> None:
        data = self.defaults()
        data[workload_key] = {**data.get(workload_key, {}), "task": task, "default_s": seconds}
        self._write_defaults(data)

    def mark_exhausted(self, workload_key: str, space: str) -> None:
        """Remember that ``space`` has no unmeasured candidate left for this task (resume skips it)."""
        data = self.defaults()
        entry = data.setdefault(workload_key, {})
        entry["exhausted"] = sorted(set(entry.get("exhausted", [])) | {space})
        self._write_defaults(data)

    def set_choice(self, workload_key: str, choice: str, default_s: float, tuned_s: float) -> None:
        """Record the validated winner of a task ("tuned" or "default"): tuned builds follow it."""
        data = self.defaults()
        entry = data.setdefault(workload_key, {})
        entry.update(choice=choice, validated_default_s=default_s, validated_tuned_s=tuned_s)
        self._write_defaults(data)

    def keep_default(self) -> set[str]:
        """Tasks whose best record did not beat the default schedule when re-measured."""
        return {k for k, v in self.defaults().items() if v.get("choice") == "default"}

    def _write_defaults(self, data: dict) -> None:
        tmp = self.dir / f".{DEFAULTS}.tmp"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self.dir / DEFAULTS)

    # ------------------------------------------------------------------ export / import
    def export(self, archive: Path) -> Path:
        archive = Path(archive)
        archive.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "w:gz") as tar:
            for name in (TARGET, WORKLOADS, RECORDS, DEFAULTS):
                if (self.dir / name).exists():
                    tar.add(self.dir / name, arcname=f"{self.dir.name}/{name}")
        return archive


def summaries(root: Path | None = None) -> list[TargetSummary]:
    root = root or default_root()
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        target = ""
        if (d / TARGET).exists():
            try:
                target = json.loads((d / TARGET).read_text())["target"]
            except (json.JSONDecodeError, KeyError):
                target = "?"
        count = {n: _lines(d / n) for n in (WORKLOADS, RECORDS)}
        size = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
        out.append(TargetSummary(d.name, target, count[WORKLOADS], count[RECORDS], size))
    return out


def export_all(archive: Path, root: Path | None = None, target_ids: list[str] | None = None) -> Path:
    """All targets' records (or the named ones) in one .tar.gz."""
    root = root or default_root()
    wanted = [s.target_id for s in summaries(root) if not target_ids or s.target_id in target_ids]
    if target_ids and set(target_ids) - set(wanted):
        raise RecordsError(f"no records for {sorted(set(target_ids) - set(wanted))}; known: "
                           f"{', '.join(s.target_id for s in summaries(root)) or 'none'}")
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for tid in wanted:
            for name in (TARGET, WORKLOADS, RECORDS, DEFAULTS):
                if (root / tid / name).exists():
                    tar.add(root / tid / name, arcname=f"{tid}/{name}")
    return archive


def import_archive(archive: Path, root: Path | None = None) -> dict[str, int]:
    """Merge an exported archive into the local records; returns new records per target.

    Records are re-committed through MetaSchedule (workloads are re-indexed), duplicates are skipped,
    and nothing local is overwritten.
    """
    import tvm  # noqa: PLC0415
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    root = root or default_root()
    try:
        tar = tarfile.open(archive, "r:gz")
    except (OSError, tarfile.TarError) as exc:
        raise RecordsError(f"{archive}: not a tuning-records archive ({exc})") from None
    added: dict[str, int] = {}
    with tar, tempfile.TemporaryDirectory() as tmp:
        members = [m for m in tar.getmembers() if m.isfile() and _safe(m.name)]
        if not members:
            raise RecordsError(f"{archive}: no tuning records inside")
        tar.extractall(tmp, members=members, filter="data")
        for src in sorted(p for p in Path(tmp).iterdir() if p.is_dir()):
            try:
                target_text = json.loads((src / TARGET).read_text())["target"]
                target = tvm.target.Target(json.loads(target_text))
            except (OSError, KeyError, json.JSONDecodeError, ValueError) as exc:
                raise RecordsError(f"{archive}: {src.name}/{TARGET} unreadable ({exc})") from None
            ours = TuningRecords(target, root)
            theirs = ms.database.JSONDatabase(path_workload=str(src / WORKLOADS), path_tuning_record=str(src / RECORDS),
                                              allow_missing=True)
            db = ours.database()
            seen = {_record_key(r) for r in db.get_all_tuning_records()}
            n = 0
            for rec in theirs.get_all_tuning_records():
                key = _record_key(rec)
                if key in seen:
                    continue
                workload = db.commit_workload(rec.workload.mod)
                db.commit_tuning_record(ms.database.TuningRecord(rec.trace, workload, rec.run_secs, rec.target,
                                                                 rec.args_info))
                seen.add(key)
                n += 1
            mine = ours.defaults()
            if (src / DEFAULTS).exists():
                for k, v in json.loads((src / DEFAULTS).read_text()).items():
                    if k not in mine and "default_s" in v:
                        ours.set_default(k, v["task"], v["default_s"])
            added[ours.dir.name] = n
    return added


def _record_key(rec: Any) -> str:
    import tvm_ffi  # noqa: PLC0415

    return f"{tvm_ffi.structural_hash(rec.workload.mod)}:{json.dumps(rec.trace.as_json().__str__())}"


def _safe(name: str) -> bool:
    parts = Path(name).parts
    return len(parts) == 2 and ".." not in parts and not Path(name).is_absolute()


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)
