"""The agent's TVM RPC server, with the project's own remote functions registered.

TVM's RPC server forks one process per session and serves it from a fresh temporary work dir; the
functions registered here before the fork are visible in every session. Uploads land in that work dir.
A session worker never outlives its session: see ``_serving``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import multiprocessing
import os
import select
import signal
import sys
import time
import traceback
from pathlib import Path

from . import __version__, auth, devinfo
from .protocol import (FN_BENCHMARK, FN_DEVICE_INFO, FN_EVALUATE, FN_PING, FN_PROFILE, FN_TIME_KERNEL,
                       PROTOCOL_VERSION, BenchmarkRequest, BenchmarkResult, EvalRequest, EvalResult,
                       KernelTimingRequest, KernelTimingResult, ProfileRequest, ProfileResult, ProtocolError)
from .runner import ArtifactRejected, run_benchmark, time_kernel

log = logging.getLogger("dlas_agent")


def _work_dir() -> Path:
    import tvm  # noqa: PLC0415

    return Path(tvm.get_global_func("tvm.rpc.server.workpath")("probe")).parent


def _handle(request_type, result_type, run, request_json: str) -> str:
    """Never raises across the RPC boundary: failures come back as ``ok=False`` with a one-line reason."""
    try:
        request = request_type.from_json(request_json)
        if request.protocol != PROTOCOL_VERSION:
            raise ProtocolError(f"host speaks protocol {request.protocol}, agent speaks {PROTOCOL_VERSION}")
        try:  # only a library whose hash the authenticated host registered (HMAC) is ever loaded
            auth.check_artifact(request.sha256, request.artifact_mac)
        except PermissionError as exc:
            raise ArtifactRejected(str(exc)) from None
        return run(request, _work_dir()).to_json()
    except (ArtifactRejected, ProtocolError, FileNotFoundError, ValueError) as exc:
        return result_type(ok=False, error=str(exc)).to_json()
    except Exception as exc:  # noqa: BLE001 - any runtime failure is reported to the host, with its cause
        log.error("%s failed: %s", run.__name__, traceback.format_exc())
        first = str(exc).strip().splitlines()
        return result_type(ok=False, error=f"{type(exc).__name__}: {first[-1] if first else ''}").to_json()


def handle_benchmark(request_json: str) -> str:
    return _handle(BenchmarkRequest, BenchmarkResult, run_benchmark, request_json)


def handle_time_kernel(request_json: str) -> str:
    reply = _handle(KernelTimingRequest, KernelTimingResult, time_kernel, request_json)
    print(f"dlas-agent {os.getpid()}: timed a tuning candidate", file=sys.stderr, flush=True)  # who measured what
    return reply


def handle_evaluate(request_json: str) -> str:
    from .evaluate import run_evaluation  # noqa: PLC0415

    return _handle(EvalRequest, EvalResult, run_evaluation, request_json)


def handle_profile(request_json: str) -> str:
    from .profile import run_profile  # noqa: PLC0415

    return _handle(ProfileRequest, ProfileResult, run_profile, request_json)


def register_functions() -> None:
    import tvm_ffi  # noqa: PLC0415

    tvm_ffi.register_global_func(FN_PING, lambda: json.dumps({"agent": __version__, "protocol": PROTOCOL_VERSION,
                                                               "pid": os.getpid()}), override=True)
    tvm_ffi.register_global_func(FN_DEVICE_INFO, lambda: devinfo.collect().to_json(), override=True)
    tvm_ffi.register_global_func(FN_BENCHMARK, handle_benchmark, override=True)
    tvm_ffi.register_global_func(FN_TIME_KERNEL, handle_time_kernel, override=True)
    tvm_ffi.register_global_func(FN_EVALUATE, handle_evaluate, override=True)
    tvm_ffi.register_global_func(FN_PROFILE, handle_profile, override=True)


def _lock_down_session() -> None:
    """In a session process: TVM's generic ``load_module`` / ``download_linked_module`` RPC functions would
    load any uploaded file; the agent loads libraries only through ``dlas.benchmark`` / ``dlas.time_kernel``."""
    import tvm_ffi  # noqa: PLC0415

    def refused(*_args: object) -> None:
        raise PermissionError("dlas-agent: loading modules over RPC is disabled; use dlas.benchmark")

    for name in ("tvm.rpc.server.load_module", "tvm.rpc.server.download_linked_module"):
        tvm_ffi.register_global_func(name, refused, override=True)


def _die_with_parent(parent_pid: int) -> None:
    """In a session worker: SIGKILL when the agent server dies (Linux PR_SET_PDEATHSIG). A benchmark loop in
    C++ never returns to Python, so only a signal that cannot be handled stops it."""
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the server still kills sessions it ends
        pass
    if os.getppid() != parent_pid:  # the server died before prctl took effect
        os._exit(1)


def _session_main(sock, work_path, secret: bytes, nonce: bytes, parent_pid: int) -> None:  # noqa: ANN001
    from tvm.rpc import _ffi_api, server as rpc_server  # noqa: PLC0415

    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # its own process group: the server kills the session with all it started
    _die_with_parent(parent_pid)
    rpc_server._server_env(None, work_path)  # noqa: SLF001 - TVM's session environment (work dir, upload)
    _lock_down_session()
    auth.SESSION.secret, auth.SESSION.nonce = secret, nonce
    _ffi_api.ServerLoop(sock.fileno())


# The peer closed its side (FIN), reset the connection, or keepalive found it gone. Linux reports a FIN as
# POLLRDHUP without POLLIN semantics, so the server can watch a socket the session worker is reading.
_HANGUP = getattr(select, "POLLRDHUP", 0x2000) | select.POLLHUP | select.POLLERR
KEEPALIVE = {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 6}  # a vanished host: found in ~90 s


def _keepalive(conn) -> None:  # noqa: ANN001
    """TCP keepalive on a session's connection: a host that vanished without closing (power, network) turns
    into an error on the socket while the session worker is busy timing and not reading."""
    import socket  # noqa: PLC0415

    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in KEEPALIVE.items():
            if hasattr(socket, name):
                conn.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def watch_session(proc: multiprocessing.Process, conn, timeout_s: float | None) -> str:  # noqa: ANN001
    """Wait for the session worker while watching its connection (without reading it).

    Returns "ended" (the worker exited), "hangup" (the client went away: killed host, closed tunnel,
    dead network) or "timeout" (the session outlived ``timeout_s``).
    """
    poller = select.poll()
    poller.register(proc.sentinel, select.POLLIN)
    poller.register(conn.fileno(), _HANGUP)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        wait_ms = None if deadline is None else max(0, int(1000 * (deadline - time.monotonic())))
        events = dict(poller.poll(wait_ms))
        if proc.sentinel in events:
            return "ended"
        if events.get(conn.fileno(), 0) & _HANGUP:
            proc.join(0.2)  # a client that closed after its last call: let the worker finish on its own
            return "ended" if not proc.is_alive() else "hangup"
        if deadline is not None and time.monotonic() >= deadline:
            return "timeout"


def kill_session(proc: multiprocessing.Process) -> None:
    """SIGKILL a live session worker, its process group and every descendant (found before the kill: once the
    worker dies they are re-parented and no longer its children)."""
    import psutil  # noqa: PLC0415

    if proc.pid is None or proc.exitcode is not None:  # reaped already: its pid may be anyone's by now
        return
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)  # the worker's own group: it and all it started
    with contextlib.suppress(OSError):
        os.kill(proc.pid, signal.SIGKILL)  # not reaped yet, so still ours even if setpgid failed
    for victim in descendants:  # any that left the group
        with contextlib.suppress(psutil.Error):
            victim.kill()
    proc.join(10)


def _serving(conn, addr, opts: dict, secret: bytes, nonce: bytes) -> None:  # noqa: ANN001
    """One authenticated session in a forked process with its own work dir (TVM's ``_serving``, plus the
    session's secret and nonce, and the lock-down).

    The worker runs in its own process group and dies with the server; the server watches the connection
    and kills the whole group when the client goes away or the session times out, so a host killed in the
    middle of a benchmark leaves nothing running here.
    """
    from tvm.rpc import _ffi_api  # noqa: PLC0415
    from tvm.support import utils  # noqa: PLC0415

    work_path = utils.tempdir()
    old_cwd = os.getcwd()
    os.chdir(work_path.path)
    proc = None
    try:
        _keepalive(conn)
        proc = multiprocessing.Process(target=_session_main, args=(conn, work_path, secret, nonce, os.getpid()))
        proc.start()
        with contextlib.suppress(OSError):
            os.setpgid(proc.pid, proc.pid)  # from this side too: no window where a kill misses the group
        why = watch_session(proc, conn, opts.get("timeout"))
        if why == "timeout":
            log.warning("session from %s timed out after %ss: killing it", addr, opts.get("timeout"))
            kill_session(proc)  # first, so nothing else writes to the connection
            with contextlib.suppress(Exception):
                _ffi_api.ReturnException(conn.fileno(), f"RPCSessionTimeoutError: Your {opts['timeout']}s session "
                                         "has expired, try to increase the \"session_timeout\" value.")
        elif why == "hangup":
            print(f"dlas-agent: the client {addr[0]}:{addr[1]} went away: killing session worker {proc.pid}",
                  file=sys.stderr, flush=True)
        elif proc.exitcode:
            log.warning("session worker %s exited with %s", proc.pid, proc.exitcode)
    finally:
        if proc is not None and proc.pid is not None:
            kill_session(proc)  # still running: the client went away, or the server itself failed
        os.chdir(old_cwd)
        work_path.remove()
        conn.close()


def _accept(listen_sock, secret: bytes, matchkey: str, rpc_key: str):  # noqa: ANN001
    """Accept one connection; authenticate it, then TVM's key exchange. None if refused (socket closed)."""
    import struct  # noqa: PLC0415

    from tvm.rpc import base  # noqa: PLC0415

    conn, addr = listen_sock.accept()
    try:
        nonce = auth.server_handshake(conn, secret)
        conn.settimeout(auth.HANDSHAKE_TIMEOUT_S)
        magic = struct.unpack("<i", auth.recv_exact(conn, 4))[0]
        if magic != base.RPC_MAGIC:
            raise auth.AuthError("no TVM RPC hello after authentication")
        (keylen,) = struct.unpack("<i", auth.recv_exact(conn, 4))
        if not 0 <= keylen <= 4096:
            raise auth.AuthError(f"bad key length {keylen}")
        words = auth.recv_exact(conn, keylen).decode("utf-8", "replace").split()
        if not words or words[0] != "client:" + matchkey:
            conn.sendall(struct.pack("<i", base.RPC_CODE_MISMATCH))
            raise auth.AuthError(f"key mismatch ({words[0] if words else ''!r})")
        server_key = ("server:" + rpc_key).encode()
        conn.sendall(struct.pack("<ii", base.RPC_CODE_SUCCESS, len(server_key)) + server_key)
        conn.settimeout(None)
    except (auth.AuthError, OSError, ConnectionError) as exc:
        print(f"dlas-agent: refused a connection from {addr[0]}:{addr[1]}: {exc}", file=sys.stderr, flush=True)
        conn.close()
        return None
    opts = {}
    for word in words[1:]:
        if word.startswith("-timeout="):
            try:
                opts["timeout"] = float(word[9:]) or None
            except ValueError:
                pass
    return conn, addr, opts, nonce


def _listen_loop(sock, port: int, secret: bytes, rpc_key: str, tracker_addr, custom_addr) -> None:  # noqa: ANN001
    """TVM's listen loop (tracker registration, one session at a time), every connection authenticated first."""
    import select  # noqa: PLC0415
    import struct  # noqa: PLC0415

    from tvm.rpc import base  # noqa: PLC0415
    from tvm.rpc.base import TrackerCode  # noqa: PLC0415

    tracker_conn = None
    while True:
        try:
            if tracker_addr and tracker_conn is None:
                tracker_conn = base.connect_with_retry(tracker_addr)
                tracker_conn.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
                if struct.unpack("<i", base.recvall(tracker_conn, 4))[0] != base.RPC_TRACKER_MAGIC:
                    raise RuntimeError(f"{tracker_addr} is not an RPC tracker")
                base.sendjson(tracker_conn, [TrackerCode.UPDATE_INFO, {"key": "server:" + rpc_key,
                                                                       "addr": (custom_addr, port)}])
                assert base.recvjson(tracker_conn) == TrackerCode.SUCCESS
            if tracker_conn:
                matchkey = base.random_key(rpc_key)
                base.sendjson(tracker_conn, [TrackerCode.PUT, rpc_key, (port, matchkey), custom_addr])
                assert base.recvjson(tracker_conn) == TrackerCode.SUCCESS
            else:
                matchkey = rpc_key
            accepted = None
            old_keys: set[str] = set()
            unmatched = 0
            while accepted is None:
                if tracker_conn:
                    ready, _, _ = select.select([sock], [], [], 2.0)
                    if not ready:
                        base.sendjson(tracker_conn, [TrackerCode.GET_PENDING_MATCHKEYS])
                        pending = base.recvjson(tracker_conn)
                        old_keys.add(matchkey)
                        unmatched = 0 if matchkey in pending else unmatched + 1
                        if unmatched * 2.0 > 6.0:  # taken by a client that never came: a fresh key
                            matchkey = base.random_key(rpc_key, cmap=old_keys)
                            base.sendjson(tracker_conn, [TrackerCode.PUT, rpc_key, (port, matchkey), custom_addr])
                            assert base.recvjson(tracker_conn) == TrackerCode.SUCCESS
                            unmatched = 0
                        continue
                accepted = _accept(sock, secret, matchkey, rpc_key)
        except OSError:
            if tracker_conn:  # the tracker went away: register again
                tracker_conn.close()
                tracker_conn = None
            continue
        conn, addr, opts, nonce = accepted
        _serving(conn, addr, opts, secret, nonce)


def serve(host: str = "127.0.0.1", port: int = 9190, port_end: int = 9290, tracker: str | None = None,
          key: str = "dlas", custom_addr: str | None = None, threads: int = 0, secret: bytes | None = None) -> None:
    """Serve until killed. Prints one JSON line ``{"event": "listening", ...}`` once bound.

    Every connection must pass the HMAC handshake of ``auth`` with ``secret`` before any TVM RPC byte is read.
    """
    import socket  # noqa: PLC0415

    if not secret:
        where = "" if auth.is_loopback(host) else f" (refusing to bind {host}, a non-loopback address, without one)"
        raise auth.AuthError(f"no secret configured{where}: pass --secret-file PATH or set "
                             f"{auth.SECRET_FILE_ENV} / {auth.SECRET_ENV} (make one with `dlas-agent secret PATH`)")
    if threads > 0:
        os.environ["TVM_NUM_THREADS"] = str(threads)
    # Sessions are forked so they inherit the registered functions (3.14 changed the default).
    multiprocessing.set_start_method("fork", force=True)
    from tvm.rpc import base  # noqa: PLC0415

    register_functions()
    tracker_addr = None
    if tracker:
        thost, _, tport = tracker.rpartition(":")
        tracker_addr = (thost, int(tport))
    sock = socket.socket(base.get_addr_family((host, port)), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    bound = None
    for candidate in range(port, port_end):
        try:
            sock.bind((host, candidate))
            bound = candidate
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    if bound is None:
        raise ValueError(f"cannot bind to any port in [{port}, {port_end})")
    sock.listen(8)
    print(json.dumps({"event": "listening", "host": host, "port": bound, "pid": os.getpid(),
                      "tracker": tracker, "key": key, "agent": __version__, "auth": "hmac-sha256"}), flush=True)
    _listen_loop(sock, bound, secret, key, tracker_addr, custom_addr)
