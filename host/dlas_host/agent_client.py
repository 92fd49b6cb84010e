"""The agent client that every connection kind shares: one authenticated RPC session speaking the protocol,
deadlines on every call, the device secrets, and local agents. ``transport.connect`` picks the connection
kind; ``fleet/tunnel.py`` (SSH) and the tracker path build on this module, never on ``transport``.

Every remote call runs under its own deadline: keepalives do not notice a dead or hung device, so a call
that does not return in time raises ``AgentTimeout`` and the session is abandoned.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from dlas_agent import auth
from dlas_agent.protocol import (FN_BENCHMARK, FN_DEVICE_INFO, FN_EVALUATE, FN_PING, FN_PROFILE, FN_TIME_KERNEL,
                                 BenchmarkRequest, BenchmarkResult, DeviceInfo, EvalRequest, EvalResult,
                                 KernelTimingRequest, KernelTimingResult, ProfileRequest, ProfileResult)

from . import paths
from .devices import Device
from .errors import DlasError

T = TypeVar("T")


class AgentError(DlasError, RuntimeError):
    """The agent could not be reached or refused the request."""


class AgentTimeout(AgentError):
    """A remote call did not return within its deadline (device dead, hung or unreachable)."""


@dataclass
class Timeouts:
    connect_s: float = 20.0
    upload_s: float = 300.0
    run_s: float = 900.0
    info_s: float = 30.0
    queue_s: float = 600.0  # waiting for a device at a tracker


def call_with_deadline(fn: Callable[[], T], seconds: float, what: str) -> T:
    """Run ``fn`` in a daemon thread; give up after ``seconds`` (the thread is abandoned with its session)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name=f"rpc:{what}")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AgentTimeout(f"{what}: no answer within {seconds:g} s (device dead, hung or unreachable)")
    if "error" in box:
        exc = box["error"]
        if isinstance(exc, AgentError):
            raise exc
        raise AgentError(f"{what}: {_first_line(exc)}") from exc
    return box["value"]


class AgentClient:
    """One authenticated RPC session with an agent (``rpc_connect``), speaking the shared protocol."""

    def __init__(self, session: Any, device: Device, timeouts: Timeouts, endpoint: str) -> None:
        self.session = session
        self.device = device
        self.timeouts = timeouts
        self.endpoint = endpoint

    def artifact_mac(self, sha256: str) -> str:
        """Registers a library with the agent: HMAC over its sha256 with this session's secret and nonce."""
        secret, nonce = getattr(self.session, "dlas_auth", (b"", b""))
        if not secret:
            raise AgentError(f"{self.device.name}: the session is not authenticated (use rpc_connect)")
        return auth.artifact_mac(secret, nonce, sha256)

    def _call(self, fn_name: str, *args: Any, timeout: float) -> Any:
        return call_with_deadline(lambda: self.session.get_function(fn_name)(*args), timeout,
                                  f"{self.device.name}: {fn_name}")

    def evaluate(self, request: EvalRequest, timeout_s: float | None = None) -> EvalResult:
        """One chunk of an accuracy run (``dlas_host.evaluate.evaluate_on_device`` drives the chunks)."""
        try:
            text = self._call(FN_EVALUATE, request.to_json(), timeout=timeout_s or self.timeouts.run_s)
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001 - an agent from before dlas.evaluate existed
            if "evaluate" in str(exc) and ("not found" in str(exc).lower() or "no such" in str(exc).lower()):
                raise AgentError(f"{self.device.name}: the agent cannot evaluate accuracy (older than "
                                 "dlas.evaluate): redeploy it with `dlas-host deploy`") from None
            raise
        return EvalResult.from_json(text)

    def profile(self, library: Path, sha256: str, inputs: list[np.ndarray], *, repeat: int = 10, warmup: int = 2,
                num_threads: int = 0) -> ProfileResult:
        """Upload library and inputs; time every call of one run on the device (``dlas_agent.profile``)."""
        lib_name = self._upload_run(library, sha256, inputs)
        request = ProfileRequest(artifact=lib_name, sha256=sha256, inputs="inputs.npz",
                                 device=self.device.runtime_device, repeat=repeat, warmup=warmup,
                                 num_threads=num_threads, artifact_mac=self.artifact_mac(sha256))
        try:
            text = self._call(FN_PROFILE, request.to_json(), timeout=self.timeouts.run_s)
        except AgentError as exc:
            if "profile" in str(exc) and ("not found" in str(exc).lower() or "no such" in str(exc).lower()):
                raise AgentError(f"{self.device.name}: the agent cannot profile (older than dlas.profile): "
                                 "redeploy it with `dlas-host deploy`") from None
            raise
        return ProfileResult.from_json(text)

    def ping(self) -> dict[str, Any]:
        return json.loads(self._call(FN_PING, timeout=self.timeouts.info_s))

    def device_info(self) -> DeviceInfo:
        return DeviceInfo.from_json(self._call(FN_DEVICE_INFO, timeout=self.timeouts.info_s))

    def _upload_run(self, library: Path, sha256: str, inputs: list[np.ndarray]) -> str:
        """Upload the library (named by its hash) and the inputs as ``inputs.npz``; the library's remote name."""
        lib_name = f"{sha256[:16]}.so"
        with tempfile.TemporaryDirectory() as tmp:
            npz = Path(tmp) / "inputs.npz"
            np.savez(npz, **{f"arg{i}": a for i, a in enumerate(inputs)})
            self.upload(library, lib_name)
            self.upload(npz, "inputs.npz")
        return lib_name

    def upload(self, local: Path, remote_name: str) -> None:
        call_with_deadline(lambda: self.session.upload(str(local), remote_name), self.timeouts.upload_s,
                           f"{self.device.name}: upload {remote_name}")

    def download(self, remote_name: str) -> bytes:
        return call_with_deadline(lambda: bytes(self.session.download(remote_name)), self.timeouts.upload_s,
                                  f"{self.device.name}: download {remote_name}")

    def benchmark(self, library: Path, sha256: str, inputs: list[np.ndarray], *, number: int = 3, repeat: int = 10,
                  warmup: int = 2, num_threads: int = 0) -> tuple[BenchmarkResult, list[np.ndarray]]:
        """Upload library and inputs, run and time on the device; return the result and the outputs."""
        lib_name = self._upload_run(library, sha256, inputs)
        request = BenchmarkRequest(artifact=lib_name, sha256=sha256, inputs="inputs.npz",
                                   device=self.device.runtime_device, number=number, repeat=repeat, warmup=warmup,
                                   num_threads=num_threads, artifact_mac=self.artifact_mac(sha256))
        result = BenchmarkResult.from_json(self._call(FN_BENCHMARK, request.to_json(), timeout=self.timeouts.run_s))
        outputs: list[np.ndarray] = []
        if result.ok and result.outputs:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "outputs.npz"
                path.write_bytes(self.download(result.outputs))
                with np.load(path) as npz_out:
                    outputs = [npz_out[f"out{i}"] for i in range(len(npz_out.files))]
        return result, outputs


    def time_kernel(self, library: Path, sha256: str, args: list[dict[str, Any]], *, number: int = 3,
                    repeat: int = 1, min_repeat_ms: int = 40, num_threads: int = 0,
                    run_timeout_s: float | None = None) -> KernelTimingResult:
        """Upload one tuning candidate and time it on the device (the agent deletes it afterwards)."""
        lib_name = f"k{sha256[:16]}.so"
        self.upload(library, lib_name)
        request = KernelTimingRequest(artifact=lib_name, sha256=sha256, args=args, device=self.device.runtime_device,
                                      number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                      num_threads=num_threads, artifact_mac=self.artifact_mac(sha256))
        text = self._call(FN_TIME_KERNEL, request.to_json(), timeout=run_timeout_s or self.timeouts.run_s)
        return KernelTimingResult.from_json(text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_session_dying_with_parent() -> None:
    """In the child before exec: its own process group (stopped as a whole), killed if the host dies."""
    os.setsid()
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux/glibc: stop() still cleans up on a normal exit
        pass


class LocalAgent:
    """An agent process on 127.0.0.1, started fresh for each job and stopped by its process group."""

    def __init__(self, threads: int = 0, port: int | None = None, startup_s: float = 60.0) -> None:
        self.threads = threads
        self.port = port or _free_port()
        self.startup_s = startup_s
        self.proc: subprocess.Popen[str] | None = None
        self.log = Path(tempfile.mkstemp(prefix="dlas-agent-", suffix=".log")[1])
        self.secret = bytes.fromhex(auth.new_secret())  # fresh per agent; only this process and the agent know it

    def start(self) -> int:
        env = dict(os.environ, TVM_USE_RUNTIME_LIB="1", PYTHONUNBUFFERED="1")
        env.pop(auth.SECRET_FILE_ENV, None)
        env[auth.SECRET_ENV] = self.secret.hex()  # the environment of a process is readable by its user only
        if self.threads:
            env["TVM_NUM_THREADS"] = str(self.threads)
        cmd = [sys.executable, "-m", "dlas_agent", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--threads", str(self.threads)]
        log = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                                     preexec_fn=_own_session_dying_with_parent)
        line = call_with_deadline(self.proc.stdout.readline, self.startup_s, "local agent start")  # type: ignore[union-attr]
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            self.stop()
            raise AgentError(f"local agent failed to start: {self.log.read_text().strip().splitlines()[-1:]}") from None
        self.port = int(event["port"])
        return self.port

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the RPC server leaves forked workers otherwise
        self.proc.wait(timeout=10)
        self.proc = None


def secret_path(device_name: str) -> Path:
    """Where the host keeps a device's agent secret: ``<data dir>/secrets/<device>.secret`` (0600, dir 0700)."""
    directory = paths.sub_dir("secrets")
    with contextlib.suppress(OSError):
        directory.chmod(0o700)
    return directory / f"{device_name}.secret"


def device_secret(device: Device) -> bytes:
    """The secret the agents of ``device`` were given (``dlas-host deploy`` writes it for SSH devices)."""
    path = secret_path(device.name)
    if not path.is_file():
        how = ("run `dlas-host deploy --device " + device.name + "`" if device.connection.type == "ssh" else
               "copy the secret the device's agents serve with (`dlas-agent serve --secret-file`) there, mode 0600")
        raise AgentError(f"{device.name}: no agent secret at {path}: {how}")
    try:
        return auth.read_secret_file(path)
    except auth.AuthError as exc:
        raise AgentError(f"{device.name}: {exc}") from None


def rpc_connect(host: str, port: int, key: str, session_timeout_s: int, timeouts: Timeouts, secret: bytes) -> Any:
    """An authenticated RPC session (HMAC challenge-response with ``secret``, see ``dlas_agent.auth``)."""

    def run() -> Any:
        try:
            return auth.connect(host, port, secret, key=key, session_timeout_s=session_timeout_s,
                                timeout_s=timeouts.connect_s)
        except auth.AuthError as exc:
            raise AgentError(f"connect {host}:{port}: authentication failed: {exc}") from None

    return call_with_deadline(run, timeouts.connect_s, f"connect {host}:{port}")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__
