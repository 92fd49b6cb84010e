"""Results store: embedded SQLite, one row per measurement, every DLAS dimension a column.

Rows are only ever added (a failed or skipped job is a row too, with its reason), each in its own
transaction, in WAL mode, so a crash or a bad job never loses what was already recorded. New columns are
added by migration; old databases keep working.

Sweep jobs are stored exactly once: a job's *final* row (``ok``, or ``skipped`` for a reason that will not
pass) is added only if the job has none yet, in the same transaction that checks (``add_job_row``). Its
earlier attempts (errors, skips marked ``extra["retryable"]``) stay as history, pointing to the row that
replaced them in ``superseded_by``.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

from dlas_agent.protocol import TimingStats

from .dimensions import RESULT_AXES
from .errors import DlasError
from .paths import data_dir

DIMENSIONS = RESULT_AXES  # the columns that say what was measured (owned by dlas_host.dimensions)


@dataclass
class ResultRow:
    # --- the DLAS stack: what was measured ---
    dataset: str
    model: str
    system: str  # tvm | torch | onnxruntime | torch_compile
    device: str
    batch: int = 1
    pruning: str = "none"
    quantization: str = "float32"
    algorithm: str = "n/a"
    layout: str = "n/a"
    sparse_format: str = "dense"
    sparse_block: str = ""  # stored block of BSR layers ("4x1")
    sparsity: float = 0.0
    tuning: str = "n/a"  # untuned | tuned | n/a
    target: str = ""
    # --- outcome ---
    status: str = "ok"  # ok | error | skipped
    error: str = ""
    median_ms: float | None = None
    mean_ms: float | None = None
    stdev_ms: float | None = None
    mad_ms: float | None = None
    iqr_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    n: int = 0
    samples_ms: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    max_abs_err: float | None = None
    top1: float | None = None  # accuracy of the timed artifact on the device (bench --eval)
    top5: float | None = None
    eval_images: int = 0  # how many test images top1/top5 are over
    eval_fingerprint: str = ""  # which images: rows' accuracies compare only when these match
    # --- provenance ---
    # TVM rows: the layer labels above are computed from the build manifest (what each layer was built as);
    # `built` summarises it, `manifest` holds it whole, `extra["asked"]` keeps the labels as requested.
    built: str = ""
    manifest: list[dict[str, Any]] = field(default_factory=list)
    artifact_sha256: str = ""
    artifact_key: str = ""
    artifact_bytes: int = 0
    compile_s: float | None = None
    load_s: float | None = None
    threads: int = 0
    device_env: dict[str, Any] = field(default_factory=dict)
    host_env: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    sweep_id: str = ""
    job_key: str = ""
    # set by the store, on a sweep job's attempt (an error, a retryable skip), to the id of the row replacing it
    superseded_by: int | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def set_stats(self, stats: TimingStats) -> None:
        """Take the timing statistics; their warnings join those already on the row (e.g. the build's)."""
        for name in ("median_ms", "mean_ms", "stdev_ms", "mad_ms", "iqr_ms", "p90_ms", "p99_ms", "min_ms",
                     "max_ms", "n", "samples_ms"):
            setattr(self, name, getattr(stats, name))
        self.warnings = [*self.warnings, *stats.warnings]


_JSON_FIELDS = {"samples_ms", "warnings", "device_env", "host_env", "extra", "manifest"}
_SQL_TYPES = {int: "INTEGER", float: "REAL", str: "TEXT"}


def _column_type(f: Any) -> str:
    if f.name in _JSON_FIELDS:
        return "TEXT"
    text = str(f.type)
    if text.startswith("int"):
        return "INTEGER"
    if text.startswith("float"):
        return "REAL"
    return "TEXT"


COLUMNS = [(f.name, _column_type(f)) for f in fields(ResultRow)]


def is_final(status: str, extra: dict[str, Any] | None) -> bool:
    """Whether a sweep job's row ends the job: ``ok``, or ``skipped`` for a reason that will not pass.

    Errors and skips marked ``extra["retryable"]`` (a quarantined device, a transient failure while making a
    pruned model) are attempts: ``sweep resume`` runs the job again.
    """
    return status == "ok" or (status == "skipped" and not (extra or {}).get("retryable"))


def _json_dict(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class StoreQueryError(DlasError, ValueError):
    """A query or export the store cannot answer (unknown column or format)."""


class ResultsDbError(DlasError, RuntimeError):
    """The results database cannot be used: not SQLite, corrupt, a directory, locked, read-only."""


# SQLite result codes that say the file is unusable (as opposed to an SQL mistake, which stays a bug).
_UNUSABLE = ("SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_BUSY", "SQLITE_LOCKED",
             "SQLITE_READONLY", "SQLITE_FULL", "SQLITE_PERM", "SQLITE_AUTH")


def _unusable(path: Path, exc: BaseException) -> ResultsDbError | None:
    """The one-line error for a database failure that is the file's fault, else ``None``."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if isinstance(exc, OSError):
        return ResultsDbError(f"{path}: cannot use the results database ({exc.strerror or exc})")
    if not (type(exc) is sqlite3.DatabaseError or name.startswith(_UNUSABLE)):
        return None
    detail = " ".join(str(exc).split())
    if Path(path).is_dir():
        return ResultsDbError(f"{path}: is a directory, not a results database")
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or type(exc) is sqlite3.DatabaseError:
        return ResultsDbError(f"{path}: not a readable results database ({detail}); it was left as it is: "
                              "move it aside (or pass --db) to start a new one")
    return ResultsDbError(f"{path}: cannot use the results database ({detail})")


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A committed-on-success connection to the results database (WAL: readers never block the writer).

    A file that is not a usable SQLite database raises ``ResultsDbError`` (one line naming the file) before
    anything is written to it: the schema is read first, and SQLite refuses to write to a corrupt file.
    """
    path = Path(path)
    try:
        db = sqlite3.connect(path, timeout=30)
    except sqlite3.Error as exc:
        error = _unusable(path, exc)
        if error is None:
            raise
        raise error from None
    db.row_factory = sqlite3.Row
    try:
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads header and schema, writes nothing
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            yield db
            db.commit()
        except sqlite3.Error as exc:
            error = _unusable(path, exc)
            if error is None:
                raise
            raise error from None
    finally:
        db.close()


def default_path() -> Path:
    return data_dir() / "results.sqlite"


class ResultStore:
    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unusable(self.path, exc) from None
        with self._connect() as db:
            self._migrate(db)

    def _connect(self):
        return connect(self.path)

    def _migrate(self, db: sqlite3.Connection) -> None:
        cols = ", ".join(f"{name} {kind}" for name, kind in COLUMNS)
        db.execute(f"CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY AUTOINCREMENT, {cols})")
        have = {row["name"] for row in db.execute("PRAGMA table_info(results)")}
        for name, kind in COLUMNS:
            if name not in have:
                db.execute(f"ALTER TABLE results ADD COLUMN {name} {kind}")
        for index in ("model", "device", "sweep_id", "job_key", "created_at"):
            db.execute(f"CREATE INDEX IF NOT EXISTS idx_results_{index} ON results({index})")

    def add(self, row: ResultRow) -> int:
        with self._connect() as db:
            return _insert(db, row)

    def add_job_row(self, row: ResultRow,
                    on_stored: Callable[[sqlite3.Connection, int], None] | None = None) -> tuple[int, bool]:
        """Add a sweep job's row unless the job already has a final row: check and insert in one transaction.

        Returns ``(id, True)`` for the row added, or ``(id of the final row already there, False)``: a job is
        stored once however many runs reach it. The job's earlier attempts that were not final (errors,
        retryable skips) get ``superseded_by`` = the new id. ``on_stored(db, id)`` runs in the same
        transaction (the sweep closes the job's claim with it).
        """
        if not (row.sweep_id and row.job_key):
            raise StoreQueryError("add_job_row needs a row with sweep_id and job_key")
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # the write lock first: no other run can add this job in between
            earlier = db.execute("SELECT id, status, extra FROM results WHERE sweep_id = ? AND job_key = ? "
                                 "AND superseded_by IS NULL ORDER BY id", (row.sweep_id, row.job_key)).fetchall()
            for old in earlier:
                if is_final(old["status"], _json_dict(old["extra"])):
                    return int(old["id"]), False
            new_id = _insert(db, row)
            if earlier:
                marks = ", ".join("?" * len(earlier))
                db.execute(f"UPDATE results SET superseded_by = ? WHERE id IN ({marks})",
                           [new_id, *(int(old["id"]) for old in earlier)])
            if on_stored is not None:
                on_stored(db, new_id)
            return new_id, True

    def query(self, where: dict[str, Any] | None = None, limit: int | None = None,
              order: str = "id DESC", current: bool = False) -> list[dict[str, Any]]:
        """Rows matching ``where``; ``current``: leave out attempts a later row of the same job superseded."""
        where = where or {}
        allowed = {name for name, _ in COLUMNS} | {"id"}
        bad = set(where) - allowed
        if bad:
            raise StoreQueryError(f"unknown result column(s) {sorted(bad)}; known: {', '.join(n for n, _ in COLUMNS)}")
        terms = [f"{k} = ?" for k in where] + (["superseded_by IS NULL"] if current else [])
        clause = " AND ".join(terms)
        sql = "SELECT * FROM results" + (f" WHERE {clause}" if clause else "") + f" ORDER BY {order}"
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._connect() as db:
            rows = [dict(r) for r in db.execute(sql, list(where.values()))]
        for row in rows:
            for key in _JSON_FIELDS:
                if isinstance(row.get(key), str):
                    row[key] = json.loads(row[key])
        return rows

    def count(self, where: dict[str, Any] | None = None) -> int:
        return len(self.query(where))

    def job_keys(self, sweep_id: str) -> set[str]:
        """Jobs of a sweep that already have a final row (``resume`` runs the others)."""
        return {r["job_key"] for r in self.job_rows(sweep_id) if r["final"]}

    def job_rows(self, sweep_id: str) -> list[dict[str, Any]]:
        """The sweep's rows in the order stored, each as id, job_key, status, error, extra, superseded_by,
        final and retryable (only what sweep bookkeeping needs: no timings)."""
        with self._connect() as db:
            rows = [dict(r) for r in db.execute(
                "SELECT id, job_key, status, error, extra, superseded_by FROM results WHERE sweep_id = ? "
                "ORDER BY id", (sweep_id,))]
        for row in rows:
            row["extra"] = _json_dict(row["extra"])
            row["final"] = is_final(row["status"], row["extra"])
            row["retryable"] = row["status"] == "skipped" and bool(row["extra"].get("retryable"))
        return rows

    def export(self, fmt: str, rows: list[dict[str, Any]] | None = None) -> str:
        rows = self.query(order="id ASC") if rows is None else rows
        if fmt == "json":
            return json.dumps(rows, indent=1, default=str)
        if fmt == "csv":
            buf = io.StringIO()
            names = ["id"] + [name for name, _ in COLUMNS]
            writer = csv.DictWriter(buf, fieldnames=names, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
            return buf.getvalue()
        raise StoreQueryError(f"unknown export format {fmt!r}; supported: csv, json")


def _insert(db: sqlite3.Connection, row: ResultRow) -> int:
    data = asdict(row)
    for key in _JSON_FIELDS:
        data[key] = json.dumps(data[key], default=str)
    names = list(data)
    cur = db.execute(f"INSERT INTO results ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                     [data[n] for n in names])
    return int(cur.lastrowid)
