"""Reaching an agent: spawn it locally, tunnel to it over SSH, or queue for it at a TVM RPC tracker.

The session itself (``AgentClient``, deadlines, secrets, local agents) lives in ``agent_client``, which the
connection kinds build on; this module only chooses the kind. Its names are re-exported here for callers.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from dlas_agent import auth

from .agent_client import (AgentClient, AgentError, AgentTimeout, LocalAgent, Timeouts,  # noqa: F401 - re-exported
                           call_with_deadline, device_secret, rpc_connect, secret_path)
from .devices import Device


@contextlib.contextmanager
def connect(device: Device, timeouts: Timeouts | None = None) -> Iterator[AgentClient]:
    """An agent session for ``device``, torn down (and a local agent stopped) on exit."""
    timeouts = timeouts or Timeouts()
    conn = device.connection
    if conn.type == "local":
        agent = LocalAgent(threads=device.threads)
        try:
            port = agent.start()
            session = rpc_connect("127.0.0.1", port, "dlas", device.agent.session_timeout_s, timeouts, agent.secret)
            yield AgentClient(session, device, timeouts, f"local:127.0.0.1:{port}")
        finally:
            agent.stop()
    elif conn.type == "tracker":
        from tvm import rpc  # noqa: PLC0415
        from tvm.rpc import base  # noqa: PLC0415

        secret = device_secret(device)

        def request() -> Any:
            # TVM's TrackerSession.request, with the authenticated connect to the agent the tracker names
            tracker = rpc.connect_tracker(conn.host, conn.port)
            try:
                base.sendjson(tracker._sock, [base.TrackerCode.REQUEST, conn.key, "", 1])  # noqa: SLF001
                value = base.recvjson(tracker._sock)  # noqa: SLF001
            finally:
                tracker.close()
            if value[0] != base.TrackerCode.SUCCESS:
                raise AgentError(f"tracker {conn.host}:{conn.port}: request for {conn.key} failed: {value}")
            url, port, matchkey = value[1]
            try:
                return auth.connect(url, port, secret, key=matchkey, session_timeout_s=device.agent.session_timeout_s,
                                    timeout_s=timeouts.connect_s)
            except auth.AuthError as exc:
                raise AgentError(f"{device.name}: agent {url}:{port} from the tracker: authentication failed: "
                                 f"{exc}") from None

        session = call_with_deadline(request, timeouts.queue_s, f"{device.name}: tracker queue for {conn.key}")
        yield AgentClient(session, device, timeouts, f"tracker:{conn.host}:{conn.port}/{conn.key}")
    elif conn.type == "ssh":
        from .fleet.tunnel import ssh_agent_session  # noqa: PLC0415 - paramiko only when needed

        with ssh_agent_session(device, timeouts) as client:
            yield client
    else:  # pragma: no cover - the schema admits no other type
        raise AgentError(f"unknown connection type {conn.type}")
