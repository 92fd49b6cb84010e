"""Authenticated agents (issue #20): attacks against a real agent on loopback, none of which may run code.

The payload is a real shared library whose constructor creates a marker file (built with the system ``cc``).
The control test shows that the authenticated host, registering the library's hash, does load it (the marker
appears); every attack asserts the marker never appears and that the agent still serves its host afterwards.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlas_agent import auth
from dlas_agent.protocol import FN_BENCHMARK, FN_PING, FN_TIME_KERNEL, BenchmarkRequest, KernelTimingRequest

RPC_MAGIC = 0xFF271
RPC_TRACKER_MAGIC = 0x2F271


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cc():
    path = shutil.which("cc") or shutil.which("gcc")
    if not path:
        pytest.skip("no system C compiler (cc)")
    return path


@pytest.fixture()
def planted(cc, tmp_path):
    """(library, marker): a .so whose constructor creates ``marker``."""
    marker = tmp_path / "PWNED"
    src = tmp_path / "evil.c"
    src.write_text('#include <stdio.h>\n'
                   '__attribute__((constructor)) static void pwn(void) {\n'
                   f'  FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }}\n'
                   '}\nint dlas_planted(void) { return 42; }\n')
    lib = tmp_path / "evil.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib, marker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLAS_AGENT_")}
    env.update(TVM_USE_RUNTIME_LIB="1", PYTHONUNBUFFERED="1", DLAS_AGENT_AUTH_TIMEOUT_S="2", **extra)
    return env


def _start(args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "dlas_agent", "serve", *args], stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True, env=env, start_new_session=True)
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise AssertionError(f"agent did not start: {log.read_text()}")
    return proc, json.loads(line)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait(10)


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    work = tmp_path_factory.mktemp("auth-agent")
    secret_file = work / "agent.secret"
    auth.write_secret(secret_file)
    port = _free_port()
    proc, event = _start(["--host", "127.0.0.1", "--port", str(port), "--secret-file", str(secret_file),
                          "--threads", "1"], _agent_env(), work / "agent.log")
    yield {"port": event["port"], "secret": auth.read_secret_file(secret_file), "proc": proc, "log": work / "agent.log"}
    _stop(proc)


def _session(agent: dict, secret: bytes | None = None):
    return auth.connect("127.0.0.1", agent["port"], secret or agent["secret"], session_timeout_s=60, timeout_s=10)


def _host_still_served(agent: dict) -> None:
    """The agent is alive and serves the holder of the secret (an attack never takes it down)."""
    assert agent["proc"].poll() is None, "the agent died"
    deadline = time.monotonic() + 15
    while True:
        try:
            sess = _session(agent)
            break
        except (auth.AuthError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # the previous connection may still be finishing
    assert json.loads(sess.get_function(FN_PING)())["protocol"] == 2
    del sess
    gc.collect()


def _no_code_ran(marker: Path, agent: dict) -> None:
    time.sleep(0.2)
    assert not marker.exists(), "the planted library's constructor ran inside the agent"
    _host_still_served(agent)
    assert not marker.exists()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bench_request(lib_name: str, sha: str, mac: str = "") -> str:
    return BenchmarkRequest(artifact=lib_name, sha256=sha, inputs="inputs.npz", artifact_mac=mac).to_json()


def _kernel_request(lib_name: str, sha: str, mac: str = "") -> str:
    return KernelTimingRequest(artifact=lib_name, sha256=sha, args=[], artifact_mac=mac).to_json()


def _raw(agent: dict, payload: bytes, read_s: float = 3.0) -> bytes:
    """Send raw bytes; return what the agent answered before closing (b"" = nothing)."""
    with socket.create_connection(("127.0.0.1", agent["port"]), timeout=read_s) as s:
        with_answer = b""
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                with_answer += chunk
        except OSError:  # reset, broken pipe, not connected, timeout: the agent closed on us
            pass
        return with_answer


def _closed(s: socket.socket) -> bool:
    """The agent closed the connection without another byte (FIN, or RST because our bytes went unread)."""
    try:
        return s.recv(16) == b""
    except ConnectionResetError:
        return True


def _stock_handshake(key: str = "dlas") -> bytes:
    text = f"client:{key}".encode()
    return struct.pack("<ii", RPC_MAGIC, len(text)) + text


# ------------------------------------------------------------------------------------------------ control
def test_control_the_authenticated_host_loads_a_registered_library(agent, planted):
    """The payload is real: registered by the authenticated host, it is loaded (and its constructor runs)."""
    lib, marker = planted
    sess = _session(agent)
    sess.upload(str(lib), "evil.so")
    secret, nonce = sess.dlas_auth
    reply = json.loads(sess.get_function(FN_TIME_KERNEL)(
        _kernel_request("evil.so", _sha(lib), auth.artifact_mac(secret, nonce, _sha(lib)))))
    del sess
    gc.collect()
    assert marker.exists(), reply  # loaded; timing "main" then fails, which does not matter here


# ------------------------------------------------------------------------------------------------ no secret
def test_stock_connect_is_refused(agent, planted):
    from tvm import rpc

    with pytest.raises(Exception):
        rpc.connect("127.0.0.1", agent["port"], key="dlas")
    _no_code_ran(planted[1], agent)


def test_stock_connect_with_session_timeout_is_refused(agent, planted):
    from tvm import rpc

    with pytest.raises(Exception):
        rpc.connect("127.0.0.1", agent["port"], key="dlas", session_timeout=30)
    _no_code_ran(planted[1], agent)


def test_stock_upload_and_load_module_never_run(agent, planted):
    from tvm import rpc

    lib, marker = planted
    with pytest.raises(Exception):
        sess = rpc.connect("127.0.0.1", agent["port"], key="dlas")
        sess.upload(str(lib), "evil.so")
        sess.load_module("evil.so")
    _no_code_ran(marker, agent)


def test_stock_benchmark_with_forged_hash_never_runs(agent, planted):
    from tvm import rpc

    lib, marker = planted
    with pytest.raises(Exception):
        sess = rpc.connect("127.0.0.1", agent["port"], key="dlas")
        sess.upload(str(lib), "evil.so")
        sess.get_function(FN_BENCHMARK)(_bench_request("evil.so", _sha(lib), "00" * 32))
    _no_code_ran(marker, agent)


def test_stock_time_kernel_never_runs(agent, planted):
    from tvm import rpc

    lib, marker = planted
    with pytest.raises(Exception):
        sess = rpc.connect("127.0.0.1", agent["port"], key="dlas")
        sess.upload(str(lib), "k.so")
        sess.get_function(FN_TIME_KERNEL)(_kernel_request("k.so", _sha(lib)))
    _no_code_ran(marker, agent)


def test_raw_tvm_handshake_then_rpc_bytes_is_dropped(agent, planted):
    answer = _raw(agent, _stock_handshake() + os.urandom(256))
    assert answer == b""  # not even TVM's RPC_CODE_SUCCESS: the agent closed before any TVM byte
    _no_code_ran(planted[1], agent)


def test_garbage_bytes_are_dropped(agent, planted):
    assert _raw(agent, os.urandom(4096)) == b""
    _no_code_ran(planted[1], agent)


def test_http_request_is_dropped(agent, planted):
    assert _raw(agent, b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n") == b""
    _no_code_ran(planted[1], agent)


def test_tracker_protocol_against_the_agent_is_dropped(agent, planted):
    """A tracker-style registration (tracker magic, then PUT) sent to the agent itself."""
    put = json.dumps([3, "dlas", [1, "dlas:0.1"], None]).encode()
    assert _raw(agent, struct.pack("<i", RPC_TRACKER_MAGIC) + struct.pack("<i", len(put)) + put) == b""
    _no_code_ran(planted[1], agent)


# ------------------------------------------------------------------------------------------------ handshake abuse
def test_wrong_secret_is_refused_by_the_agent(agent, planted):
    """A client that ignores the agent's proof and answers with an HMAC of a wrong secret."""
    wrong = secrets.token_bytes(32)
    with socket.create_connection(("127.0.0.1", agent["port"]), timeout=5) as s:
        cn = secrets.token_bytes(32)
        s.sendall(auth.MAGIC + cn)
        reply = auth.recv_exact(s, 64)
        sn = reply[:32]
        s.sendall(auth._mac(wrong, b"client", cn, sn))  # noqa: SLF001
        s.sendall(_stock_handshake())
        assert _closed(s)  # closed: neither "accepted" nor TVM's success code
    _no_code_ran(planted[1], agent)


def test_wrong_secret_client_gets_a_clear_error(agent, planted):
    with pytest.raises(auth.AuthError, match="secret"):
        _session(agent, secrets.token_bytes(32))
    _no_code_ran(planted[1], agent)


def test_replayed_handshake_is_refused(agent, planted):
    """A recorded, valid handshake (hello + client HMAC) replayed on a new connection."""
    with socket.create_connection(("127.0.0.1", agent["port"]), timeout=5) as s:
        cn = secrets.token_bytes(32)
        s.sendall(auth.MAGIC + cn)
        sn = auth.recv_exact(s, 64)[:32]
        recorded = auth.MAGIC + cn + auth._mac(agent["secret"], b"client", cn, sn)  # noqa: SLF001
        s.sendall(recorded[len(auth.MAGIC) + 32:])
        assert auth.recv_exact(s, 1) == auth.ACCEPTED  # the original was valid
    time.sleep(0.3)
    with socket.create_connection(("127.0.0.1", agent["port"]), timeout=5) as s:
        s.sendall(recorded)
        auth.recv_exact(s, 64)  # a fresh nonce: the recorded HMAC no longer matches
        s.sendall(_stock_handshake())
        assert _closed(s)
    _no_code_ran(planted[1], agent)


def test_reflected_server_proof_is_refused(agent, planted):
    """The agent's own HMAC sent back as the client's answer (labels differ: no reflection)."""
    with socket.create_connection(("127.0.0.1", agent["port"]), timeout=5) as s:
        s.sendall(auth.MAGIC + secrets.token_bytes(32))
        reply = auth.recv_exact(s, 64)
        s.sendall(reply[32:] + _stock_handshake())
        assert _closed(s)
    _no_code_ran(planted[1], agent)


def test_truncated_handshake_is_dropped(agent, planted):
    assert _raw(agent, auth.MAGIC + os.urandom(10)) == b""
    _no_code_ran(planted[1], agent)


def test_stalled_handshake_times_out_and_the_agent_serves_on(agent, planted):
    with socket.create_connection(("127.0.0.1", agent["port"]), timeout=10) as s:
        s.sendall(auth.MAGIC[:5])
        t0 = time.monotonic()
        assert _closed(s)  # DLAS_AGENT_AUTH_TIMEOUT_S=2 in this agent
        assert time.monotonic() - t0 < 8
    _no_code_ran(planted[1], agent)


def test_hello_then_garbage_answer_is_dropped(agent, planted):
    answer = _raw(agent, auth.MAGIC + os.urandom(32) + os.urandom(32) + _stock_handshake())
    # at most the agent's nonce and proof (a reset may discard them), never "accepted" or a TVM byte
    assert len(answer) <= 64
    _no_code_ran(planted[1], agent)


# ------------------------------------------------------------------------------------------------ authenticated, unregistered
def test_authenticated_but_unregistered_library_is_refused(agent, planted):
    lib, marker = planted
    sess = _session(agent)
    sess.upload(str(lib), "evil.so")
    reply = json.loads(sess.get_function(FN_BENCHMARK)(_bench_request("evil.so", _sha(lib))))
    del sess
    gc.collect()
    assert not reply["ok"] and "not registered" in reply["error"]
    _no_code_ran(marker, agent)


def test_mac_for_another_hash_does_not_load_this_library(agent, planted, tmp_path):
    lib, marker = planted
    sess = _session(agent)
    secret, nonce = sess.dlas_auth
    sess.upload(str(lib), "evil.so")
    other = hashlib.sha256(b"a registered, harmless library").hexdigest()
    reply = json.loads(sess.get_function(FN_TIME_KERNEL)(
        _kernel_request("evil.so", other, auth.artifact_mac(secret, nonce, other))))
    del sess
    gc.collect()
    assert not reply["ok"] and "refused to load" in reply["error"]
    _no_code_ran(marker, agent)


def test_artifact_mac_from_an_earlier_session_is_refused(agent, planted):
    lib, marker = planted
    first = _session(agent)
    secret, old_nonce = first.dlas_auth
    del first
    gc.collect()
    time.sleep(0.3)
    sess = _session(agent)
    sess.upload(str(lib), "evil.so")
    reply = json.loads(sess.get_function(FN_BENCHMARK)(
        _bench_request("evil.so", _sha(lib), auth.artifact_mac(secret, old_nonce, _sha(lib)))))
    del sess
    gc.collect()
    assert not reply["ok"] and "not registered" in reply["error"]
    _no_code_ran(marker, agent)


def test_generic_load_module_is_disabled_even_when_authenticated(agent, planted):
    lib, marker = planted
    sess = _session(agent)
    sess.upload(str(lib), "evil.so")
    with pytest.raises(Exception, match="disabled"):
        sess.load_module("evil.so")
    del sess
    gc.collect()
    _no_code_ran(marker, agent)


# ------------------------------------------------------------------------------------------------ tracker
# (the `tracker` fixture: conftest.py)
def _wait_free(port: int, key: str, n: int = 1) -> None:
    from tvm import rpc

    deadline = time.time() + 30
    while time.time() < deadline:
        if int(rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"].get(key, {}).get("free", 0)) >= n:
            return
        time.sleep(0.3)
    raise AssertionError("the agent never registered at the tracker")


def test_tracker_request_without_the_secret_gets_no_session_and_the_host_still_does(tracker, planted, tmp_path):
    from tvm import rpc

    from dlas_host.devices import Device, TrackerConnection
    from dlas_host.transport import Timeouts, connect, secret_path

    lib, marker = planted
    name = f"auth-pool-{os.getpid()}"
    auth.write_secret(secret_path(name))
    proc, _ = _start(["--host", "127.0.0.1", "--port", str(_free_port()), "--tracker", f"127.0.0.1:{tracker}",
                      "--key", "authpool", "--secret-file", str(secret_path(name))], _agent_env(), tmp_path / "a.log")
    try:
        _wait_free(tracker, "authpool")
        with pytest.raises(Exception):  # a stock client: the tracker hands out the agent, the agent refuses it
            sess = rpc.connect_tracker("127.0.0.1", tracker).request("authpool", session_timeout=20, max_retry=1)
            sess.upload(str(lib), "evil.so")
            sess.load_module("evil.so")
        assert not marker.exists()
        _wait_free(tracker, "authpool")
        device = Device(name=name, arch="x86_64", target={"kind": "llvm"},
                        connection=TrackerConnection(type="tracker", host="127.0.0.1", port=tracker, key="authpool"))
        with connect(device, Timeouts(connect_s=10, queue_s=30)) as client:  # the holder of the secret
            assert client.ping()["protocol"] == 2
        assert not marker.exists()
    finally:
        _stop(proc)


def test_impostor_registered_at_the_tracker_gets_nothing_from_the_host(tracker, tmp_path):
    """A stock TVM server registered under the pool's key: the host's mutual authentication refuses it."""
    from dlas_host.devices import Device, TrackerConnection
    from dlas_host.transport import AgentError, Timeouts, connect, secret_path

    name = f"auth-impostor-{os.getpid()}"
    auth.write_secret(secret_path(name))
    port = _free_port()
    impostor = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
                                 str(port), "--port-end", str(port + 1), "--tracker", f"127.0.0.1:{tracker}",
                                 "--key", "evilpool"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_free(tracker, "evilpool")
        device = Device(name=name, arch="x86_64", target={"kind": "llvm"},
                        connection=TrackerConnection(type="tracker", host="127.0.0.1", port=tracker, key="evilpool"))
        with pytest.raises(AgentError, match="authentication"):
            with connect(device, Timeouts(connect_s=10, queue_s=30)):
                pass
    finally:
        _stop(impostor)


# ------------------------------------------------------------------------------------------------ binding
@pytest.mark.parametrize("how", ["flag", "env"])
def test_public_bind_without_a_secret_refuses_to_start(how, tmp_path):
    args = ["--port", str(_free_port())] + (["--host", "0.0.0.0"] if how == "flag" else [])
    env = _agent_env(**({"DLAS_AGENT_HOST": "0.0.0.0"} if how == "env" else {}))
    proc = subprocess.run([sys.executable, "-m", "dlas_agent", "serve", *args], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "non-loopback" in lines[0] and "0.0.0.0" in lines[0], proc.stderr


def test_loopback_without_a_secret_refuses_to_start_too():
    proc = subprocess.run([sys.executable, "-m", "dlas_agent", "serve", "--port", str(_free_port())],
                          env=_agent_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no secret configured" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_secret_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "agent.secret"
    auth.write_secret(path)
    path.chmod(0o644)
    proc = subprocess.run([sys.executable, "-m", "dlas_agent", "serve", "--port", str(_free_port()), "--secret-file",
                           str(path)], env=_agent_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "chmod 600" in proc.stderr


def test_secret_must_be_hex_and_long_enough():
    with pytest.raises(auth.AuthError, match="hex"):
        auth.parse_secret("not a secret", "env")
    with pytest.raises(auth.AuthError, match="at least 16"):
        auth.parse_secret("abcd", "env")


def test_secret_command_writes_0600_and_keeps_an_existing_one(tmp_path):
    path = tmp_path / "s" / "agent.secret"
    subprocess.run([sys.executable, "-m", "dlas_agent", "secret", str(path)], check=True, env=_agent_env())
    first = path.read_text()
    assert (path.stat().st_mode & 0o777) == 0o600 and len(bytes.fromhex(first.strip())) == 32
    subprocess.run([sys.executable, "-m", "dlas_agent", "secret", str(path)], check=True, env=_agent_env())
    assert path.read_text() == first


def test_another_local_user_cannot_connect(agent, planted):
    """An unprivileged local user (nobody): cannot read the secret, and a stock client is refused."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as another user")
    lib, marker = planted
    code = ("import sys; from tvm import rpc\n"
            f"s = rpc.connect('127.0.0.1', {agent['port']}, key='dlas')\n"
            f"s.upload({str(lib)!r}, 'evil.so'); s.load_module('evil.so'); print('LOADED')\n")
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=120, env=_agent_env())
    if "No module named" in proc.stderr or "Permission denied" in proc.stderr and "tvm" not in proc.stderr:
        pytest.skip(f"nobody cannot run this venv's python: {proc.stderr.strip().splitlines()[-1:]}")
    assert "LOADED" not in proc.stdout and proc.returncode != 0
    _no_code_ran(marker, agent)


def test_host_bench_path_registers_and_runs(agent, tmp_path):
    """The normal host path (AgentClient.benchmark) over an authenticated session: a tiny real model."""
    pytest.importorskip("torch")
    from dlas_host.compile import BuildSpec, compile_artifact, example_inputs
    from dlas_host.devices import load
    from dlas_host.transport import AgentClient, Timeouts, rpc_connect

    device = load(Path(__file__).resolve().parents[1] / "devices.yaml").get("local")
    spec = BuildSpec(model="resnet18", dataset="cifar10")
    artifact = compile_artifact(spec, device)
    timeouts = Timeouts(connect_s=20, run_s=300)
    session = rpc_connect("127.0.0.1", agent["port"], "dlas", 300, timeouts, agent["secret"])
    client = AgentClient(session, device, timeouts, "test")
    result, outputs = client.benchmark(artifact.path, artifact.sha256, example_inputs(spec), number=1, repeat=2,
                                       warmup=0, num_threads=1)
    assert result.ok, result.error
    assert outputs and result.stats.n == 2
    del client, session
    gc.collect()


def test_closed_sessions_leave_no_zombie_relay(local_device) -> None:
    """TVM never waits for the pipe relay of an authenticated session: the client reaps it."""
    import gc
    import time

    import psutil

    from dlas_host.transport import connect

    for _ in range(3):
        with connect(local_device):
            pass
    gc.collect()
    deadline = time.time() + 10
    while time.time() < deadline:
        zombies = [p.pid for p in psutil.Process().children() if p.status() == psutil.STATUS_ZOMBIE]
        if not zombies:
            break
        time.sleep(0.2)
    assert zombies == []
