"""``dlas-agent health``: is the agent on this machine (or container) alive and answering?

Used as the container HEALTHCHECK. TVM's RPC server serves one session at a time and only accepts the
next connection when the current one ends, so a ping during a long benchmark gets no answer. To tell
"busy" from "hung", a ping that times out after the TCP connect succeeded is followed by a look at the
process that listens on the port: if it is running and has a live session worker, the agent is busy
(healthy); the session is bounded by the host's session timeout, after which TVM kills it.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import asdict, dataclass
from typing import Any

HEALTHY, UNHEALTHY = 0, 1


@dataclass
class Health:
    state: str  # "ok" | "busy" | "down" | "hung"
    detail: str
    port: int
    ping: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        return HEALTHY if self.state in ("ok", "busy") else UNHEALTHY

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def _ping(host: str, port: int, key: str, timeout_s: float, secret: bytes) -> dict[str, Any]:
    """One authenticated RPC session calling dlas.ping; raises TimeoutError when no answer comes in time."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            from . import auth  # noqa: PLC0415
            from .protocol import FN_PING  # noqa: PLC0415

            sess = auth.connect(host, port, secret, key=key, session_timeout_s=max(10, int(timeout_s) + 5),
                                timeout_s=timeout_s)
            box["value"] = json.loads(sess.get_function(FN_PING)())
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name="health-ping")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _busy_or_hung(port: int) -> tuple[str, str]:
    """After a ping timeout: a live process serving an accepted connection on ``port`` means busy."""
    import psutil  # noqa: PLC0415

    dead = (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    try:
        conns = [c for c in psutil.net_connections(kind="tcp") if c.laddr and c.laddr.port == port and c.pid]
    except (psutil.AccessDenied, OSError):
        conns = []
    if not conns:
        return "hung", "connected but no RPC answer, and the serving process is not visible from here"
    try:
        # The session worker holds the accepted connection; our own connection waits unaccepted (no pid).
        sessions = [psutil.Process(c.pid) for c in conns if c.status == psutil.CONN_ESTABLISHED]
        serving = [p for p in sessions if p.status() not in dead]
        if serving:
            parent = serving[0].parent()
            if parent is not None and parent.status() in dead:
                return "hung", f"server process {parent.pid} is {parent.status()}"
            return "busy", f"serving a session (worker pid {serving[0].pid})"
        if sessions:
            return "hung", f"session worker {sessions[0].pid} is {sessions[0].status()}"
    except psutil.NoSuchProcess:
        return "down", "server process exited"
    return "hung", f"server process {conns[0].pid} accepts no session and serves none"


def check(port: int, host: str = "127.0.0.1", key: str = "dlas", timeout_s: float = 10.0,
          secret: bytes | None = None) -> Health:
    if not secret:
        return Health("down", "no secret configured (--secret-file, DLAS_AGENT_SECRET_FILE or DLAS_AGENT_SECRET): "
                      "cannot authenticate to the agent", port)
    try:
        with socket.create_connection((host, port), timeout=min(timeout_s, 5.0)):
            pass
    except TimeoutError as exc:
        return Health("hung", f"{host}:{port} accepts no connection: {exc}", port)
    except OSError as exc:
        return Health("down", f"nothing listening on {host}:{port}: {exc.strerror or exc}", port)
    try:
        answer = _ping(host, port, key, timeout_s, secret)
    except TimeoutError as exc:
        state, detail = _busy_or_hung(port)
        return Health(state, f"{exc}; {detail}", port)
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy, with its cause
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        if "does not serve key" in str(exc):
            # The server did the handshake and refused our key: it is alive. Agents registered at a
            # tracker only accept the tracker's one-time match keys.
            return Health("ok", "RPC server answers (key refused: registered at a tracker?)", port)
        return Health("hung", f"RPC ping failed: {type(exc).__name__}: {lines[-1] if lines else ''}", port)
    return Health("ok", "dlas.ping answered", port, ping=answer)
