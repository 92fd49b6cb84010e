"""A simulated device lab built from network namespaces, one sshd per device.

Topology: a "lab" namespace holds a bridge at 10.77.0.1/24 (the host's side: dlas-host dials from inside it
through ``SSHConnection.netns``); each device namespace has one veth into that bridge and an sshd on its
address. Nothing is reachable from, or sent to, the machine's real network. Every device runs as root;
an arm64 device chroots (sshd ``ChrootDirectory``) into an overlay of a cached arm64 rootfs, so everything
it runs executes under qemu-user.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.77.0"
PREFIX = "dlasfl"


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def unavailable_reason() -> str | None:
    """None if this machine can build the lab, else why not."""
    if os.geteuid() != 0:
        return "the simulated fleet needs root (network namespaces, sshd)"
    for tool in ("ip", "nsenter", "ssh-keygen", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install iproute2 util-linux openssh-client iptables)"
    if not Path("/usr/sbin/sshd").exists():
        return "sshd not found (apt-get install openssh-server)"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    proc = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=20)
    if proc.returncode != 0:
        return f"`ip netns add` does not work here: {proc.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20)
    return None


def cleanup_stale() -> None:
    """Remove namespaces left by earlier runs whose test process is gone."""
    out = sh("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"{PREFIX}(\d+)-", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            sh("ip", "netns", "del", name, check=False)


@dataclass
class SimDevice:
    name: str
    netns: str
    ip: str
    root: Path  # per-device working dir on the host
    chroot: Path | None = None  # device filesystem root (arm64 overlay) or None (shares the host's)
    sshd: subprocess.Popen | None = None
    host_key: Path | None = None
    mounts: list[Path] = field(default_factory=list)

    def host_path(self, device_path: str) -> Path:
        """Where a path on the device lies on the host."""
        return Path(str(self.chroot) + device_path) if self.chroot else Path(device_path)


class Lab:
    def __init__(self, workdir: Path) -> None:
        self.id = f"{PREFIX}{os.getpid()}"
        self.workdir = workdir
        self.lab_ns = f"{self.id}-lab"
        self.devices: dict[str, SimDevice] = {}
        self.user_key = workdir / "id_ed25519"
        self.known_hosts = workdir / "known_hosts"
        self._next_ip = 11
        self._overlays: list[Path] = []

    # ------------------------------------------------------------------ build
    def start(self) -> "Lab":
        cleanup_stale()
        self.workdir.mkdir(parents=True, exist_ok=True)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dlas-fleet-test", "-f", str(self.user_key))
        (self.workdir / "authorized_keys").write_text(self.user_key.with_suffix(".pub").read_text())
        self.known_hosts.write_text("")
        sh("ip", "netns", "add", self.lab_ns)
        sh("ip", "-n", self.lab_ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.lab_ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.lab_ns, "addr", "add", f"{SUBNET}.1/24", "dev", "br0")
        sh("ip", "-n", self.lab_ns, "link", "set", "br0", "up")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        return self

    def add_device(self, name: str, chroot: Path | None = None) -> SimDevice:
        ns = f"{self.id}-{name}"
        ip = f"{SUBNET}.{self._next_ip}"
        self._next_ip += 1
        dev = SimDevice(name=name, netns=ns, ip=ip, root=self.workdir / name, chroot=chroot)
        dev.root.mkdir(parents=True, exist_ok=True)
        self.devices[name] = dev
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.lab_ns, "link", "add", f"v-{name}"[:15], "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        sh("ip", "-n", self.lab_ns, "link", "set", f"v-{name}"[:15], "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        if chroot is not None:
            for sub, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--bind", "/dev"]),
                              ("sys", ["--bind", "/sys"])):
                target = chroot / sub
                target.mkdir(exist_ok=True)
                sh("mount", *args, str(target))
                dev.mounts.append(target)
        self.new_host_key(dev)
        self.start_sshd(dev)
        return dev

    def new_host_key(self, dev: SimDevice) -> None:
        key = dev.root / "ssh_host_ed25519_key"
        for p in (key, key.with_suffix(".pub")):
            p.unlink(missing_ok=True)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        dev.host_key = key

    def trust_host_key(self, dev: SimDevice) -> None:
        """Record dev's current host key in known_hosts (replacing an old line)."""
        keytype, b64 = key_pub(dev).split()[:2]
        lines = [ln for ln in self.known_hosts.read_text().splitlines() if not ln.startswith(dev.ip + " ")]
        lines.append(f"{dev.ip} {keytype} {b64}")
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def start_sshd(self, dev: SimDevice) -> None:
        cfg = dev.root / "sshd_config"
        lines = [
            f"ListenAddress {dev.ip}", "Port 22", f"HostKey {dev.host_key}", f"PidFile {dev.root}/sshd.pid",
            f"AuthorizedKeysFile {self.workdir}/authorized_keys", "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            "StrictModes no", "AllowTcpForwarding local", "AllowAgentForwarding no", "X11Forwarding no",
            "PermitTunnel no", "Subsystem sftp internal-sftp", "LogLevel VERBOSE", "MaxStartups 50",
        ]
        if dev.chroot is not None:
            lines.append(f"ChrootDirectory {dev.chroot}")
        cfg.write_text("\n".join(lines) + "\n")
        log = open(dev.root / "sshd.log", "a")
        dev.sshd = subprocess.Popen(["nsenter", f"--net=/run/netns/{dev.netns}", "/usr/sbin/sshd", "-D", "-e",
                                     "-f", str(cfg)], stdout=log, stderr=log, start_new_session=True)
        log.close()
        for _ in range(100):  # up to 10 s for the port
            proc = sh("ip", "netns", "exec", dev.netns, "ss", "-Hltn", f"sport = :22", check=False)
            if dev.ip in proc.stdout:
                return
            if dev.sshd.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"sshd for {dev.name} did not start: {(dev.root / 'sshd.log').read_text()[-500:]}")

    def stop_sshd(self, dev: SimDevice) -> None:
        if dev.sshd is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(dev.sshd.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                dev.sshd.wait(10)
            if dev.sshd.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(dev.sshd.pid, signal.SIGKILL)
                dev.sshd.wait(10)
            dev.sshd = None

    # ------------------------------------------------------------------ faults
    def link(self, dev: SimDevice, up: bool) -> None:
        sh("ip", "-n", dev.netns, "link", "set", "eth0", "up" if up else "down")

    def drop(self, dev: SimDevice, on: bool) -> None:
        sh("ip", "netns", "exec", dev.netns, "iptables", "-A" if on else "-D", "INPUT", "-j", "DROP")

    def agent_pid(self, dev: SimDevice, install_dir: str) -> int:
        return int(dev.host_path(f"{install_dir}/agent.pid").read_text().strip())

    # ------------------------------------------------------------------ teardown
    def stop_agents(self, dev: SimDevice, install_dir: str) -> None:
        for pidfile in ("supervisor.pid", "agent.pid"):
            path = dev.host_path(f"{install_dir}/{pidfile}")
            with contextlib.suppress(OSError, ValueError):
                pid = int(path.read_text().strip())
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, sig)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)

    def close(self) -> None:
        for dev in self.devices.values():
            self.stop_sshd(dev)
            for target in reversed(dev.mounts):
                sh("umount", "-l", str(target), check=False)
            sh("ip", "netns", "del", dev.netns, check=False)
        sh("ip", "netns", "del", self.lab_ns, check=False)
        for base in self._overlays:
            sh("umount", "-l", str(base / "merged"), check=False)
            # never recurse into merged/: if an unmount failed it could still show /dev or /proc
            for sub in ("upper", "work"):
                shutil.rmtree(base / sub, ignore_errors=True)
            with contextlib.suppress(OSError):
                (base / "merged").rmdir()
                base.rmdir()

    def overlay(self, lower: Path) -> Path:
        """A writable per-run overlay of a cached rootfs; sshd's ChrootDirectory needs every path component
        root-owned and not group/world-writable, so it lives beside the cache, not under /tmp."""
        base = lower.parent / f"run-{self.id}"
        for sub in ("merged/proc", "merged/dev", "merged/sys", "merged"):
            if os.path.ismount(base / sub):
                sh("umount", "-l", str(base / sub), check=False)
        for sub in ("upper", "work"):
            shutil.rmtree(base / sub, ignore_errors=True)
        self._overlays.append(base)
        return overlay(lower, base)


def key_pub(dev: SimDevice) -> str:
    assert dev.host_key is not None
    return dev.host_key.with_suffix(".pub").read_text().strip()


def overlay(lower: Path, base: Path) -> Path:
    """A writable overlay of ``lower`` (kept pristine) under ``base``; returns the merged dir."""
    for sub in ("upper", "work", "merged"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    sh("mount", "-t", "overlay", "overlay", "-o",
       f"lowerdir={lower},upperdir={base / 'upper'},workdir={base / 'work'}", str(base / "merged"))
    os.chmod(base / "merged", 0o755)
    return base / "merged"
