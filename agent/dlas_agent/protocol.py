"""Wire protocol between host and agent: one definition, shared by both sides.

Messages travel as JSON strings through the agent's registered TVM RPC functions (``dlas.*``). Large data
(libraries, input and output tensors) travels as files through the RPC session's upload/download.
Plain dataclasses keep the agent free of heavy dependencies.

Compatibility: requests are strict (an agent refuses keys it does not know). Replies (results, stats,
device info) ignore keys they do not know, so a newer agent's extra fields reach an older host harmlessly;
hosts released before that rule was added are strict too, so fields added since then travel inside the
free-form ``env`` dict of a result (``BenchmarkResult.env[LOAD_ENV_KEY]``: the load during timing).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

PROTOCOL_VERSION = 2  # 2: authenticated sessions, artifact_mac on every library

# Remote function names the agent registers in its RPC server.
FN_PING = "dlas.ping"
FN_DEVICE_INFO = "dlas.device_info"
FN_BENCHMARK = "dlas.benchmark"
FN_TIME_KERNEL = "dlas.time_kernel"  # one tuning candidate (a single PrimFunc library)
FN_EVALUATE = "dlas.evaluate"  # accuracy: the timed artifact over a chunk of evaluation images
FN_PROFILE = "dlas.profile"  # per-function times of the artifact's calls (VM instrumentation)

# Key of BenchmarkResult.env holding the TimingLoad measured around the timed loop (absent: an older agent).
LOAD_ENV_KEY = "timing_load"

T = TypeVar("T", bound="Message")


class ProtocolError(ValueError):
    """A message that does not match the protocol (unknown keys, wrong version, bad values)."""


@dataclass
class Message:
    lenient: ClassVar[bool] = False  # replies: ignore unknown keys (a newer peer's fields) instead of refusing

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown and not cls.lenient:
            raise ProtocolError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:  # a required key is missing
            raise ProtocolError(f"{cls.__name__}: {exc}") from None

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

    lenient: ClassVar[bool] = True

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
class TimingLoad(Message):
    """What the whole machine did while the timed loop ran (``load.LoadMeter``): average cores busy, of
    which the timing process's own, the rest (other processes and the kernel) as ``competing_cores``."""

    lenient: ClassVar[bool] = True

    wall_s: float = 0.0  # length of the window
    cores: int = 0  # logical cores of the machine
    busy_cores: float = 0.0  # machine-wide busy CPU time / wall time
    own_cores: float = 0.0  # the timing process (its threads and waited-for children)
    competing_cores: float = 0.0  # busy - own: what everything else used
    steal_cores: float = 0.0  # taken by the hypervisor (a VM's noisy neighbours)
    top: list[dict[str, Any]] = field(default_factory=list)  # [{"pid", "name", "cores"}], biggest first
    load_avg_1m: float = 0.0


@dataclass
class BenchmarkResult(Message):
    lenient: ClassVar[bool] = True

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

    def timing_load(self) -> TimingLoad | None:
        """The load measured around the timed loop; None from an agent that does not measure it."""
        raw = self.env.get(LOAD_ENV_KEY) if isinstance(self.env, dict) else None
        if not isinstance(raw, dict):
            return None
        try:
            return TimingLoad.from_dict(raw)
        except ProtocolError:
            return None


@dataclass
class DeviceInfo(Message):
    lenient: ClassVar[bool] = True

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
    emulation: str = ""  # non-empty: this agent runs emulated (qemu-user): its timings say nothing about a board
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
    lenient: ClassVar[bool] = True

    ok: bool
    run_secs: list[float] = field(default_factory=list)
    error: str = ""
    protocol: int = PROTOCOL_VERSION


@dataclass
class EvalRequest(Message):
    """Run ``entry`` of an uploaded library over a chunk of images; save the top-k class indices per image."""

    artifact: str
    sha256: str
    images: str  # .npy (N, C, H, W) inside the work dir, N a multiple of ``batch``; deleted when done
    outputs: str  # .npy the agent writes: (N, k) int32 class indices, best first
    batch: int = 1  # the artifact's batch size
    k: int = 5
    device: str = "cpu"
    device_id: int = 0
    entry: str = "main"
    num_threads: int = 0
    artifact_mac: str = ""
    protocol: int = PROTOCOL_VERSION


@dataclass
class EvalResult(Message):
    lenient: ClassVar[bool] = True

    ok: bool
    error: str = ""
    images: int = 0
    compute_s: float = 0.0  # inside the model calls (device synchronised)
    transfer_s: float = 0.0  # host<->device copies of the images and logits
    outputs: str = ""


@dataclass
class ProfileRequest(Message):
    """Time every call the VM makes while running ``entry`` on uploaded inputs (``dlas_agent.profile``)."""

    artifact: str
    sha256: str
    inputs: str  # .npz as BenchmarkRequest.inputs
    device: str = "cpu"
    device_id: int = 0
    entry: str = "main"
    repeat: int = 10  # instrumented runs (and as many plain runs); per-call times are medians over them
    warmup: int = 2
    num_threads: int = 0
    artifact_mac: str = ""
    protocol: int = PROTOCOL_VERSION


@dataclass
class ProfileResult(Message):
    """Per call site of a compiled function, in execution order: ``{"function", "occurrence", "median_ms",
    "mean_ms", "min_ms", "args": [{"shape", "dtype"}]}``; runtime builtins summed per name: ``{"function",
    "calls", "median_ms", "mean_ms"}`` (per run). ``total`` times the instrumented runs, ``plain`` as many
    runs without the instrument."""

    lenient: ClassVar[bool] = True

    ok: bool
    error: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    builtins: list[dict[str, Any]] = field(default_factory=list)
    total: TimingStats | None = None
    plain: TimingStats | None = None
    repeat: int = 0
    load_s: float = 0.0
    warnings: list[str] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)
    protocol: int = PROTOCOL_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProfileResult":
        data = dict(data)
        for key in ("total", "plain"):
            if isinstance(data.get(key), dict):
                data[key] = TimingStats.from_dict(data[key])
        return super().from_dict(data)
