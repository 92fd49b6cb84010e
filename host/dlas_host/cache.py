"""Content-addressed cache for compiled artifacts (and any other blob: tuning records, ONNX files).

Blobs are stored once under their sha256 (``objects/ab/abcd...``); a build key (model, options, target,
TVM version...) maps to a blob through a small JSON index entry. A hit re-hashes the blob, so a corrupted
or tampered file is detected, evicted and rebuilt instead of being shipped to a device; the rebuild replaces
the corrupt blob atomically (temporary file + rename), so the stored hash is always the file's.

Scratch directories carry their owner's pid and host (``tmp/<pid>@<host>.<random>``); opening the cache
removes stale ones (older than ``STALE_S`` and whose owner is gone) that killed builds left behind, and the
tuning builder's stale ``dlas-cand-*`` directories in the system temporary directory.
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
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

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
