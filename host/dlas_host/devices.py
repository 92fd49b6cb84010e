"""Device registry: ``devices.yaml`` parsed and validated into typed device descriptions.

Every problem in the file becomes one line that names the file, the device and the field.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import arches
from .paths import default_devices_file
from .errors import DlasError


class DeviceConfigError(DlasError, ValueError):
    """devices.yaml is missing, malformed or names something impossible."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Fields that end up in commands on the device (or in the host's own messages that suggest commands) admit
# only characters that can never mean anything to a shell or a systemd unit; the commands quote them too.
_HOST_RE = re.compile(r"[A-Za-z0-9_.:%-]+")
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*")
_WORD_RE = re.compile(r"[A-Za-z0-9_./~+@:-]+")  # an interpreter or a path on the device, one word
_IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./:@-]*")


def _matching(pattern: re.Pattern[str], what: str, max_len: int = 255) -> Any:
    def check(value: str) -> str:
        if len(value) > max_len:
            raise ValueError(f"{value[:40]!r}... ({len(value)} characters) is longer than a {what} can be ({max_len})")
        if not pattern.fullmatch(value) or value.startswith("-"):
            raise ValueError(f"{value!r} is not a valid {what}")
        return value

    return AfterValidator(check)


def _no_control_chars(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r} contains a control character (newline, tab, NUL ...)")
    return value


HostName = Annotated[str, _matching(_HOST_RE, "host name or address (letters, digits, . - : _ %)")]
UserName = Annotated[str, _matching(_USER_RE, "user name (letters, digits, _ . @ -)")]
DeviceWord = Annotated[str, _matching(_WORD_RE, "single path or command without spaces or shell characters "
                                                 "(letters, digits, _ . / ~ + @ : -)")]
ImageRef = Annotated[str, _matching(_IMAGE_RE, "container image reference (letters, digits, _ . / : @ -)")]
OneLine = Annotated[str, AfterValidator(_no_control_chars)]
# Checked against the table when validated (not a Literal), so a new row in arches.py is all a new arch needs.
ArchName = Annotated[str, AfterValidator(lambda value: arches.get(value).name)]


class LocalConnection(_Strict):
    """The embedded default: an agent spawned on 127.0.0.1 by the host itself."""

    type: Literal["local"] = "local"


class SSHConnection(_Strict):
    type: Literal["ssh"]
    host: HostName
    port: int = Field(22, ge=1, le=65535)
    user: UserName
    key_file: OneLine | None = None
    known_hosts: OneLine | None = None  # default: ~/.ssh/known_hosts; host keys are never auto-accepted
    netns: OneLine | None = None  # reach the host from inside a network namespace (simulated labs)


class TrackerConnection(_Strict):
    """A pooled device reached through a TVM RPC tracker, queued by key."""

    type: Literal["tracker"]
    host: HostName = "127.0.0.1"
    port: int = Field(9190, ge=1, le=65535)
    key: OneLine


Connection = Annotated[Union[LocalConnection, SSHConnection, TrackerConnection], Field(discriminator="type")]


class AgentSettings(_Strict):
    rpc_port: int = Field(9190, ge=1, le=65535)
    mode: Literal["process", "container"] = "process"
    image: ImageRef | None = None  # container image when mode is "container"
    python: DeviceWord = "python3"  # interpreter on the device used to install/run the agent
    install_dir: DeviceWord = "~/.dlas-agent"
    session_timeout_s: int = Field(600, ge=10)


class Device(_Strict):
    name: OneLine
    description: str = ""
    connection: Connection = LocalConnection()
    arch: ArchName
    target: dict[str, Any]
    threads: int = Field(0, ge=0, le=4096)  # 0: all cores
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
    resolved = resolve_target_dict(target)
    _check_llvm_names(resolved)
    try:
        return tvm.target.Target(resolved)
    except Exception as exc:  # noqa: BLE001 - TVM raises several types; all mean "impossible target"
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise ValueError(f"TVM rejects this target: {lines[-1] if lines else type(exc).__name__}") from None


def _check_llvm_names(target: dict[str, Any]) -> None:
    """LLVM compiles for a generic CPU when it does not know ``mcpu`` (TVM only logs it): refuse that, and a
    triple LLVM does not know (asking LLVM for the CPUs of such a triple crashes the process)."""
    if isinstance(target.get("host"), dict):
        _check_llvm_names(target["host"])
    if target.get("kind") != "llvm":
        return
    import tvm  # noqa: PLC0415
    from tvm.target import codegen  # noqa: PLC0415

    triple = str(target.get("mtriple") or codegen.llvm_get_system_triple())
    if not codegen.llvm_is_valid_cpu("generic", triple):
        raise ValueError(f"LLVM does not know the target triple {triple!r}")
    mcpu = target.get("mcpu")
    if not mcpu or codegen.llvm_is_valid_cpu(str(mcpu), triple):
        return
    known = list(codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm", "mtriple": triple})))
    close = difflib.get_close_matches(str(mcpu), known, n=3, cutoff=0.5)
    raise ValueError(f"LLVM does not know mcpu {mcpu!r} for {triple}"
                     + (f" (closest: {', '.join(close)})" if close else "")
                     + f"; the {len(known)} it knows: {', '.join(known)}")


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


def _refuse_duplicate_keys(path: Path, node: yaml.Node | None, level: str = "top",
                           device: str | None = None) -> None:
    """YAML keeps the last of two equal keys without a word: a second device of the same name would silently
    replace the first. ``level``: "top" (the document), "devices" (the name -> settings mapping) or "inner"."""
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(path, item, "inner", device)
        return
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key, line = str(key_node.value), key_node.start_mark.line + 1
        if key in seen and level == "devices":
            raise DeviceConfigError(f"{path}: device {key!r} is defined twice (lines {seen[key]} and {line}); "
                                    "device names must be unique")
        if key in seen:
            where = f"device {device!r}: " if device is not None else ""
            raise DeviceConfigError(f"{path}: {where}key {key!r} is given twice (lines {seen[key]} and {line})")
        seen[key] = line
        inner = "devices" if level == "top" and key == "devices" else "inner"
        _refuse_duplicate_keys(path, value_node, inner, key if level == "devices" else device)


def load(path: Path | str | None = None) -> Registry:
    path = Path(path) if path is not None else default_devices_file()
    if not path.is_file():
        raise DeviceConfigError(f"{path}: devices file not found (set DLAS_DEVICES or pass --devices)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DeviceConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        _refuse_duplicate_keys(path, yaml.compose(text, Loader=yaml.SafeLoader))
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", exc)).split())  # PyYAML's messages span lines
        raise DeviceConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise DeviceConfigError(f"{path}: not valid YAML: nested too deeply") from None
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
