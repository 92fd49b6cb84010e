"""Where DLAS Lab keeps its state: results database, artifact cache, tuning records, models.

Everything lives under one data directory: ``$DLAS_DATA_DIR`` if set, else ``.data/`` at the project root
when running from a checkout, else ``~/.local/share/dlas-lab``.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    env = os.environ.get("DLAS_DATA_DIR")
    if env:
        path = Path(env).expanduser()
    elif (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "host").is_dir():
        path = PROJECT_ROOT / ".data"
    else:
        path = Path.home() / ".local" / "share" / "dlas-lab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sub_dir(name: str) -> Path:
    path = data_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_devices_file() -> Path:
    env = os.environ.get("DLAS_DEVICES")
    if env:
        return Path(env).expanduser()
    return PROJECT_ROOT / "devices.yaml"
