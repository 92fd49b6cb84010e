"""MetaSchedule Runner that times candidates on agents over RPC, robust to the lab.

One worker slot per device (a device measures one candidate at a time, or timings interfere). A slot
keeps its session open across candidates; when the device dies, hangs or reboots, the slot drops the
session, reconnects with backoff (a local agent is restarted, an SSH tunnel re-opened, a tracker queue
re-entered) and measures the candidate again. A device that stays away past ``reconnect_s`` is declared
lost: its pending candidates come back marked ``DEVICE_LOST`` (never recorded) and the tuner stops,
keeping every record already committed. Several devices of the same kind (given explicitly, or one
tracker key served by several agents) share the candidates of every batch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

from dlas_agent.runner import sha256_file

from ..devices import Device
from ..transport import AgentClient, AgentError, Timeouts, connect

log = logging.getLogger(__name__)

DEVICE_LOST = "DEVICE_LOST"
"""Prefix of a runner error for a candidate that was never measured because its device went away."""


@dataclass
class MeasureConfig:
    """Timing of one candidate and the lab's timeouts (seconds)."""

    number: int = 3
    repeat: int = 3
    min_repeat_ms: int = 40
    upload_s: float = 60.0
    queue_s: float = 300.0  # waiting for a free device at a tracker
    run_s: float = 60.0  # one candidate's timing on the device
    connect_s: float = 20.0
    reconnect_s: float = 120.0  # how long a device may stay away before it is declared lost

    def timeouts(self) -> Timeouts:
        return Timeouts(connect_s=self.connect_s, upload_s=self.upload_s, run_s=self.run_s, info_s=30.0,
                        queue_s=self.queue_s)


class DeviceLost(AgentError):
    """A device did not come back within ``reconnect_s``."""


@dataclass
class _Slot:
    device: Device
    stack: contextlib.ExitStack | None = None
    client: AgentClient | None = None
    measured: int = 0
    reconnects: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class SessionPool:
    """Sessions to one or more devices of the same kind; each candidate goes to the next free one."""

    def __init__(self, devices: list[Device], config: MeasureConfig) -> None:
        if not devices:
            raise ValueError("tuning needs at least one device")
        self.config = config
        self.slots = [_Slot(d) for d in devices]
        self._free: list[_Slot] = list(self.slots)
        self._cond = threading.Condition()
        self.lost: str | None = None  # reason, once a device is declared lost
        self.events: list[str] = []  # reconnects and losses, for the tuning report

    @property
    def size(self) -> int:
        return len(self.slots)

    def close(self) -> None:
        for slot in self.slots:
            self._drop(slot)

    # ------------------------------------------------------------------ sessions
    def _drop(self, slot: _Slot) -> None:
        if slot.stack is not None:
            with contextlib.suppress(Exception):
                slot.stack.close()
        slot.stack, slot.client = None, None

    def _open(self, slot: _Slot) -> AgentClient:
        stack = contextlib.ExitStack()
        try:
            client = stack.enter_context(connect(slot.device, self.config.timeouts()))
            client.ping()
        except BaseException:
            stack.close()
            raise
        slot.stack, slot.client = stack, client
        return client

    def _client(self, slot: _Slot) -> AgentClient:
        if slot.client is not None:
            return slot.client
        deadline = time.monotonic() + self.config.reconnect_s
        delay, last = 1.0, ""
        while True:
            try:
                return self._open(slot)
            except AgentError as exc:
                last = str(exc)
            if time.monotonic() + delay > deadline:
                raise DeviceLost(f"{slot.device.name}: lost (no agent for {self.config.reconnect_s:g} s; "
                                 f"last error: {last})")
            time.sleep(delay)
            delay = min(delay * 2, 15.0)

    def _acquire(self) -> _Slot:
        with self._cond:
            while not self._free:
                self._cond.wait()
            return self._free.pop(0)

    def _release(self, slot: _Slot) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify()

    # ------------------------------------------------------------------ measuring
    def measure(self, library: str, args: list[dict[str, Any]]) -> list[float]:
        """Seconds per run of one candidate; raises AgentError (a genuine failure) or DeviceLost."""
        if self.lost:
            raise DeviceLost(self.lost)
        slot = self._acquire()
        try:
            sha = sha256_file(Path(library))
            for attempt in range(2):
                client = self._client(slot)
                try:
                    result = client.time_kernel(Path(library), sha, args, number=self.config.number,
                                                repeat=self.config.repeat, min_repeat_ms=self.config.min_repeat_ms,
                                                num_threads=slot.device.threads, run_timeout_s=self.config.run_s)
                except AgentError as exc:  # the session broke (device died, hung, rebooted): reconnect, retry
                    self.events.append(f"{slot.device.name}: session lost ({exc}); reconnecting")
                    log.warning("%s: session lost (%s); reconnecting", slot.device.name, exc)
                    self._drop(slot)
                    slot.reconnects += 1
                    if attempt == 1:
                        raise
                    continue
                if not result.ok:
                    raise AgentError(result.error)
                slot.measured += 1
                return result.run_secs
            raise AssertionError("unreachable")
        except DeviceLost as exc:
            self.lost = str(exc)
            self.events.append(str(exc))
            raise
        finally:
            self._release(slot)


@derived_object
class AgentRunnerFuture(PyRunnerFuture):
    def __init__(self, future: Future) -> None:
        super().__init__()
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> RunnerResult:
        try:
            return RunnerResult(run_secs=[float(s) for s in self.future.result()], error_msg=None)
        except DeviceLost as exc:
            return RunnerResult(run_secs=None, error_msg=f"{DEVICE_LOST}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a candidate that fails on the device is a failed trial
            return RunnerResult(run_secs=None, error_msg=f"{type(exc).__name__}: {exc}")


@derived_object
class AgentRunner(PyRunner):
    """MetaSchedule Runner over the pool's agents; futures resolve as devices finish candidates."""

    def __init__(self, pool: SessionPool) -> None:
        super().__init__()
        self.pool = pool
        self.executor = ThreadPoolExecutor(max_workers=pool.size, thread_name_prefix="dlas-measure")

    def run(self, runner_inputs: list[Any]) -> list[Any]:
        futures = []
        for inp in runner_inputs:
            args = [arg_spec(a) for a in inp.args_info]
            futures.append(AgentRunnerFuture(self.executor.submit(self.pool.measure, str(inp.artifact_path), args)))
        return futures


def arg_spec(info: Any) -> dict[str, Any]:
    """{"shape", "dtype"} of a MetaSchedule TensorInfo (``["TENSOR", dtype, shape]`` in JSON form)."""
    kind, dtype, shape = info.as_json()
    if str(kind) != "TENSOR":
        raise ValueError(f"cannot time a kernel taking a {kind} argument")
    return {"shape": [int(s) for s in shape], "dtype": str(dtype)}


def runner_result_ok(result: Any) -> bool:
    return result.error_msg is None and result.run_secs is not None and len(result.run_secs) > 0


__all__ = ["AgentRunner", "DEVICE_LOST", "DeviceLost", "MeasureConfig", "SessionPool", "arg_spec"]
