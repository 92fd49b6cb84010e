"""SSH to a device with paramiko: strict host-key checking, and a deadline on every remote operation.

Host keys come from the device's ``known_hosts`` file and are never accepted silently: an unknown key is
refused unless the caller opts in with ``accept_new_host_key`` (then it is recorded), a changed key is
always refused. paramiko keepalives do not notice a dead device, so each exec, SFTP transfer and channel
open runs under its own deadline and raises ``RemoteTimeout`` when it passes.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..devices import SSHConnection
from ..agent_client import AgentError, AgentTimeout, call_with_deadline

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


class SSHError(AgentError):
    """The device could not be reached or used over SSH."""


class HostUnreachable(SSHError):
    pass


class AuthFailed(SSHError):
    pass


class HostKeyUnknown(SSHError):
    pass


class HostKeyChanged(SSHError):
    pass


class RemoteTimeout(SSHError, AgentTimeout):
    pass


class RemoteCommandFailed(SSHError):
    def __init__(self, message: str, rc: int, stdout: str, stderr: str) -> None:
        super().__init__(message)
        self.rc, self.stdout, self.stderr = rc, stdout, stderr


def known_hosts_path(conn: SSHConnection) -> Path:
    return Path(conn.known_hosts or "~/.ssh/known_hosts").expanduser()


def host_key_name(conn: SSHConnection) -> str:
    return conn.host if conn.port == 22 else f"[{conn.host}]:{conn.port}"


def _socket_in_netns(netns: str, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection made from inside network namespace ``netns`` (setns only affects one thread)."""
    ns_path = netns if netns.startswith("/") else f"/run/netns/{netns}"
    if not os.path.exists(ns_path):
        raise HostUnreachable(f"network namespace {netns!r} does not exist ({ns_path})")

    def make() -> socket.socket:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(ns_path, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise HostUnreachable(f"cannot enter network namespace {netns!r}: {os.strerror(err)} (needs root)")
        finally:
            os.close(fd)
        return socket.create_connection((host, port), timeout=timeout)

    # The thread dies after this: its namespace does not leak into the caller; the socket keeps its own.
    return call_with_deadline(make, timeout + 2, f"connect {host}:{port} in netns {netns}")


def open_socket(conn: SSHConnection, timeout: float) -> socket.socket:
    where = f"{conn.host}:{conn.port}" + (f" (netns {conn.netns})" if conn.netns else "")
    try:
        if conn.netns:
            sock = _socket_in_netns(conn.netns, conn.host, conn.port, timeout)
        else:
            sock = socket.create_connection((conn.host, conn.port), timeout=timeout)
    except AgentTimeout:
        raise HostUnreachable(f"{where}: no TCP connection within {timeout:g} s (host down or unreachable)") from None
    except AgentError as exc:
        if isinstance(exc, SSHError):
            raise
        cause = exc.__cause__
        reason = (cause.strerror or str(cause)) if isinstance(cause, OSError) else str(exc)
        if isinstance(cause, socket.timeout):
            reason = f"no TCP connection within {timeout:g} s"
        raise HostUnreachable(f"{where}: host unreachable: {reason}") from None
    except socket.timeout:
        raise HostUnreachable(f"{where}: no TCP connection within {timeout:g} s (host down or unreachable)") from None
    except OSError as exc:
        raise HostUnreachable(f"{where}: host unreachable: {exc.strerror or exc}") from None
    sock.settimeout(None)
    return sock


class SSH:
    """One SSH connection to a device. Use ``SSH.open(conn)``; close it (or use it as a context manager)."""

    def __init__(self, conn: SSHConnection, client: Any, op_timeout_s: float) -> None:
        self.conn = conn
        self.client = client
        self.transport = client.get_transport()
        self.op_timeout_s = op_timeout_s
        self._sftp: Any = None
        self.name = f"{conn.user}@{conn.host}:{conn.port}"

    # ------------------------------------------------------------------ connect
    @classmethod
    def open(cls, conn: SSHConnection, *, timeout_s: float = 20.0, op_timeout_s: float = 120.0,
             accept_new_host_key: bool = False) -> "SSH":
        import paramiko  # noqa: PLC0415

        kh_path = known_hosts_path(conn)
        client = paramiko.SSHClient()
        if kh_path.is_file():
            try:
                client.load_host_keys(str(kh_path))
            except (OSError, paramiko.SSHException) as exc:
                raise SSHError(f"cannot read known_hosts {kh_path}: {exc}") from None
        client.set_missing_host_key_policy(_RecordNewKey(kh_path) if accept_new_host_key else _RefuseUnknown(kh_path))
        sock = open_socket(conn, timeout_s)
        key_file = str(Path(conn.key_file).expanduser()) if conn.key_file else None
        where = f"{conn.user}@{conn.host}:{conn.port}"

        def handshake() -> None:
            client.connect(conn.host, port=conn.port, username=conn.user, key_filename=key_file, sock=sock,
                           timeout=timeout_s, banner_timeout=timeout_s, auth_timeout=timeout_s,
                           look_for_keys=key_file is None, allow_agent=key_file is None)

        try:
            call_with_deadline(handshake, timeout_s + 5, f"ssh {where}")
        except AgentTimeout:
            _quiet_close(client, sock)
            raise HostUnreachable(f"{where}: SSH handshake did not finish within {timeout_s + 5:g} s "
                                  "(device hung or the network drops packets)") from None
        except AgentError as exc:
            _quiet_close(client, sock)
            if isinstance(exc, SSHError):
                raise
            cause = exc.__cause__
            if isinstance(cause, SSHError):
                raise cause from None
            if isinstance(cause, paramiko.BadHostKeyException):
                forget = f"ssh-keygen -R {shlex.quote(host_key_name(conn))} -f {shlex.quote(str(kh_path))}"
                raise HostKeyChanged(
                    f"{where}: HOST KEY CHANGED: the server offered {cause.key.get_name()} "
                    f"{cause.key.get_fingerprint().hex()} but {kh_path} records "
                    f"{cause.expected_key.get_fingerprint().hex()}; refusing to connect (possible "
                    "man-in-the-middle, or the device was reinstalled: verify, then remove the old line "
                    f"with `{forget}`)") from None
            if isinstance(cause, paramiko.AuthenticationException):
                raise AuthFailed(f"{where}: authentication failed with key {key_file or '(ssh agent/default keys)'}: "
                                 f"{cause}") from None
            if isinstance(cause, (paramiko.SSHException, OSError, EOFError)):
                raise HostUnreachable(f"{where}: SSH failed: {type(cause).__name__}: {cause}") from None
            raise SSHError(f"{where}: {exc}") from None
        return cls(conn, client, op_timeout_s)

    def close(self) -> None:
        if self._sftp is not None:
            _ignore(self._sftp.close)
            self._sftp = None
        _ignore(self.client.close)

    def __enter__(self) -> "SSH":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def alive(self) -> bool:
        return self.transport is not None and self.transport.is_active()

    # ------------------------------------------------------------------ exec
    def run(self, command: str, *, timeout_s: float | None = None, check: bool = True,
            stdin: bytes | None = None) -> tuple[int, str, str]:
        """Run ``command`` in the remote shell; return (exit code, stdout, stderr). Bounded by ``timeout_s``."""
        timeout_s = timeout_s or self.op_timeout_s
        deadline = time.monotonic() + timeout_s
        short = command if len(command) < 80 else command[:77] + "..."
        try:
            chan = call_with_deadline(lambda: self.transport.open_session(timeout=timeout_s), timeout_s,
                                      f"{self.name}: open session")
        except AgentTimeout:
            raise RemoteTimeout(f"{self.name}: no session within {timeout_s:g} s (device dead or hung)") from None
        except AgentError as exc:
            raise HostUnreachable(f"{self.name}: cannot open a session: {exc}") from None
        out, err = bytearray(), bytearray()
        try:
            chan.settimeout(0.2)
            chan.exec_command(command)
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
            while True:
                if time.monotonic() > deadline:
                    raise RemoteTimeout(f"{self.name}: `{short}` did not finish within {timeout_s:g} s")
                got = False
                while chan.recv_ready():
                    out += chan.recv(65536)
                    got = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    got = True
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if not self.transport.is_active():
                    raise HostUnreachable(f"{self.name}: connection lost during `{short}`")
                if not got:
                    time.sleep(0.05)
            rc = chan.recv_exit_status()
        finally:
            _ignore(chan.close)
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if check and rc != 0:
            tail = (stderr.strip() or stdout.strip()).splitlines()[-3:]
            raise RemoteCommandFailed(f"{self.name}: `{short}` failed (exit {rc}): {' | '.join(tail)}", rc, stdout,
                                      stderr)
        return rc, stdout, stderr

    # ------------------------------------------------------------------ sftp
    def _sftp_client(self) -> Any:
        if self._sftp is None:
            self._sftp = self._bounded(self.client.open_sftp, self.op_timeout_s, "open sftp")
        return self._sftp

    def put(self, local: Path, remote: str, *, timeout_s: float | None = None) -> None:
        sftp = self._sftp_client()
        size = local.stat().st_size
        # at least 1 MB/s (the simulated lab and slow boards), never below the op timeout
        timeout_s = timeout_s or max(self.op_timeout_s, size / 1e6)
        self._bounded(lambda: sftp.put(str(local), remote), timeout_s, f"upload {local.name}")

    def put_text(self, text: str, remote: str, mode: int = 0o644) -> None:
        sftp = self._sftp_client()

        def write() -> None:
            with sftp.open(remote, "w") as fh:
                fh.write(text.encode())
            sftp.chmod(remote, mode)

        self._bounded(write, self.op_timeout_s, f"write {remote}")

    def stat_size(self, remote: str) -> int | None:
        sftp = self._sftp_client()

        def stat() -> int | None:
            try:
                return sftp.stat(remote).st_size
            except FileNotFoundError:
                return None
            except OSError as exc:
                if getattr(exc, "errno", None) == 2:
                    return None
                raise

        return self._bounded(stat, self.op_timeout_s, f"stat {remote}")

    def _bounded(self, fn: Callable[[], T], seconds: float, what: str) -> T:
        try:
            return call_with_deadline(fn, seconds, f"{self.name}: {what}")
        except AgentTimeout:
            self.close()  # a hung SFTP channel poisons the session
            raise RemoteTimeout(f"{self.name}: {what} did not finish within {seconds:g} s") from None
        except SSHError:
            raise
        except AgentError as exc:
            raise SSHError(str(exc)) from None


class _RefuseUnknown:
    """paramiko's RejectPolicy with an actionable message."""

    def __init__(self, kh_path: Path) -> None:
        self.kh_path = kh_path

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        raise HostKeyUnknown(
            f"{hostname}: host key {key.get_name()} {key.get_fingerprint().hex()} is not in {self.kh_path}; "
            "refusing to connect. Verify the fingerprint, then re-run with --accept-new-host-key to record it")


class _RecordNewKey:
    """The explicit opt-in: record a *new* host's key (a changed key still fails as BadHostKeyException)."""

    def __init__(self, kh_path: Path) -> None:
        self.kh_path = kh_path

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        self.kh_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.kh_path, "a") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


def _ignore(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - best-effort cleanup
        pass


def _quiet_close(client: Any, sock: socket.socket) -> None:
    # paramiko's close can block on a dead peer: bound it too
    t = threading.Thread(target=lambda: (_ignore(client.close), _ignore(sock.close)), daemon=True)
    t.start()
    t.join(5)
