"""Tuning records: one MetaSchedule JSON database per target, in the project's data directory.

Layout of ``<data>/tuning/<target-id>/``: ``target.json`` (the target, for listing), MetaSchedule's
``database_workload.json`` and ``database_tuning_record.json`` (one JSON line per workload / measured
candidate, appended batch by batch, so a killed run keeps everything measured before it) and
``defaults.json`` (each task's default-schedule latency: the untuned baseline the tuner allocates
trials by and never falls below).

Records are keyed by task (the structural hash of the PrimFunc) and target, so they are shared by every
model and run that contains the same kernel on the same kind of device.

Files are written atomically (temporary file + rename). A file found corrupt is never overwritten in place:
it is moved (or, for a records file whose readable lines are kept, copied) aside to
``<name>.corrupt-<timestamp>`` with a one-line warning. An imported archive is validated member by member
and line by line before TVM sees any of it (TVM's JSON reader crashes the process on some malformed input),
and is imported whole or not at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import DlasError

log = logging.getLogger(__name__)

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
DEFAULTS = "defaults.json"
TARGET = "target.json"
MEMBERS = (TARGET, WORKLOADS, RECORDS, DEFAULTS)
MAX_MEMBER_BYTES = 1 << 30  # one file of an imported archive, unpacked
MAX_ARCHIVE_BYTES = 4 << 30  # all of them together


class RecordsError(DlasError, RuntimeError):
    """A records archive or database that cannot be read."""


def _atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``path`` whole or not at all (a temporary file beside it, then a rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _aside_path(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    return aside


def _move_aside(path: Path, problem: str) -> Path | None:
    """Move a corrupt file out of the way (kept for inspection, never overwritten); warn in one line."""
    aside = _aside_path(path)
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # another process moved it first
        return None
    log.warning("%s is corrupt (%s); moved aside to %s", path, problem, aside.name)
    return aside


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
            _atomic_write(meta, json.dumps({"target": str(target)}) + "\n")
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
                aside = _aside_path(path)
                shutil.copyfile(path, aside)  # the original stays whole beside it
                _atomic_write(path, "".join(f"{ln}\n" for ln in good))
                log.warning("%s: dropped %d unreadable line(s) left by an interrupted run (original kept as %s)",
                            path, len(lines) - len(good), aside.name)

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
            data = json.loads(path.read_bytes())
            problem = _defaults_problem(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            problem = f"not JSON: {exc}"
        if problem is None:
            return data
        _move_aside(path, f"{problem}; default latencies will be measured again")
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
        _atomic_write(self.dir / DEFAULTS, json.dumps(data, indent=1, sort_keys=True))

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

    Every member and every line is validated before TVM reads any of it; records are re-committed
    through MetaSchedule (workloads are re-indexed), duplicates are skipped, nothing local is
    overwritten, and an error anywhere leaves the local records as they were (all or nothing).
    """
    archive = Path(archive)
    root = root or default_root()
    staged = _read_archive(archive)  # validated text per target; nothing touched yet

    import tvm  # noqa: PLC0415
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    plans = []
    with tempfile.TemporaryDirectory() as tmp:
        for tid, files in staged.items():
            where = f"{archive}: {tid}"
            try:
                target = tvm.target.Target(json.loads(json.loads(files[TARGET])["target"]))
            except Exception as exc:  # noqa: BLE001 - TVM raises its own error types
                raise RecordsError(f"{where}/{TARGET}: not a target TVM accepts ({_one_line(exc)})") from None
            src = Path(tmp) / str(len(plans))
            src.mkdir()
            for name in (WORKLOADS, RECORDS):
                (src / name).write_text(files.get(name, ""))
            try:
                theirs = ms.database.JSONDatabase(path_workload=str(src / WORKLOADS),
                                                  path_tuning_record=str(src / RECORDS), allow_missing=True)
                records = list(theirs.get_all_tuning_records())
            except Exception as exc:  # noqa: BLE001
                raise RecordsError(f"{where}: records TVM cannot read ({_one_line(exc)})") from None
            defaults = json.loads(files[DEFAULTS]) if DEFAULTS in files else {}
            plans.append((target, records, defaults))

        added: dict[str, int] = {}
        backup: dict[Path, bytes | None] = {}
        new_dirs: list[Path] = []
        try:
            for target, records, defaults in plans:
                tdir = root / target_id(target)
                if not tdir.exists():
                    new_dirs.append(tdir)
                for name in MEMBERS:
                    path = tdir / name
                    backup.setdefault(path, path.read_bytes() if path.is_file() else None)
                ours = TuningRecords(target, root)
                db = ours.database()
                seen = {_record_key(r) for r in db.get_all_tuning_records()}
                n = 0
                for rec in records:
                    key = _record_key(rec)
                    if key in seen:
                        continue
                    workload = db.commit_workload(rec.workload.mod)
                    db.commit_tuning_record(ms.database.TuningRecord(rec.trace, workload, rec.run_secs, rec.target,
                                                                     rec.args_info))
                    seen.add(key)
                    n += 1
                mine = ours.defaults()
                for k, v in defaults.items():
                    if k not in mine and "default_s" in v:
                        ours.set_default(k, v["task"], v["default_s"])
                added[ours.dir.name] = added.get(ours.dir.name, 0) + n
        except BaseException as exc:
            for path, data in backup.items():
                if data is None:
                    path.unlink(missing_ok=True)
                else:
                    _atomic_write(path, data)
            for tdir in new_dirs:
                shutil.rmtree(tdir, ignore_errors=True)
            if isinstance(exc, Exception) and not isinstance(exc, RecordsError):
                raise RecordsError(f"{archive}: import failed, nothing imported ({_one_line(exc)})") from exc
            raise
    return added


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]


_TID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")


def _read_archive(archive: Path) -> dict[str, dict[str, str]]:
    """The archive's files per target directory, each checked (names, types, sizes, every line)."""
    try:
        tar = tarfile.open(archive, "r:gz")
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        raise RecordsError(f"{archive}: not a tuning-records archive ({_one_line(exc)})") from None
    staged: dict[str, dict[str, str]] = {}
    total = 0
    try:
        with tar:
            for m in tar:
                parts = m.name.split("/")
                if m.isdir() and len(parts) == 1 and _TID.match(parts[0]):
                    continue
                if len(parts) != 2 or not _TID.match(parts[0]) or parts[1] not in MEMBERS:
                    raise RecordsError(f"{archive}: unexpected member {m.name!r} (expected <target-id>/"
                                       f"{{{','.join(MEMBERS)}}}); nothing imported")
                if not m.isfile():
                    raise RecordsError(f"{archive}: member {m.name!r} is not a regular file (a link or device); "
                                       "nothing imported")
                if m.size > MAX_MEMBER_BYTES or total + m.size > MAX_ARCHIVE_BYTES:
                    raise RecordsError(f"{archive}: member {m.name!r} is too large ({m.size} bytes; at most "
                                       f"{MAX_MEMBER_BYTES} per file, {MAX_ARCHIVE_BYTES} in all); nothing imported")
                total += m.size
                tid, name = parts
                if name in staged.get(tid, {}):
                    raise RecordsError(f"{archive}: member {m.name!r} appears twice; nothing imported")
                fh = tar.extractfile(m)
                data = fh.read() if fh is not None else b""
                if len(data) != m.size:
                    raise RecordsError(f"{archive}: member {m.name!r} is truncated; nothing imported")
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise RecordsError(f"{archive}: {m.name} is not UTF-8 text; nothing imported") from None
                staged.setdefault(tid, {})[name] = text
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        raise RecordsError(f"{archive}: damaged archive ({_one_line(exc)}); nothing imported") from None
    if not staged:
        raise RecordsError(f"{archive}: no tuning records inside")
    for tid, files in staged.items():
        _check_target_files(archive, tid, files)
    return staged


def _check_target_files(archive: Path, tid: str, files: dict[str, str]) -> None:
    def bad(name: str, problem: str) -> RecordsError:
        return RecordsError(f"{archive}: {tid}/{name}: {problem}; nothing imported")

    if TARGET not in files:
        raise bad(TARGET, "missing")
    try:
        meta = json.loads(files[TARGET])
        config = json.loads(meta["target"])
        if not isinstance(config, dict) or not isinstance(config.get("kind"), str):
            raise ValueError("no target kind")
    except (TypeError, KeyError, ValueError) as exc:
        raise bad(TARGET, f"unreadable ({_one_line(exc)})") from None
    if RECORDS in files and files[RECORDS].strip() and WORKLOADS not in files:
        raise bad(RECORDS, f"records without {WORKLOADS}")
    workloads = _check_lines(files.get(WORKLOADS, ""), _workload_problem, lambda i, p: bad(WORKLOADS, f"line {i}: {p}"))
    _check_lines(files.get(RECORDS, ""), lambda v: _record_problem(v, workloads),
                 lambda i, p: bad(RECORDS, f"line {i}: {p}"))
    if DEFAULTS in files:
        try:
            problem = _defaults_problem(json.loads(files[DEFAULTS]))
        except ValueError as exc:
            problem = f"not JSON ({_one_line(exc)})"
        if problem:
            raise bad(DEFAULTS, problem)


def _check_lines(text: str, problem_of: Any, error: Any) -> int:
    """Check every line of a MetaSchedule JSON-lines file; returns how many there are."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise error(i, "blank line")
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise error(i, f"not JSON ({_one_line(exc)})") from None
        problem = problem_of(value)
        if problem:
            raise error(i, problem)
    return len(lines)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _workload_problem(value: Any) -> str | None:
    """A MetaSchedule workload line: ``["<structural hash>", "<base64 IRModule>"]``."""
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        return "not a workload [hash, module]"
    if not value[0].isdigit() or not value[1]:
        return "not a workload [hash, module]"
    try:
        base64.b64decode(value[1], validate=True)
    except (binascii.Error, ValueError):
        return "workload module is not base64"
    return None


def _record_problem(value: Any, workloads: int) -> str | None:
    """A MetaSchedule record line: ``[workload index, [trace, run_secs, target, args_info]]``."""
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
            and not isinstance(value[0], bool) and isinstance(value[1], list) and len(value[1]) == 4):
        return "not a tuning record [workload, [trace, run_secs, target, args]]"
    if not 0 <= value[0] < workloads:
        return f"workload index {value[0]} out of range (the archive has {workloads} workload(s))"
    trace, run_secs, target, args = value[1]
    if not (isinstance(trace, list) and len(trace) == 2 and all(isinstance(t, list) for t in trace)):
        return "trace is not [instructions, decisions]"
    if run_secs is not None and not (isinstance(run_secs, list) and all(_is_num(v) for v in run_secs)):
        return "run_secs is not a list of numbers"
    if not (isinstance(target, dict) and isinstance(target.get("kind"), str)):
        return "target has no kind"
    if not isinstance(args, list):
        return "args_info is not a list"
    return None


def _defaults_problem(data: Any) -> str | None:
    """Why ``defaults.json`` content is unusable, or ``None``."""
    if not isinstance(data, dict):
        return "not a JSON object"
    for key, entry in data.items():
        if not isinstance(entry, dict):
            return f"entry {key!r} is not an object"
        if "default_s" in entry and not (_is_num(entry["default_s"]) and isinstance(entry.get("task"), str)):
            return f"entry {key!r} has no numeric default_s and task"
    return None


def _record_key(rec: Any) -> str:
    import tvm_ffi  # noqa: PLC0415

    return f"{tvm_ffi.structural_hash(rec.workload.mod)}:{json.dumps(rec.trace.as_json().__str__())}"


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)
