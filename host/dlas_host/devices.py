"""Device registry: ``devices.yaml`` parsed and validated into typed device descriptions.

Every problem in the file becomes one line that names the file, the device and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .paths import default_devices_file


class DeviceConfigError(ValueError):
    """devices.yaml is missing, malformed or names something impossible."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalConnection(_Strict):
    """The embedded default: an agent spawned on 127.0.0.1 by the host itself."""

    type: Literal["local"] = "local"


class SSHConnection(_Strict):
    type: Literal["ssh"]
    host: str
    port: int = Field(22, ge=1, le=65535)
    user: str
    key_file: str | None = None
    known_hosts: str | None = None  # default: ~/.ssh/known_hosts; host keys are never auto-accepted
    netns: str | None = None  # reach the host from inside a network namespace (simulated labs)


class TrackerConnection(_Strict):
    """A pooled device reached through a TVM RPC tracker, queued by key."""

    type: Literal["tracker"]
    host: str = "127.0.0.1"
    port: int = Field(9190, ge=1, le=65535)
    key: str


Connection = Annotated[Union[LocalConnection, SSHConnection, TrackerConnection], Field(discriminator="type")]


class AgentSettings(_Strict):
    rpc_port: int = Field(9190, ge=1, le=65535)
    mode: Literal["process", "container"] = "process"
    image: str | None = None  # container image when mode is "container"
    python: str = "python3"  # interpreter on the device used to install/run the agent
    install_dir: str = "~/.dlas-agent"
    session_timeout_s: int = Field(600, ge=10)


class Device(_Strict):
    name: str
    description: str = ""
    connection: Connection = LocalConnection()
    arch: Literal["x86_64", "aarch64"]
    target: dict[str, Any]
    threads: int = Field(0, ge=0)  # 0: all cores
    tags: tuple[str, ...] = ()
    agent: AgentSettings = AgentSettings()

    @field_validator("target")
    @classmethod
    def _target_is_buildable(cls, value: dict[str, Any]) -> dict[str, Any]:
        build_target(value)  # raises ValueError with TVM's reason
        return value

    @property
    def is_cuda(self) -> bool:
        return self.target.get("kind") == "cuda"

    @property
    def runtime_device(self) -> str:
        return "cuda" if self.is_cuda else "cpu"

    def tvm_target(self) -> Any:
        return build_target(self.target)


def resolve_target_dict(target: dict[str, Any]) -> dict[str, Any]:
    """``mcpu: native`` means the CPU of the machine compiling (only sensible for the local device)."""
    resolved = dict(target)
    if resolved.get("mcpu") == "native":
        from tvm.target import codegen  # noqa: PLC0415

        resolved["mcpu"] = codegen.llvm_get_system_cpu()
    if isinstance(resolved.get("host"), dict):
        resolved["host"] = resolve_target_dict(resolved["host"])
    return resolved


def build_target(target: dict[str, Any]) -> Any:
    import tvm  # noqa: PLC0415 - importing TVM is slow; only when a target is really needed

    if not isinstance(target, dict) or "kind" not in target:
        raise ValueError("target must be a mapping with a 'kind' (e.g. {kind: llvm, mcpu: znver4})")
    try:
        return tvm.target.Target(resolve_target_dict(target))
    except Exception as exc:  # noqa: BLE001 - TVM raises several types; all mean "impossible target"
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise ValueError(f"TVM rejects this target: {lines[-1] if lines else type(exc).__name__}") from None


class Registry(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: Path
    devices: dict[str, Device]

    def get(self, name: str) -> Device:
        try:
            return self.devices[name]
        except KeyError:
            raise DeviceConfigError(
                f"{self.path}: no device named {name!r}; known: {', '.join(self.devices) or 'none'}"
            ) from None

    def select(self, names: list[str] | None = None, tags: list[str] | None = None) -> list[Device]:
        chosen = [self.get(n) for n in names] if names else list(self.devices.values())
        if tags:
            chosen = [d for d in chosen if set(tags) <= set(d.tags)]
        return chosen


def _format_error(path: Path, device: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in ("local", "ssh", "tracker")))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "missing required field"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{path}: device {device!r}: field {loc or '(device)'}: {msg}{more}"


def load(path: Path | str | None = None) -> Registry:
    path = Path(path) if path is not None else default_devices_file()
    if not path.is_file():
        raise DeviceConfigError(f"{path}: devices file not found (set DLAS_DEVICES or pass --devices)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DeviceConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("devices"), dict):
        raise DeviceConfigError(f"{path}: expected a top-level 'devices:' mapping of name -> settings")
    extra = set(raw) - {"devices", "version"}
    if extra:
        raise DeviceConfigError(f"{path}: unknown top-level key(s) {sorted(extra)}; expected 'devices'")
    devices: dict[str, Device] = {}
    for name, settings in raw["devices"].items():
        if not isinstance(settings, dict):
            raise DeviceConfigError(f"{path}: device {name!r}: expected a mapping of settings")
        try:
            devices[str(name)] = Device(name=str(name), **settings)
        except ValidationError as exc:
            raise DeviceConfigError(_format_error(path, str(name), exc)) from None
        except TypeError as exc:
            raise DeviceConfigError(f"{path}: device {name!r}: {exc}") from None
    return Registry(path=path, devices=devices)
