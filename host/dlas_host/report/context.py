"""What the page header says about the sweep: its spec, the devices it ran on, the software versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import DlasError
from .native import native
from .rows import Meas

HOST_VERSIONS = ("dlas", "tvm", "torch", "numpy", "python", "platform")
DTYPES = ("float16", "bfloat16", "int8")


def load_sweeps(db_path: Path, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The sweep records (name, spec as run, status) of the sweeps the rows belong to; unreadable ones are
    left out (the report still renders)."""
    from ..sweep.state import SweepState  # noqa: PLC0415

    ids = sorted({r.get("sweep_id") for r in rows if isinstance(r.get("sweep_id"), str) and r.get("sweep_id")})
    if not ids:
        return []
    try:
        state = SweepState(db_path)
    except DlasError:
        return []
    out = []
    for sweep_id in ids:
        try:
            record = state.get(sweep_id)
        except DlasError:
            continue
        if record.get("id") == sweep_id:
            out.append(record)
    return out


def spec_text(spec: Any) -> str:
    """A sweep spec as YAML (JSON if YAML is unavailable)."""
    try:
        import yaml  # noqa: PLC0415

        return yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=110)
    except Exception:  # noqa: BLE001 - a spec that YAML cannot dump is still shown
        return json.dumps(spec, indent=1, default=str)


def _first(values: Iterable[Any]) -> str:
    for v in values:
        if v not in (None, "", [], {}):
            return str(v)
    return ""


def devices(meas: list[Meas]) -> list[dict[str, str]]:
    """One line per device: what it is and what it computes natively, from its rows' ``device_env``."""
    by_dev: dict[str, list[Meas]] = {}
    for m in meas:
        by_dev.setdefault(m["device"], []).append(m)
    out = []
    for dev, ms in sorted(by_dev.items()):
        envs = [m.device_env for m in ms if m.device_env]
        env = envs[0] if envs else {}
        gpus = env.get("gpus") if isinstance(env.get("gpus"), list) else []
        gpu = ", ".join(str(g.get("name", "?")) for g in gpus if isinstance(g, Mapping))
        accel = any(m.is_accelerator for m in ms)
        support = []
        for dtype in DTYPES:
            state, _ = native(env, dtype, accel)
            support.append(f"{dtype} {'yes' if state else 'no' if state is False else '?'}")
        cores = env.get("cores_logical")
        out.append({
            "device": dev,
            "arch": _first(e.get("arch") for e in envs),
            "processor": gpu if accel and gpu else _first(e.get("cpu_model") for e in envs),
            "cores": str(cores) if isinstance(cores, int) and cores else "",
            "native": ", ".join(support),
            "target": _first(m["target"] for m in ms),
            "tvm": _first(e.get("tvm_version") for e in envs),
            "agent": _first(e.get("agent_version") for e in envs),
            "rows": str(len(ms)),
        })
    return out


def versions(meas: list[Meas]) -> dict[str, str]:
    """Host software versions seen in the rows (several values when the rows came from several setups)."""
    out = {}
    for key in HOST_VERSIONS:
        seen = sorted({str(m.host_env[key]) for m in meas if m.host_env.get(key) not in (None, "")})
        if seen:
            out[key] = ", ".join(seen[:4]) + (f" (+{len(seen) - 4} more)" if len(seen) > 4 else "")
    return out
