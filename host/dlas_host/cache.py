"""Content-addressed cache for compiled artifacts (and any other blob: tuning records, ONNX files).

Blobs are stored once under their sha256 (``objects/ab/abcd...``); a build key (model, options, target,
TVM version...) maps to a blob through a small JSON index entry. A hit re-hashes the blob, so a corrupted
or tampered file is detected, evicted and rebuilt instead of being shipped to a device; the rebuild replaces
the corrupt blob atomically (temporary file + rename), so the stored hash is always the file's.

Scratch directories carry their owner's pid and host (``tmp/<pid>@<host>.<random>``); opening the cache
removes stale ones (older than ``STALE_S`` and whose owner is gone) that killed builds left behind, and the
tuning builder's stale ``dlas-cand-*`` directories in the system temporary directory.

Each hit touches its index entry, so the entry's mtime is its last use: ``collect`` (``dlas-host cache gc``)
removes least-recently-used entries first, never one used in the last ``IN_USE_S`` seconds nor one a caller
says to keep (an unfinished sweep's), and then the blobs no entry refers to any more.
"""

from __future__ import annotations

import hashlib
import json
import os
import logging
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from dlas_agent.runner import sha256_file

from .paths import sub_dir
from .errors import DlasError

log = logging.getLogger(__name__)

STALE_S = 3 * 3600  # a scratch directory untouched this long, whose owner process is gone, is litter
FOREIGN_STALE_S = 24 * 3600  # another host's scratch directory (its pid cannot be checked from here)
_cleaned: set[Path] = set()  # roots already swept by this process


def key_of(parts: dict[str, Any]) -> str:
    """Stable hash of a build description (order of keys does not matter)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Entry:
    key: str
    sha256: str
    path: Path
    size: int
    meta: dict[str, Any] = field(default_factory=dict)


class CacheCorrupt(DlasError, RuntimeError):
    """A cached blob no longer matches its hash."""


class ArtifactCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else sub_dir("cache")
        self.objects = self.root / "objects"
        self.index = self.root / "index"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.index.mkdir(parents=True, exist_ok=True)
        if self.root.resolve() not in _cleaned:
            _cleaned.add(self.root.resolve())
            clean_stale(self.root)

    def _blob_path(self, sha: str, suffix: str) -> Path:
        return self.objects / sha[:2] / f"{sha}{suffix}"

    def _index_path(self, key: str) -> Path:
        return self.index / key[:2] / f"{key}.json"

    def get(self, key: str) -> Entry | None:
        """The entry for ``key``, verified; ``None`` on a miss or when the blob was corrupt (then evicted)."""
        ipath = self._index_path(key)
        if not ipath.is_file():
            return None
        try:
            record = json.loads(ipath.read_text())
            blob = Path(record["path"])
            if not blob.is_absolute():
                blob = self.root / blob
            if not blob.is_file() or sha256_file(blob) != record["sha256"]:
                raise CacheCorrupt(key)
        except (CacheCorrupt, json.JSONDecodeError, KeyError, OSError):
            self.evict(key)
            return None
        with suppress(OSError):  # last use, for least-recently-used collection (``collect``)
            os.utime(ipath)
        return Entry(key=key, sha256=record["sha256"], path=blob, size=blob.stat().st_size, meta=record.get("meta", {}))

    def put(self, key: str, source: Path, meta: dict[str, Any] | None = None) -> Entry:
        """Store ``source`` (moved in) under its content hash and map ``key`` to it, atomically."""
        sha = sha256_file(source)
        blob = self._blob_path(sha, "".join(source.suffixes[-1:]))
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.is_file() or sha256_file(blob) != sha:  # missing, or corrupt: replace it, never keep it
            tmp = blob.with_name(f".{blob.name}.{os.getpid()}.tmp")
            try:
                shutil.copyfile(source, tmp)
                if sha256_file(tmp) != sha:
                    raise CacheCorrupt(f"{source} changed while it was being stored")
                os.replace(tmp, blob)
            finally:
                tmp.unlink(missing_ok=True)
        record = {"key": key, "sha256": sha, "path": str(blob.relative_to(self.root)), "created": time.time(),
                  "meta": meta or {}}
        self._write_json(self._index_path(key), record)
        return Entry(key=key, sha256=sha, path=blob, size=blob.stat().st_size, meta=meta or {})

    def evict(self, key: str) -> None:
        self._index_path(key).unlink(missing_ok=True)

    def find_by_sha(self, sha: str) -> Path | None:
        for blob in (self.objects / sha[:2]).glob(f"{sha}*"):
            return blob
        return None

    def entries(self) -> list[dict[str, Any]]:
        out = []
        for ipath in sorted(self.index.glob("*/*.json")):
            try:
                out.append(json.loads(ipath.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        return out

    def scratch(self) -> Path:
        """A private temporary directory inside the cache (same filesystem, so moves are atomic).

        Named after its owner (pid and host), so a later process can tell a killed build's litter."""
        tmp = self.root / "tmp"
        tmp.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}@{_host()}.", dir=tmp))

    @contextmanager
    def scratch_dir(self) -> Iterator[Path]:
        """``scratch()`` that is removed with its contents when the block ends, on error too."""
        path = self.scratch()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def _write_json(path: Path, data: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str))
        os.replace(tmp, path)


def _host() -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:64] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def _owner_gone(name: str, age_s: float) -> bool:
    """Whether a scratch entry named ``<pid>@<host>.*`` (or an older unnamed one) is stale."""
    head, _, _ = name.lstrip(".").partition(".")
    pid_text, at, host = head.partition("@")
    if at and pid_text.isdigit():
        if host != _host():
            return age_s > FOREIGN_STALE_S
        return age_s > STALE_S and not _pid_alive(int(pid_text))
    return age_s > STALE_S  # no owner recorded (made before owners were): age alone


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for sub in path.rglob("*"):
            try:
                newest = max(newest, sub.lstat().st_mtime)
            except OSError:
                continue
    return newest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(root: Path, now: float | None = None) -> list[Path]:
    """Remove what killed builds left: stale scratch directories under ``root/tmp``, half-copied blobs and
    index entries (``.<name>.<pid>.tmp``), and stale ``dlas-cand-*`` tuning build directories of this user.
    Anything whose owner may still be running is kept. Returns what was removed."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    candidates: list[tuple[Path, bool]] = []  # (path, named after its owner)
    if (root / "tmp").is_dir():
        candidates += [(p, True) for p in (root / "tmp").iterdir()]
    for sub in ("objects", "index"):
        candidates += [(p, False) for p in (root / sub).glob("*/.*.tmp")]
    for path, owned in candidates:
        try:
            age = now - _newest_mtime(path)
            if owned:
                stale = _owner_gone(path.name, age)
            else:  # .<name>.<pid>.tmp
                pid = path.name.rsplit(".", 2)[-2]
                stale = age > STALE_S and not (pid.isdigit() and _pid_alive(int(pid)))
            if stale:
                _remove(path)
                removed.append(path)
        except OSError:
            continue
    try:
        for path in Path(tempfile.gettempdir()).glob("dlas-cand-*"):
            try:
                if path.lstat().st_uid == os.getuid() and now - _newest_mtime(path) > STALE_S:
                    _remove(path)
                    removed.append(path)
            except OSError:
                continue
    except OSError:
        pass
    if removed:
        log.warning("removed %d stale temporary item(s) left by interrupted builds under %s", len(removed), root)
    return removed


def entry_dict(entry: Entry) -> dict[str, Any]:
    data = asdict(entry)
    data["path"] = str(entry.path)
    return data


# ------------------------------------------------------------------------------------------------ stats and gc
IN_USE_S = 10 * 60  # an entry used (or a blob written) this recently may be in use right now: never collected
_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class CacheError(DlasError, ValueError):
    """Bad input to a cache command (a size or an age it cannot read), or a collection already running."""


def parse_size(text: str) -> int:
    """Bytes from ``10G``, ``500M``, ``1.5GiB``, ``123`` (binary units: K = 1024)."""
    raw = str(text).strip().lower().removesuffix("ib").removesuffix("b") if str(text).strip() else ""
    num, unit = raw, ""
    if raw and raw[-1] in _SIZE_UNITS:
        num, unit = raw[:-1], raw[-1]
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if not num or value < 0 or value != value or value == float("inf"):
        raise CacheError(f"bad size {text!r}: give a number with an optional unit K, M, G or T (e.g. 10G)")
    return int(value * _SIZE_UNITS[unit])


def parse_age(text: str) -> float:
    """Seconds from ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (a bare number is seconds)."""
    raw = str(text).strip().lower()
    num, unit = (raw[:-1], raw[-1]) if raw and raw[-1] in _AGE_UNITS else (raw, "s")
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if not num or value < 0 or value != value or value == float("inf"):
        raise CacheError(f"bad age {text!r}: give a number with a unit s, m, h, d or w (e.g. 30d)")
    return value * _AGE_UNITS[unit]


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass
class CacheItem:
    """One index entry as collection sees it (no hash check: stat only)."""

    key: str
    sha256: str
    blob: Path
    size: int  # the blob's size (0 when it is missing)
    last_used: float  # the index entry's mtime: its last hit, or when it was stored
    created: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        suffix = self.blob.suffix.lstrip(".")
        return str(self.meta.get("kind") or {"so": "artifact", "onnx": "onnx"}.get(suffix, suffix or "blob"))

    @property
    def model(self) -> str:
        return str(self.meta.get("model") or "?")

    @property
    def device(self) -> str:
        return str(self.meta.get("device") or "?")


def cache_items(cache: ArtifactCache) -> list[CacheItem]:
    """Every readable index entry, with its blob's size and its last use."""
    items = []
    for ipath in sorted(cache.index.glob("*/*.json")):
        try:
            record = json.loads(ipath.read_text())
            used = ipath.stat().st_mtime
            blob = Path(record["path"])
            blob = blob if blob.is_absolute() else cache.root / blob
            size = blob.stat().st_size if blob.is_file() else 0
            items.append(CacheItem(key=str(record.get("key") or ipath.stem), sha256=str(record["sha256"]), blob=blob,
                                   size=size, last_used=used, created=float(record.get("created") or used),
                                   meta=record.get("meta") if isinstance(record.get("meta"), dict) else {}))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return items


def cache_blobs(cache: ArtifactCache) -> dict[Path, tuple[int, float]]:
    """Every stored blob (half-written ``.tmp`` files aside): its size and mtime."""
    blobs = {}
    for path in cache.objects.glob("*/*"):
        if path.name.startswith(".") or not path.is_file():
            continue
        with suppress(OSError):
            st = path.stat()
            blobs[path] = (st.st_size, st.st_mtime)
    return blobs


def cache_stats(cache: ArtifactCache) -> dict[str, Any]:
    """Entries, bytes on disk, bytes per kind/device/model (a blob counted once per group), oldest and newest use."""
    items = cache_items(cache)
    blobs = cache_blobs(cache)
    referenced = {i.blob for i in items}
    groups: dict[str, dict[str, dict[Path, int]]] = {"kind": {}, "device": {}, "model": {}}
    for item in items:
        for name, group in groups.items():
            group.setdefault(getattr(item, name), {})[item.blob] = item.size
    orphans = [p for p in blobs if p not in referenced]
    used = [i.last_used for i in items]
    return {
        "root": str(cache.root),
        "entries": len(items),
        "blobs": len(blobs),
        "total_bytes": sum(size for size, _ in blobs.values()),
        "orphan_blobs": len(orphans),
        "orphan_bytes": sum(blobs[p][0] for p in orphans),
        "missing_blobs": sum(1 for i in items if i.blob not in blobs),
        **{f"bytes_by_{name}": {k: sum(v.values()) for k, v in sorted(group.items())}
           for name, group in groups.items()},
        "oldest_use": min(used) if used else None,
        "newest_use": max(used) if used else None,
    }


@dataclass
class GcResult:
    """What a collection removed (or would remove, on a dry run) and why the rest stayed."""

    total_before: int
    total_after: int
    removed: list[dict[str, Any]] = field(default_factory=list)  # key, size freed, last use, model, device, why
    orphans_removed: int = 0
    kept: dict[str, int] = field(default_factory=dict)  # reason -> entries that would otherwise have gone
    dry_run: bool = False
    max_size: int | None = None

    @property
    def freed(self) -> int:
        return self.total_before - self.total_after

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "freed_bytes": self.freed,
                "over_cap": self.max_size is not None and self.total_after > self.max_size}


Keep = Callable[[CacheItem], "str | None"]  # the reason an entry must stay (an unfinished sweep needs it), or None


def collect(cache: ArtifactCache, max_size: int | None = None, max_age: float | None = None,
            keep: Keep | None = None, dry_run: bool = False, now: float | None = None,
            in_use_s: float = IN_USE_S) -> GcResult:
    """Remove least-recently-used entries until the blobs fit ``max_size``, and entries unused for ``max_age``;
    then every blob no entry refers to. Kept always: entries ``keep`` names a reason for, and anything used or
    written in the last ``in_use_s`` seconds. ``dry_run``: compute the same result, remove nothing."""
    if max_size is None and max_age is None:
        raise CacheError("give --max-size or --max-age (or set DLAS_CACHE_MAX)")
    now = time.time() if now is None else now
    with _gc_lock(cache, dry_run):
        blobs = cache_blobs(cache)
        items = sorted(cache_items(cache), key=lambda i: i.last_used)
        refs: dict[Path, int] = {}
        for item in items:
            refs[item.blob] = refs.get(item.blob, 0) + 1
        total = sum(size for size, _ in blobs.values())
        result = GcResult(total_before=total, total_after=total, dry_run=dry_run, max_size=max_size)
        for path, (size, mtime) in blobs.items():  # garbage already: nothing refers to it
            if path not in refs and now - mtime > in_use_s:
                total -= size
                result.orphans_removed += 1
                if not dry_run:
                    path.unlink(missing_ok=True)
        for item in items:
            too_old = max_age is not None and now - item.last_used > max_age
            too_big = max_size is not None and total > max_size
            if not (too_old or too_big):
                continue
            why_keep = "in use (used in the last %d min)" % (in_use_s // 60) if now - item.last_used <= in_use_s \
                else (keep(item) if keep else None)
            if why_keep:
                result.kept[why_keep] = result.kept.get(why_keep, 0) + 1
                continue
            refs[item.blob] -= 1
            freed = item.size if refs[item.blob] == 0 and item.blob in blobs else 0
            total -= freed
            result.removed.append({"key": item.key, "bytes_freed": freed, "last_used": item.last_used,
                                   "kind": item.kind, "model": item.model, "device": item.device,
                                   "why": "max-age" if too_old else "max-size"})
            if not dry_run:
                cache.evict(item.key)
                if freed:
                    item.blob.unlink(missing_ok=True)
        result.total_after = total
    return result


@contextmanager
def _gc_lock(cache: ArtifactCache, dry_run: bool) -> Iterator[None]:
    """One collection at a time per cache (a dry run reads only and takes no lock)."""
    if dry_run:
        yield
        return
    import fcntl  # noqa: PLC0415 - POSIX only, like the rest of the host

    with open(cache.root / "gc.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CacheError(f"another cache collection is running on {cache.root}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_max_size() -> int | None:
    """``DLAS_CACHE_MAX`` (e.g. 20G): the cap ``dlas-host cache gc`` applies when given no --max-size."""
    value = os.environ.get("DLAS_CACHE_MAX", "").strip()
    return parse_size(value) if value else None
