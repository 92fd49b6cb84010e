"""Content-addressed cache for compiled artifacts (and any other blob: tuning records, ONNX files).

Blobs are stored once under their sha256 (``objects/ab/abcd...``); a build key (model, options, target,
TVM version...) maps to a blob through a small JSON index entry. A hit re-hashes the blob, so a corrupted
or tampered file is detected, evicted and rebuilt instead of being shipped to a device.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dlas_agent.runner import sha256_file

from .paths import sub_dir


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


class CacheCorrupt(RuntimeError):
    """A cached blob no longer matches its hash."""


class ArtifactCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else sub_dir("cache")
        self.objects = self.root / "objects"
        self.index = self.root / "index"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.index.mkdir(parents=True, exist_ok=True)

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
        if not blob.exists():
            tmp = blob.with_name(f".{blob.name}.{os.getpid()}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, blob)
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
        """A private temporary directory inside the cache (same filesystem, so moves are atomic)."""
        tmp = self.root / "tmp"
        tmp.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(dir=tmp))

    @staticmethod
    def _write_json(path: Path, data: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str))
        os.replace(tmp, path)


def entry_dict(entry: Entry) -> dict[str, Any]:
    data = asdict(entry)
    data["path"] = str(entry.path)
    return data
