"""``dlas-host deploy``: install or update the agent on an SSH device and keep it running.

Steps: probe the device (arch, OS, Python, GPU, service manager, what is deployed), compare a fingerprint of
what would be deployed with the one recorded on the device, then (only if they differ) upload the agent
bundle, install it into a fresh venv, strip the TVM compiler (and the CUDA runtime on CPU-only devices),
switch the ``current`` link, (re)start the supervised service, and finally health-check the agent through
the SSH tunnel. A second deploy with nothing changed only runs the health check.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dlas_agent import auth
from dlas_agent.runner import sha256_file

from .. import arches
from ..bundle import CPU_ONLY_REMOVE, RUNTIME_ONLY_REMOVE, build_bundle
from ..devices import Device
from ..transport import AgentError, Timeouts
from .remote_scripts import (ENGINES, SECRET_FILE, SERVICE, _probe_script, _remote_path, install_command,
                             stop_script, supervisor_script, systemd_unit)
from .ssh import SSH, AuthFailed, HostKeyChanged, HostKeyUnknown, SSHError

Log = Callable[[str], None]
FORMAT_VERSION = 1
ENV_FILE = "agent.env"  # the same secret as DLAS_AGENT_SECRET=..., for `podman|docker run --env-file` (0600)


class DeployError(AgentError):
    """The device does not match devices.yaml, or installing/starting the agent failed."""


@dataclass
class Probe:
    arch: str = ""
    os: str = ""
    python: str = ""  # "3.11.2"
    home: str = ""
    gpus: list[str] = field(default_factory=list)
    tegra: str = ""
    systemd_user: bool = False
    engines: list[str] = field(default_factory=list)  # podman / docker
    deployed: dict[str, Any] = field(default_factory=dict)
    supervisor_alive: bool = False

    @property
    def py_minor(self) -> str:
        return ".".join(self.python.split(".")[:2])


@dataclass
class DeployReport:
    device: str
    actions: list[str] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    changed: bool = False
    dry_run: bool = False
    probe: Probe | None = None
    fingerprint: str = ""
    versions: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def probe(ssh: SSH, device: Device) -> Probe:
    _, out, _ = ssh.run(_probe_script(device.agent.install_dir, device.agent.python), timeout_s=60)
    p = Probe()
    for line in out.splitlines():
        key, _, value = line.partition("=")
        value = value.strip()
        if key == "gpu":
            p.gpus.append(value)
        elif key == "engine" and value in ENGINES:  # the value becomes a command: only the two we know
            p.engines.append(value)
        elif key == "deployed":
            try:
                p.deployed = json.loads(value)
            except json.JSONDecodeError:
                p.deployed = {}
        elif key in ("systemd_user", "supervisor_alive"):
            setattr(p, key, value == "1")
        elif key in ("arch", "os", "python", "home", "tegra"):
            setattr(p, key, value)
    return p


def check_device(device: Device, p: Probe) -> list[str]:
    """Raise DeployError when the device is not what devices.yaml says; return warnings."""
    warnings: list[str] = []
    arch = arches.normalise(p.arch)
    if arch != device.arch:
        raise DeployError(f"{device.name}: devices.yaml says arch {device.arch}, but `uname -m` on the device "
                          f"says {p.arch or '(nothing)'}; fix devices.yaml or the connection")
    if device.agent.mode == "process":
        if not p.python:
            raise DeployError(f"{device.name}: no working {device.agent.python} on the device (agent.python)")
        if tuple(int(x) for x in p.py_minor.split(".")) < (3, 10):
            raise DeployError(f"{device.name}: the agent needs Python >= 3.10, the device has {p.python}")
    elif not p.engines:
        raise DeployError(f"{device.name}: agent.mode is container but neither podman nor docker is on the device")
    has_gpu = bool(p.gpus or p.tegra)
    if device.is_cuda and not has_gpu:
        warnings.append("target is CUDA but no GPU was found (no nvidia-smi output, no /etc/nv_tegra_release)")
    if has_gpu and not device.is_cuda:
        warnings.append(f"device has a GPU ({(p.gpus or [p.tegra])[0]}) but its target is CPU-only")
    return warnings


# ---------------------------------------------------------------------------------------------- fingerprint
def bundle_manifest(bundle: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(bundle.glob("*.whl"))}


def wheel_content_hash(path: Path) -> str:
    """Hash of a wheel's members (names and bytes), blind to zip timestamps: rebuilding the agent wheel from
    unchanged sources must not count as a change."""
    import zipfile  # noqa: PLC0415

    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            digest.update(info.filename.encode() + b"\0")
            digest.update(hashlib.sha256(zf.read(info)).digest())
    return digest.hexdigest()


def fingerprint(device: Device, manifest: dict[str, str], extra: dict[str, Any], bundle: Path | None = None) -> str:
    a = device.agent
    if bundle is not None:  # the agent wheel is rebuilt on every deploy: compare what is inside it
        manifest = {n: (wheel_content_hash(bundle / n) if n.startswith("dlas_agent-") else h)
                    for n, h in manifest.items()}
    payload = {"v": FORMAT_VERSION, "bundle": manifest, "mode": a.mode, "port": a.rpc_port, "image": a.image,
               "python": a.python, "threads": device.threads, "cuda": device.is_cuda,
               "supervisor": supervisor_script(a.install_dir, a.rpc_port, device.threads), **extra}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- deploy
def deploy(device: Device, *, dry_run: bool = False, probe_device: bool = False, accept_new_host_key: bool = False,
           log: Log = print, timeouts: Timeouts | None = None, start_timeout_s: float = 180.0,
           install_timeout_s: float = 900.0, force: bool = False) -> DeployReport:
    """Install or update the agent (see module docstring).

    ``dry_run`` logs the plan from devices.yaml alone: no connection is opened and nothing runs on the device.
    With ``probe_device`` too, it connects and runs only the read-only probe (and, for containers,
    ``image inspect``) to make the plan exact: still nothing is uploaded, installed, started or written.
    """
    conn = device.connection
    if conn.type != "ssh":
        raise DeployError(f"{device.name}: deploy works on SSH devices; this one is {conn.type} "
                          "(local agents are spawned per job, tracker devices are managed by their pool)")
    timeouts = timeouts or Timeouts(connect_s=20, info_s=60)
    report = DeployReport(device=device.name, dry_run=dry_run)
    if dry_run and not probe_device:
        report.plan = offline_plan(device)
        for step in report.plan:
            log(f"plan: {step}")
        return report
    t_all = time.monotonic()
    with SSH.open(conn, timeout_s=timeouts.connect_s, op_timeout_s=120,
                  accept_new_host_key=accept_new_host_key) as ssh:
        t0 = time.monotonic()
        p = probe(ssh, device)
        report.probe = p
        report.timings_s["probe"] = time.monotonic() - t0
        report.warnings += check_device(device, p)
        log(f"{device.name}: {p.arch}, {p.os}, Python {p.python or '-'}, GPU {', '.join(p.gpus) or p.tegra or 'none'}, "
            f"service: {'systemd --user' if p.systemd_user else 'supervisor script'}")
        for w in report.warnings:
            log(f"{device.name}: warning: {w}")

        if device.agent.mode == "process":
            t0 = time.monotonic()
            bundle = build_bundle(device.arch, p.py_minor)
            manifest = bundle_manifest(bundle)
            report.timings_s["bundle"] = time.monotonic() - t0
            fp = fingerprint(device, manifest, {"systemd": p.systemd_user}, bundle)
        else:
            manifest = {}
            image_id = _image_id(ssh, device, p, pull=not dry_run)
            fp = fingerprint(device, {}, {"image_id": image_id, "engine": p.engines[0]})
        report.fingerprint = fp
        up_to_date = p.deployed.get("fingerprint") == fp and not force
        report.plan = _plan(device, p, manifest, up_to_date)
        report.plan.append(f"agent secret: host {_host_secret_path(device)} (made on first deploy), device "
                           f"{device.agent.install_dir}/{SECRET_FILE} and {ENV_FILE} (0600); restart if it changed")
        if dry_run:
            for step in report.plan:
                log(f"plan: {step}")
            return report

        secret_changed = _provision_secret(ssh, device, p, log)
        if secret_changed:
            report.actions.append(f"provisioned the agent secret ({device.agent.install_dir}/{SECRET_FILE})")
        if not up_to_date:
            report.changed = True
            if device.agent.mode == "process":
                _install_process(ssh, device, p, bundle, manifest, fp, report, log, install_timeout_s)
            else:
                _install_container(ssh, device, p, fp, report, log)
        elif not _service_running(ssh, device, p):
            log(f"{device.name}: agent is up to date but not running: starting it")
            _start_service(ssh, device, p, report)
        elif secret_changed:
            log(f"{device.name}: the agent secret changed: restarting the agent")
            _start_service(ssh, device, p, report)
            report.changed = True
        else:
            report.actions.append("nothing to install (fingerprint matches)")

        t0 = time.monotonic()
        report.versions = wait_healthy(ssh, device, start_timeout_s, log)
        report.timings_s["health"] = time.monotonic() - t0
    report.timings_s["total"] = time.monotonic() - t_all
    return report


def offline_plan(device: Device) -> list[str]:
    """What deploy would do, from devices.yaml alone (``--dry-run`` without ``--probe``)."""
    a, conn = device.agent, device.connection
    steps = [f"connect to {conn.user}@{conn.host}:{conn.port} over SSH (host key from "
             f"{conn.known_hosts or '~/.ssh/known_hosts'}, or recorded with --accept-new-host-key)",
             "probe (read-only): arch, OS, Python, GPU, service manager, deployed fingerprint; stop here if the "
             f"device is not {device.arch} or the fingerprint matches (then: start if stopped, health check)"]
    if a.mode == "container":
        steps += [f"podman|docker pull {a.image} if absent",
                  f"run {a.image} as '{SERVICE}-{a.rpc_port}' (--network host, --restart=always, agent on "
                  f"127.0.0.1:{a.rpc_port})"]
    else:
        remove = list(RUNTIME_ONLY_REMOVE) + ([] if device.is_cuda else list(CPU_ONLY_REMOVE))
        steps += [f"build the agent bundle for {device.arch} and the device's Python; upload the wheels that "
                  f"changed to {a.install_dir}/bundle",
                  f"create a venv with {a.python} and pip install --no-index dlas-agent",
                  f"remove {', '.join(remove)} from the installed tvm package (runtime only)",
                  f"stop the old agent; start it supervised (systemd --user or a supervisor script): dlas_agent "
                  f"serve --host 127.0.0.1 --port {a.rpc_port}"]
    steps += [f"agent secret: host {_host_secret_path(device)} (made on first deploy), device "
              f"{a.install_dir}/{SECRET_FILE} and {ENV_FILE} (0600)",
              "health check through the SSH tunnel (ping + device_info)",
              "(add --probe to connect and run the read-only probe for the exact plan)"]
    return steps


def _plan(device: Device, p: Probe, manifest: dict[str, str], up_to_date: bool) -> list[str]:
    a = device.agent
    if up_to_date:
        return ["agent is up to date (fingerprint matches): start it if not running, then health check"]
    if a.mode == "container":
        return [f"{p.engines[0]} pull {a.image} if absent",
                f"{p.engines[0]} run {a.image} as '{SERVICE}-{a.rpc_port}' (--network host, --restart=always, "
                f"agent on 127.0.0.1:{a.rpc_port})", "health check through the SSH tunnel"]
    old = p.deployed.get("manifest", {})
    upload = [n for n, h in manifest.items() if old.get(n) != h]
    remove = list(RUNTIME_ONLY_REMOVE) + ([] if device.is_cuda else list(CPU_ONLY_REMOVE))
    service = "systemd --user unit" if p.systemd_user else "supervisor script (setsid + pidfile, restarts the agent)"
    return [
        f"upload {len(upload)} of {len(manifest)} wheels to {a.install_dir}/bundle ({', '.join(upload) or 'none'})",
        f"create a venv with {a.python} (Python {p.python}) and pip install --no-index dlas-agent",
        f"remove {', '.join(remove)} from the installed tvm package (runtime only)",
        f"stop the old agent; start {service}: dlas_agent serve --host 127.0.0.1 --port {a.rpc_port}",
        "health check through the SSH tunnel (ping + device_info)",
    ]


def _install_process(ssh: SSH, device: Device, p: Probe, bundle: Path, manifest: dict[str, str], fp: str,
                     report: DeployReport, log: Log, install_timeout_s: float) -> None:
    a = device.agent
    d = _remote_path(a.install_dir)
    d_abs = a.install_dir.replace("~", p.home, 1) if a.install_dir.startswith("~") else a.install_dir
    ssh.run(f"mkdir -p {d}/bundle {d}/venvs && chmod 700 {d}")

    # upload what differs (by sha256 on the device)
    t0 = time.monotonic()
    _, out, _ = ssh.run(f"cd {d}/bundle && for f in *.whl; do [ -f \"$f\" ] && sha256sum \"$f\"; done; true",
                        timeout_s=300)
    remote = {line.split()[1]: line.split()[0] for line in out.splitlines() if len(line.split()) == 2}
    todo = [n for n, h in manifest.items() if remote.get(n) != h]
    for name in todo:
        log(f"{device.name}: uploading {name} ({(bundle / name).stat().st_size / 2**20:.1f} MiB)")
        ssh.put(bundle / name, f"{d_abs}/bundle/{name}.part")
        ssh.run(f"mv -f {d}/bundle/{shlex.quote(name)}.part {d}/bundle/{shlex.quote(name)}")
    stale = [n for n in remote if n not in manifest]
    if stale:
        ssh.run(f"cd {d}/bundle && rm -f " + " ".join(shlex.quote(n) for n in stale))
    if todo:
        _, out, _ = ssh.run(f"cd {d}/bundle && sha256sum " + " ".join(shlex.quote(n) for n in todo), timeout_s=300)
        got = {line.split()[1]: line.split()[0] for line in out.splitlines() if len(line.split()) == 2}
        bad = [n for n in todo if got.get(n) != manifest[n]]
        if bad:
            raise DeployError(f"{device.name}: uploaded wheels are corrupt on the device: {', '.join(bad)}")
    report.actions.append(f"uploaded {len(todo)} wheel(s)")
    report.timings_s["upload"] = time.monotonic() - t0

    # fresh venv, install offline, strip to runtime only
    t0 = time.monotonic()
    log(f"{device.name}: installing into a fresh venv (offline)")
    remove = list(RUNTIME_ONLY_REMOVE) + ([] if device.is_cuda else list(CPU_ONLY_REMOVE))
    ssh.run(install_command(a.install_dir, a.python, fp[:12], remove), timeout_s=install_timeout_s)
    report.actions.append(f"installed dlas-agent into venvs/{fp[:12]} and removed {', '.join(remove)}")
    report.timings_s["install"] = time.monotonic() - t0

    # switch and (re)start
    ssh.run(stop_script(a.install_dir), timeout_s=30)
    ssh.put_text(supervisor_script(a.install_dir, a.rpc_port, device.threads), f"{d_abs}/supervise.sh", 0o755)
    if p.systemd_user:
        ssh.run("mkdir -p ~/.config/systemd/user")
        ssh.put_text(systemd_unit(d_abs, a.rpc_port, device.threads),
                     f"{p.home}/.config/systemd/user/{SERVICE}.service")
    ssh.run(f"ln -sfn venvs/{fp[:12]} {d}/current")
    _start_service(ssh, device, p, report)
    record = {"fingerprint": fp, "manifest": manifest, "deployed_at": time.time(), "python": p.python,
              "service": "systemd-user" if p.systemd_user else "supervisor", "rpc_port": a.rpc_port}
    ssh.put_text(json.dumps(record), f"{d_abs}/deployed.json")
    ssh.run(f"cd {d}/venvs && for v in *; do [ \"$v\" = {fp[:12]} ] || rm -rf \"$v\"; done; true", timeout_s=120)


def _start_service(ssh: SSH, device: Device, p: Probe, report: DeployReport) -> None:
    a = device.agent
    d = _remote_path(a.install_dir)
    if a.mode == "container":
        _run_container(ssh, device, p)
    elif p.systemd_user:
        ssh.run(f"systemctl --user daemon-reload && systemctl --user enable {SERVICE}.service && "
                f"systemctl --user restart {SERVICE}.service", timeout_s=60)
        rc, _, _ = ssh.run("loginctl enable-linger \"$(id -un)\"", check=False, timeout_s=20)
        if rc != 0:
            report.warnings.append("loginctl enable-linger failed: the agent may stop when the last session ends")
        report.actions.append(f"started systemd --user unit {SERVICE}.service")
    else:
        ssh.run(stop_script(a.install_dir), timeout_s=30)
        ssh.run(f"cd {d}; setsid nohup sh {d}/supervise.sh > /dev/null 2>&1 < /dev/null &", timeout_s=30)
        report.actions.append("started the supervisor script (pidfile supervisor.pid, agent.pid; log agent.log)")


def _service_running(ssh: SSH, device: Device, p: Probe) -> bool:
    if device.agent.mode == "container":
        rc, out, _ = ssh.run(f"{p.engines[0]} inspect -f '{{{{.State.Running}}}}' {SERVICE}-{device.agent.rpc_port}",
                             check=False)
        return rc == 0 and out.strip() == "true"
    if p.systemd_user:
        rc, _, _ = ssh.run(f"systemctl --user is-active --quiet {SERVICE}.service", check=False)
        return rc == 0
    return p.supervisor_alive


def wait_healthy(ssh: SSH, device: Device, timeout_s: float, log: Log) -> dict[str, Any]:
    """Ping + device_info through a tunnel over ``ssh``; retry until the agent answers or time runs out."""
    from .tunnel import ssh_agent_session  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    last = ""
    attempt = 0
    while time.monotonic() < deadline and attempt < 200:
        attempt += 1
        try:
            left = max(5.0, deadline - time.monotonic())
            with ssh_agent_session(device, Timeouts(connect_s=min(30.0, left), info_s=max(30.0, min(120.0, left)))) \
                    as client:
                ping = client.ping()
                info = client.device_info()
            versions = {"agent": ping.get("agent"), "protocol": ping.get("protocol"), "tvm": info.tvm_version,
                        "tvm_runtime_only": info.tvm_runtime_only, "python": info.python, "numpy": info.numpy_version,
                        "arch": info.arch, "hostname": info.hostname, "cpu": info.cpu_model,
                        "cores": info.cores_logical, "gpus": info.gpus}
            log(f"{device.name}: healthy: agent {versions['agent']} (protocol {versions['protocol']}), TVM "
                f"{versions['tvm']} {'runtime-only' if info.tvm_runtime_only else 'FULL (compiler present)'}, "
                f"Python {info.python}, {info.arch}")
            return versions
        except (HostKeyChanged, HostKeyUnknown, AuthFailed):
            raise
        except SSHError as exc:
            if not ssh.alive():
                raise
            last = str(exc)
        except AgentError as exc:
            last = str(exc)
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    _, tail, _ = ssh.run(f"tail -n 5 {_remote_path(device.agent.install_dir)}/agent.log 2>/dev/null; true",
                         check=False, timeout_s=20)
    raise DeployError(f"{device.name}: the agent did not become healthy within {timeout_s:g} s: {last}"
                      + (f"; agent.log: {' | '.join(tail.strip().splitlines())}" if tail.strip() else ""))


# ---------------------------------------------------------------------------------------------- secret
def _host_secret_path(device: Device) -> Path:
    from ..transport import secret_path  # noqa: PLC0415

    return secret_path(device.name)


def _provision_secret(ssh: SSH, device: Device, p: Probe, log: Log) -> bool:
    """The device's agent gets the host's secret for it (made here on the first deploy): ``install_dir``
    (0700) / ``agent.secret`` and ``agent.env``, both 0600, created empty with that mode before the secret is
    written. Returns True when the device's copy changed (the running agent must be restarted)."""
    path = _host_secret_path(device)
    if not path.is_file():
        auth.write_secret(path)
        log(f"{device.name}: made a new agent secret {path} (mode 0600)")
    try:
        secret = auth.read_secret_file(path).hex()
    except auth.AuthError as exc:
        raise DeployError(f"{device.name}: {exc}") from None
    a = device.agent
    d = _remote_path(a.install_dir)
    d_abs = a.install_dir.replace("~", p.home, 1) if a.install_dir.startswith("~") else a.install_dir
    want = {SECRET_FILE: secret + "\n", ENV_FILE: f"{auth.SECRET_ENV}={secret}\n"}
    _, out, _ = ssh.run(f"cd {d} 2>/dev/null && sha256sum {SECRET_FILE} {ENV_FILE} 2>/dev/null; true", check=False)
    have = {w[1]: w[0] for w in (line.split() for line in out.splitlines()) if len(w) == 2}
    todo = [n for n, text in want.items() if have.get(n) != hashlib.sha256(text.encode()).hexdigest()]
    if not todo:
        return False
    ssh.run(f"umask 077 && mkdir -p {d} && chmod 700 {d} && " + " && ".join(f": > {d}/{n}.part" for n in todo))
    for name in todo:
        ssh.put_text(want[name], f"{d_abs}/{name}.part", 0o600)
        ssh.run(f"chmod 600 {d}/{name}.part && mv -f {d}/{name}.part {d}/{name}")
    return True


# ---------------------------------------------------------------------------------------------- containers
def _image_id(ssh: SSH, device: Device, p: Probe, pull: bool = True) -> str:
    image = device.agent.image
    if not image:
        raise DeployError(f"{device.name}: agent.mode is container but agent.image is not set")
    engine = p.engines[0]
    rc, out, _ = ssh.run(f"{engine} image inspect -f '{{{{.Id}}}}' {shlex.quote(image)}", check=False, timeout_s=60)
    if rc != 0 and not pull:
        return "(not on the device: would pull)"
    if rc != 0:
        rc, _, err = ssh.run(f"{engine} pull {shlex.quote(image)}", check=False, timeout_s=600)
        if rc != 0:
            raise DeployError(f"{device.name}: image {image} is not on the device and `{engine} pull` failed: "
                              f"{err.strip().splitlines()[-1:] or ''}")
        rc, out, _ = ssh.run(f"{engine} image inspect -f '{{{{.Id}}}}' {shlex.quote(image)}", timeout_s=60)
    return out.strip()


def _run_container(ssh: SSH, device: Device, p: Probe) -> None:
    a = device.agent
    engine = p.engines[0]
    name = f"{SERVICE}-{a.rpc_port}"
    gpu = ""
    if device.is_cuda:
        gpu = "--gpus all " if engine == "docker" else "--device nvidia.com/gpu=all "
    env_file = f"{_remote_path(a.install_dir)}/{ENV_FILE}"  # the secret: never on a command line
    ssh.run(f"{engine} rm -f {name} >/dev/null 2>&1; {engine} run -d --name {name} --restart=always --network host "
            f"{gpu}-e TVM_USE_RUNTIME_LIB=1 --env-file {env_file} --entrypoint dlas-agent "
            f"{shlex.quote(a.image or '')} serve "
            f"--host 127.0.0.1 --port {a.rpc_port} --threads {device.threads}", timeout_s=120)


def _install_container(ssh: SSH, device: Device, p: Probe, fp: str, report: DeployReport, log: Log) -> None:
    log(f"{device.name}: starting container {device.agent.image}")
    _run_container(ssh, device, p)
    d = _remote_path(device.agent.install_dir)
    ssh.run(f"mkdir -p {d}")
    d_abs = device.agent.install_dir.replace("~", p.home, 1) if device.agent.install_dir.startswith("~") \
        else device.agent.install_dir
    ssh.put_text(json.dumps({"fingerprint": fp, "image": device.agent.image, "deployed_at": time.time()}),
                 f"{d_abs}/deployed.json")
    report.actions.append(f"started container {SERVICE}-{device.agent.rpc_port} from {device.agent.image}")
