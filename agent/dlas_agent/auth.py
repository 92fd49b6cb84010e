"""Agent authentication: a per-device secret, an HMAC challenge-response before any TVM RPC byte, and
per-session HMACs over the hashes of the libraries the host asks the agent to load. Stdlib only.

Handshake (``PROTO``), on every new TCP connection, before TVM's own ``[RPC_MAGIC, key]`` exchange:

    client -> agent   MAGIC (12 bytes) + client nonce (32 random bytes)
    agent  -> client  agent nonce (32 random bytes) + HMAC(secret, "server" | cn | sn)
    client -> agent   HMAC(secret, "client" | cn | sn)
    agent  -> client  b"\\x01" (accepted); on any mismatch, a timeout or bad bytes the agent closes the socket

Both sides prove they hold the secret (the host never ships a library to an impostor agent); the fresh agent
nonce makes a recorded handshake worthless. The agent nonce then names the session: the host sends
``HMAC(secret, "artifact" | sn | sha256)`` with every library it asks the agent to load (``artifact_mac``).

TVM's client connects in C++ and cannot run this exchange, so ``connect`` does it in Python on its own socket
and hands that socket to a tiny relay process (``_relay.py``) that TVM talks to over pipes
(``rpc.CreatePipeClient``): no extra listening socket anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import stat
import struct
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"DLAS-AUTH-1\n"
NONCE_BYTES = 32
SECRET_BYTES = 32
ACCEPTED = b"\x01"
HANDSHAKE_TIMEOUT_S = float(os.environ.get("DLAS_AGENT_AUTH_TIMEOUT_S", "10"))  # a stalled handshake is dropped
SECRET_ENV = "DLAS_AGENT_SECRET"  # the secret itself, hex (containers: via --env-file)
SECRET_FILE_ENV = "DLAS_AGENT_SECRET_FILE"  # a file holding the hex secret, mode 0600


class AuthError(RuntimeError):
    """Authentication failed or is not configured."""


# ------------------------------------------------------------------------------------------------ the secret
def new_secret() -> str:
    return secrets.token_hex(SECRET_BYTES)


def write_secret(path: Path, secret: str | None = None) -> str:
    """Write ``secret`` (default: a fresh one) to ``path`` with mode 0600 (created that way, never wider)."""
    secret = secret or new_secret()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secret + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return secret


def parse_secret(text: str, where: str) -> bytes:
    text = text.strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise AuthError(f"{where}: the secret must be hex (make one with `dlas-agent secret PATH`)") from None
    if len(raw) < 16:
        raise AuthError(f"{where}: the secret is {len(raw)} bytes; at least 16 (32 recommended)")
    return raw


def read_secret_file(path: Path) -> bytes:
    path = Path(path).expanduser()
    try:
        st = path.stat()
        text = path.read_text()
    except OSError as exc:
        raise AuthError(f"cannot read the secret file {path}: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthError(f"secret file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                        f"chmod 600 {path}")
    return parse_secret(text, str(path))


def secret_from_env(secret_file: str | None = None) -> bytes | None:
    """The configured secret: ``secret_file``, else ``$DLAS_AGENT_SECRET_FILE``, else ``$DLAS_AGENT_SECRET``."""
    path = secret_file or os.environ.get(SECRET_FILE_ENV)
    if path:
        return read_secret_file(Path(path))
    value = os.environ.get(SECRET_ENV)
    if value:
        return parse_secret(value, SECRET_ENV)
    return None


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------ handshake
def _mac(secret: bytes, label: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"dlas-auth-v1 " + label + b"\0" + b"".join(parts), hashlib.sha256).digest()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed during the handshake")
        buf += chunk
    return bytes(buf)


def server_handshake(sock: socket.socket, secret: bytes, timeout_s: float | None = None) -> bytes:
    """Agent side. Returns the session nonce; raises AuthError (the caller closes the socket)."""
    sock.settimeout(timeout_s or HANDSHAKE_TIMEOUT_S)
    try:
        if recv_exact(sock, len(MAGIC)) != MAGIC:
            raise AuthError("not a DLAS client (no authentication hello)")
        cn = recv_exact(sock, NONCE_BYTES)
        sn = secrets.token_bytes(NONCE_BYTES)
        sock.sendall(sn + _mac(secret, b"server", cn, sn))
        answer = recv_exact(sock, 32)
        if not hmac.compare_digest(answer, _mac(secret, b"client", cn, sn)):
            raise AuthError("wrong HMAC (the client does not hold this device's secret)")
        sock.sendall(ACCEPTED)
    except (OSError, ConnectionError) as exc:
        raise AuthError(f"handshake failed: {exc}") from None
    sock.settimeout(None)
    return sn


def client_handshake(sock: socket.socket, secret: bytes, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> bytes:
    """Host side. Returns the session nonce; raises AuthError naming what went wrong."""
    sock.settimeout(timeout_s)
    cn = secrets.token_bytes(NONCE_BYTES)
    try:
        sock.sendall(MAGIC + cn)
        reply = recv_exact(sock, NONCE_BYTES + 32)
    except (OSError, ConnectionError) as exc:
        raise AuthError(f"the agent closed the connection during authentication ({exc}): an agent without "
                        "authentication (old version) or not an agent") from None
    sn, server_mac = reply[:NONCE_BYTES], reply[NONCE_BYTES:]
    if not hmac.compare_digest(server_mac, _mac(secret, b"server", cn, sn)):
        raise AuthError("the agent does not hold this device's secret (stale secret on the device or host, or "
                        "an impostor): re-run `dlas-host deploy`")
    try:
        sock.sendall(_mac(secret, b"client", cn, sn))
        if recv_exact(sock, 1) != ACCEPTED:
            raise AuthError("the agent refused authentication")
    except (OSError, ConnectionError) as exc:
        raise AuthError(f"the agent refused authentication ({exc})") from None
    sock.settimeout(None)
    return sn


def artifact_mac(secret: bytes, session_nonce: bytes, sha256: str) -> str:
    """What the host sends with a library's sha256: proof that the authenticated host asked for exactly it."""
    return _mac(secret, b"artifact", session_nonce, sha256.lower().encode()).hex()


# ------------------------------------------------------------------------------------------------ agent session
@dataclass
class _Session:
    secret: bytes = b""
    nonce: bytes = b""
    registered: set[str] = field(default_factory=set)


SESSION = _Session()
"""The serving session's context, set in the forked session process (one session per process)."""


def check_artifact(sha256: str, mac: str) -> None:
    """Raise PermissionError unless ``mac`` is the session's HMAC over ``sha256`` (then the hash is registered)."""
    if not SESSION.secret or not SESSION.nonce:
        raise PermissionError("no authenticated session: libraries are refused")
    if not mac or not hmac.compare_digest(str(mac).lower(), artifact_mac(SESSION.secret, SESSION.nonce, sha256)):
        raise PermissionError(f"artifact sha256 {sha256[:16]}... was not registered by the authenticated host "
                              "(missing or wrong artifact_mac): refused to load")
    SESSION.registered.add(sha256.lower())


# ------------------------------------------------------------------------------------------------ host side
_RELAY = str(Path(__file__).with_name("_relay.py"))


def tvm_key_handshake(sock: socket.socket, key: str, session_timeout_s: float, timeout_s: float) -> None:
    """TVM's own ``[RPC_MAGIC, len, "client:KEY -timeout=N"]`` exchange, done here in Python."""
    from tvm.rpc import base  # noqa: PLC0415

    text = f"client:{key}" + (f" -timeout={session_timeout_s}" if session_timeout_s else "")
    sock.settimeout(timeout_s)
    sock.sendall(struct.pack("<ii", base.RPC_MAGIC, len(text)) + text.encode())
    code = struct.unpack("<i", recv_exact(sock, 4))[0]
    if code == base.RPC_CODE_MISMATCH:
        raise AuthError(f"the agent does not serve key {key!r} (registered at a tracker?)")
    if code != base.RPC_CODE_SUCCESS:
        raise AuthError("not a TVM RPC server after authentication")
    (n,) = struct.unpack("<i", recv_exact(sock, 4))
    if n:
        recv_exact(sock, n)
    sock.settimeout(None)


def _relay_children() -> set[int]:
    """Pids of this process's relay children (Linux /proc; elsewhere none are found and none reaped)."""
    pids = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and _RELAY.encode() in (entry / "cmdline").read_bytes():
                pids.add(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def connect(host: str, port: int, secret: bytes, key: str = "dlas", session_timeout_s: float = 0,
            timeout_s: float = 20.0):  # -> tvm.rpc.RPCSession
    """An authenticated TVM RPC session. The session carries ``dlas_auth = (secret, nonce)`` for
    ``artifact_mac``."""
    from tvm.rpc import RPCSession, _ffi_api  # noqa: PLC0415

    sock = socket.create_connection((host, port), timeout=timeout_s)
    try:
        nonce = client_handshake(sock, secret, timeout_s)
        tvm_key_handshake(sock, key, session_timeout_s, timeout_s)
        os.set_inheritable(sock.fileno(), True)
        before = _relay_children()
        sess = RPCSession(_ffi_api.CreatePipeClient(sys.executable, "-I", "-S", _RELAY, str(sock.fileno())))
        for pid in _relay_children() - before:  # TVM never waits for the relay: reap it when it exits
            threading.Thread(target=_reap, args=(pid,), name=f"dlas-relay-reaper-{pid}", daemon=True).start()
    finally:
        sock.close()  # the relay holds its own copy
    sess.dlas_auth = (secret, nonce)
    return sess
