"""The host's way to an agent on an SSH device: a local port forward over an SSH ``direct-tcpip`` channel.

The agent binds the device's loopback only; nothing unauthenticated listens on the lab network. The host
listens on an ephemeral 127.0.0.1 port and pipes each accepted connection through its own channel to
``127.0.0.1:<rpc_port>`` on the device. Any local user can reach that port (and, on the device, the agent's);
the agent therefore authenticates every connection with the device's secret (``dlas_agent.auth``).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from typing import Any, Iterator

from ..devices import Device
from ..agent_client import (AgentClient, AgentError, AgentTimeout, Timeouts, call_with_deadline, device_secret,
                         rpc_connect)
from .ssh import SSH, HostUnreachable, RemoteTimeout, SSHError


class AgentNotRunning(SSHError):
    """SSH works, but nothing listens on the agent's port on the device."""


def open_channel(ssh: SSH, port: int, timeout_s: float) -> Any:
    """A direct-tcpip channel to 127.0.0.1:port on the device, or a clear error."""
    import paramiko  # noqa: PLC0415

    try:
        return call_with_deadline(
            lambda: ssh.transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0),
                                               timeout=timeout_s), timeout_s + 2, f"{ssh.name}: channel to :{port}")
    except AgentTimeout:
        raise RemoteTimeout(f"{ssh.name}: no channel to the agent port {port} within {timeout_s:g} s "
                            "(device hung or link down)") from None
    except AgentError as exc:
        cause = exc.__cause__
        if isinstance(cause, paramiko.ChannelException):
            raise AgentNotRunning(
                f"{ssh.name}: no agent listening on the device's 127.0.0.1:{port} ({cause.text or cause}); "
                f"deploy or restart it with `dlas-host deploy --device NAME`") from None
        raise HostUnreachable(f"{ssh.name}: channel to the agent port failed: {exc}") from None


class Forward:
    """127.0.0.1:<ephemeral> on the host -> 127.0.0.1:<remote_port> on the device, until ``close()``."""

    def __init__(self, ssh: SSH, remote_port: int, channel_timeout_s: float = 15.0) -> None:
        self.ssh = ssh
        self.remote_port = remote_port
        self.channel_timeout_s = channel_timeout_s
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.5)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._pairs: list[tuple[socket.socket, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=f"forward:{self.port}")
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                chan = open_channel(self.ssh, self.remote_port, self.channel_timeout_s)
            except SSHError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, chan))
            threading.Thread(target=self._pump, args=(client, chan), daemon=True,
                             name=f"forward:{self.port}:pump").start()

    def _pump(self, sock: socket.socket, chan: Any) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([sock, chan], [], [], 0.5)
                if sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        break
                    chan.sendall(data)
                if chan in ready:
                    data = chan.recv(65536)
                    if not data:
                        break
                    sock.sendall(data)
                if chan.closed or not self.ssh.alive():
                    break
        except OSError:
            pass
        finally:
            for closer in (chan.close, sock.close):
                with contextlib.suppress(Exception):
                    closer()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for sock, chan in pairs:
            for closer in (chan.close, sock.close):
                with contextlib.suppress(Exception):
                    closer()
        self._thread.join(2)


# TVM's RPC client can hold the GIL while it waits on its socket, which would freeze a forwarder running on
# Python threads in the same process: the forward runs in its own small process (``python -m
# dlas_host.fleet.tunnel``), which makes the SSH connection with the same host-key checks and reports
# failures as one JSON line that becomes the same exception here.
_ERRORS: dict[str, type[SSHError]] = {}


def _error_types() -> dict[str, type[SSHError]]:
    if not _ERRORS:
        from . import ssh as ssh_mod  # noqa: PLC0415

        for cls in (ssh_mod.HostUnreachable, ssh_mod.AuthFailed, ssh_mod.HostKeyUnknown, ssh_mod.HostKeyChanged,
                    ssh_mod.RemoteTimeout, AgentNotRunning, SSHError):
            _ERRORS[cls.__name__] = cls
    return _ERRORS


class ForwardProcess:
    """A forwarder process: 127.0.0.1:<port> here -> SSH -> 127.0.0.1:<remote_port> on the device."""

    def __init__(self, conn: Any, remote_port: int, timeouts: Timeouts, accept_new_host_key: bool = False) -> None:
        import json  # noqa: PLC0415
        import os  # noqa: PLC0415
        import subprocess  # noqa: PLC0415
        import sys  # noqa: PLC0415
        from pathlib import Path  # noqa: PLC0415

        pkg_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_root] + [p for p in sys.path if p]))
        self.proc = subprocess.Popen([sys.executable, "-m", "dlas_host.fleet.tunnel"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                     start_new_session=True)
        config = {"conn": conn.model_dump(), "remote_port": remote_port, "connect_s": timeouts.connect_s,
                  "accept_new_host_key": accept_new_host_key}
        try:
            self.proc.stdin.write(json.dumps(config) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            line = call_with_deadline(self.proc.stdout.readline, timeouts.connect_s * 2 + 15,  # type: ignore[union-attr]
                                      f"ssh {conn.user}@{conn.host}:{conn.port}: tunnel")
        except AgentTimeout:
            self.close()
            raise HostUnreachable(f"{conn.user}@{conn.host}:{conn.port}: the SSH tunnel was not up within "
                                  f"{timeouts.connect_s * 2 + 15:g} s (device hung or packets dropped)") from None
        except (OSError, AgentError) as exc:
            self.close()
            raise HostUnreachable(f"{conn.host}: cannot start the SSH tunnel: {exc}") from None
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            self.close()
            raise SSHError(f"{conn.host}: the tunnel process failed to start (exit {self.proc.poll()})") from None
        if event.get("event") != "ready":
            self.close()
            raise _error_types().get(event.get("kind", ""), SSHError)(event.get("message", "tunnel failed"))
        self.port = int(event["port"])
        self.name = event.get("name", conn.host)

    def close(self) -> None:
        import signal  # noqa: PLC0415
        import subprocess  # noqa: PLC0415
        import os  # noqa: PLC0415

        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                stream.close()  # type: ignore[union-attr]


@contextlib.contextmanager
def ssh_agent_session(device: Device, timeouts: Timeouts | None = None,
                      accept_new_host_key: bool = False) -> Iterator[AgentClient]:
    """SSH to the device, forward a local port to the agent's loopback RPC port, yield an AgentClient."""
    timeouts = timeouts or Timeouts()
    conn = device.connection
    if conn.type != "ssh":
        raise AgentError(f"{device.name}: not an SSH device ({conn.type})")
    port = device.agent.rpc_port
    forward = ForwardProcess(conn, port, timeouts, accept_new_host_key)
    try:
        secret = device_secret(device)  # the forward's local port is open to local users: the agent authenticates
        t0 = time.monotonic()
        try:
            session = rpc_connect("127.0.0.1", forward.port, "dlas", device.agent.session_timeout_s, timeouts,
                                  secret)
        except AgentTimeout:
            raise AgentTimeout(f"{device.name}: the agent on {forward.name} port {port} accepted the connection but "
                               f"did not answer the RPC handshake within {timeouts.connect_s:g} s (agent hung?)") \
                from None
        except AgentError as exc:
            raise AgentError(f"{device.name}: RPC handshake with the agent on {forward.name} port {port} failed "
                             f"after {time.monotonic() - t0:.1f} s: {exc}") from None
        yield AgentClient(session, device, timeouts, f"ssh:{forward.name}->127.0.0.1:{port}")
    finally:
        forward.close()


def _serve_forward() -> int:
    """Entry point of the forwarder process: config JSON on stdin, one JSON status line on stdout."""
    import json  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from ..devices import SSHConnection  # noqa: PLC0415

    config = json.loads(sys.stdin.readline())
    conn = SSHConnection(**config["conn"])
    timeouts = Timeouts(connect_s=float(config["connect_s"]))
    try:
        ssh = SSH.open(conn, timeout_s=timeouts.connect_s, op_timeout_s=timeouts.connect_s,
                       accept_new_host_key=bool(config.get("accept_new_host_key")))
        open_channel(ssh, int(config["remote_port"]), timeouts.connect_s).close()  # is an agent listening?
        forward = Forward(ssh, int(config["remote_port"]), channel_timeout_s=timeouts.connect_s)
    except SSHError as exc:
        print(json.dumps({"event": "error", "kind": type(exc).__name__, "message": str(exc)}), flush=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the parent, never a traceback
        print(json.dumps({"event": "error", "kind": "SSHError", "message": f"{type(exc).__name__}: {exc}"}),
              flush=True)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(json.dumps({"event": "ready", "port": forward.port, "name": ssh.name}), flush=True)
    try:
        sys.stdin.read()  # until the parent closes stdin or dies
    finally:
        forward.close()
        ssh.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(_serve_forward())
