"""Wire protocol between host and agent: one definition, shared by both sides.

Messages travel as JSON strings through the agent's registered TVM RPC functions (``dlas.*``). Large data
(libraries, input and output tensors) travels as files through the RPC session's upload/download.
Plain dataclasses keep the agent free of heavy dependencies.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

PROTOCOL_VERSION = 2  # 2: authenticated sessions, artifact_mac on every library

# Remote function names the agent registers in its RPC server.
FN_PING = "dlas.ping"
FN_DEVICE_INFO = "dlas.device_info"
FN_BENCHMARK = "dlas.benchmark"
FN_TIME_KERNEL = "dlas.time_kernel"  # one tuning candidate (a single PrimFunc library)

T = TypeVar("T", bound="Message")


class ProtocolError(ValueError):
    """A message that does not match the protocol (unknown keys, wrong version, bad values)."""


@dataclass
class Message:
    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ProtocolError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"{cls.__name__}: not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ProtocolError(f"{cls.__name__}: expected an object")
        return cls.from_dict(data)


@dataclass
class BenchmarkRequest(Message):
    """Run ``entry`` of an uploaded library on uploaded inputs and time it on the device."""

    artifact: str  # file name inside the agent's session work dir (as uploaded)
    sha256: str  # the agent refuses to load a library whose hash differs
    inputs: str  # .npz file name inside the work dir; arrays arg0, arg1, ... in call order
    device: str = "cpu"  # "cpu" or "cuda"
    device_id: int = 0
    entry: str = "main"
    number: int = 3  # runs averaged into one sample (TVM time_evaluator semantics)
    repeat: int = 10  # samples
    warmup: int = 2  # untimed runs before measuring
    min_repeat_ms: int = 0
    cooldown_ms: int = 0
    num_threads: int = 0  # 0: keep the agent's setting
    outputs: str = "outputs.npz"  # where the agent saves the outputs (empty: don't)
    artifact_mac: str = ""  # HMAC(secret, session nonce, sha256) (auth.artifact_mac): no valid MAC, no load
    protocol: int = PROTOCOL_VERSION


@dataclass
class TimingStats(Message):
    """Robust statistics of timing samples (milliseconds), pyperf-style warnings included."""

    n: int
    median_ms: float
    mean_ms: float
    stdev_ms: float
    mad_ms: float
    iqr_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    samples_ms: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class BenchmarkResult(Message):
    ok: bool
    stats: TimingStats | None = None
    error: str = ""
    load_s: float = 0.0
    first_run_ms: float = 0.0
    outputs: str = ""
    output_shapes: list[list[int]] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)  # device snapshot taken right after timing
    protocol: int = PROTOCOL_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchmarkResult":
        data = dict(data)
        if isinstance(data.get("stats"), dict):
            data["stats"] = TimingStats.from_dict(data["stats"])
        return super().from_dict(data)


@dataclass
class DeviceInfo(Message):
    hostname: str = ""
    arch: str = ""
    os: str = ""
    python: str = ""
    cpu_model: str = ""
    cpu_flags: list[str] = field(default_factory=list)
    cores_physical: int = 0
    cores_logical: int = 0
    memory_total_mb: int = 0
    memory_available_mb: int = 0
    load_avg: list[float] = field(default_factory=list)
    governor: str = ""
    cpu_freq_mhz: float = 0.0
    temperatures_c: dict[str, float] = field(default_factory=dict)
    gpus: list[dict[str, Any]] = field(default_factory=list)
    tvm_version: str = ""
    tvm_runtime_only: bool = True
    agent_version: str = ""
    numpy_version: str = ""
    in_container: bool = False
    protocol: int = PROTOCOL_VERSION


@dataclass
class KernelTimingRequest(Message):
    """Time one tuning candidate: ``entry`` of an uploaded single-kernel library on random arguments.

    The agent allocates the arguments itself (shapes and dtypes given), so tuning needs no data transfer
    beyond the library; it deletes the library after timing. Timing follows TVM's time_evaluator.
    """

    artifact: str
    sha256: str
    args: list[dict[str, Any]]  # [{"shape": [...], "dtype": "float32"}, ...] in call order
    device: str = "cpu"
    device_id: int = 0
    entry: str = "main"
    number: int = 3
    repeat: int = 1
    min_repeat_ms: int = 40
    cooldown_ms: int = 0
    num_threads: int = 0
    artifact_mac: str = ""  # as BenchmarkRequest.artifact_mac
    protocol: int = PROTOCOL_VERSION


@dataclass
class KernelTimingResult(Message):
    ok: bool
    run_secs: list[float] = field(default_factory=list)
    error: str = ""
    protocol: int = PROTOCOL_VERSION
