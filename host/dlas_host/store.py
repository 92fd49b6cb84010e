"""Results store: embedded SQLite, one row per measurement, every DLAS dimension a column.

Rows are only ever added (a failed or skipped job is a row too, with its reason), each in its own
transaction, in WAL mode, so a crash or a bad job never loses what was already recorded. New columns are
added by migration; old databases keep working.
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
from typing import Any, Iterator

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
        data = asdict(row)
        for key in _JSON_FIELDS:
            data[key] = json.dumps(data[key], default=str)
        names = list(data)
        with self._connect() as db:
            cur = db.execute(f"INSERT INTO results ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                             [data[n] for n in names])
            return int(cur.lastrowid)

    def query(self, where: dict[str, Any] | None = None, limit: int | None = None,
              order: str = "id DESC") -> list[dict[str, Any]]:
        where = where or {}
        allowed = {name for name, _ in COLUMNS} | {"id"}
        bad = set(where) - allowed
        if bad:
            raise StoreQueryError(f"unknown result column(s) {sorted(bad)}; known: {', '.join(n for n, _ in COLUMNS)}")
        clause = " AND ".join(f"{k} = ?" for k in where)
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

    def job_keys(self, sweep_id: str, statuses: tuple[str, ...] = ("ok", "skipped")) -> set[str]:
        """Jobs of a sweep that already have a final row (used to resume)."""
        marks = ", ".join("?" * len(statuses))
        with self._connect() as db:
            return {r[0] for r in db.execute(
                f"SELECT job_key FROM results WHERE sweep_id = ? AND status IN ({marks})", [sweep_id, *statuses])}

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
