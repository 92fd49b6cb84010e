"""Health checks before each job: is the device's agent reachable and answering, within a short deadline?"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..devices import Device
from ..transport import AgentClient, AgentError, Timeouts, connect
from .locks import device_lock


class DeviceUnhealthy(AgentError):
    """The health check before a job failed."""


@dataclass
class Health:
    device: str
    ok: bool
    detail: str
    latency_ms: float = 0.0
    agent: dict[str, Any] = field(default_factory=dict)


def health_check(device: Device, timeout_s: float = 15.0) -> Health:
    """Ping the device's agent with a short deadline. Never raises for an unhealthy device: see ``.ok``.

    The local device is always healthy: its agent is spawned fresh for each job.
    """
    if device.connection.type == "local":
        return Health(device.name, True, "local: agent spawned per job")
    t0 = time.monotonic()
    timeouts = Timeouts(connect_s=timeout_s, info_s=timeout_s, queue_s=timeout_s)
    try:
        with connect(device, timeouts) as client:
            ping = client.ping()
        ms = (time.monotonic() - t0) * 1e3
        return Health(device.name, True, f"agent {ping.get('agent')} answered in {ms:.0f} ms", ms, ping)
    except AgentError as exc:
        return Health(device.name, False, str(exc), (time.monotonic() - t0) * 1e3)


def require_healthy(device: Device, timeout_s: float = 15.0) -> Health:
    health = health_check(device, timeout_s)
    if not health.ok:
        raise DeviceUnhealthy(f"{device.name}: health check failed: {health.detail}")
    return health


def _lock_wait_s() -> float:
    try:
        return float(os.environ.get("DLAS_LOCK_WAIT_S", "300"))
    except ValueError:
        return 300.0


@contextlib.contextmanager
def job_session(device: Device, timeouts: Timeouts | None = None, *, lock_wait_s: float | None = None,
                health_timeout_s: float = 15.0) -> Iterator[AgentClient]:
    """What one job on a device needs: the device lock, a passing health check, then an agent session."""
    wait = _lock_wait_s() if lock_wait_s is None else lock_wait_s
    with device_lock(device.name, wait_s=wait, purpose="bench"):
        require_healthy(device, health_timeout_s)
        with connect(device, timeouts) as client:
            yield client
