"""Test-wide setup: every test session writes into its own data directory, never the user's."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SESSION_DATA = Path(tempfile.mkdtemp(prefix="dlas-test-data-"))
os.environ.setdefault("DLAS_DATA_DIR", str(_SESSION_DATA))
os.environ.setdefault("TVM_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def registry():
    from dlas_host.devices import load

    return load(ROOT / "devices.yaml")


@pytest.fixture(scope="session")
def local_device(registry):
    return registry.get("local")


@pytest.fixture()
def store(tmp_path):
    from dlas_host.store import ResultStore

    return ResultStore(tmp_path / "results.sqlite")
