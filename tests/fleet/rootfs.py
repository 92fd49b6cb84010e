"""An arm64 Debian root filesystem for the simulated aarch64 device, built once and cached.

``debootstrap --foreign --arch arm64`` on the host, then the second stage inside the rootfs under
qemu-user (binfmt). The result is cached under a directory keyed by a hash of everything that shapes it,
so later test runs reuse it. Usable as a script: ``python tests/fleet/rootfs.py [CACHE_DIR]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ["python3", "python3-venv", "ca-certificates"]
RECIPE_VERSION = 2  # bump when the build steps change


def cache_root() -> Path:
    env = os.environ.get("DLAS_FLEET_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dlas-fleet-tests"


def rootfs_key() -> str:
    recipe = {"suite": SUITE, "arch": "arm64", "variant": "minbase", "packages": PACKAGES, "v": RECIPE_VERSION}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def binfmt_ready() -> str | None:
    """None when arm64 ELF binaries run here through qemu, else the reason they do not."""
    if shutil.which("qemu-aarch64-static") is None:
        return "qemu-aarch64-static missing (apt-get install qemu-user-static binfmt-support)"
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if not entry.exists():
        if not Path("/proc/sys/fs/binfmt_misc/register").exists():
            subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"],
                           capture_output=True, timeout=20)
        if shutil.which("update-binfmts"):
            subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, timeout=20)
    if not entry.exists() or "enabled" not in entry.read_text():
        return "binfmt_misc has no enabled qemu-aarch64 entry (update-binfmts --enable qemu-aarch64)"
    return None


def ensure_rootfs(cache: Path | None = None, log=print, timeout_s: float = 3600) -> Path:
    """The cached arm64 rootfs (built if absent). Raises RuntimeError with the failing step."""
    cache = cache or cache_root()
    final = cache / f"arm64-{SUITE}-{rootfs_key()}"
    if (final / ".complete").is_file():
        return final
    reason = binfmt_ready()
    if reason:
        raise RuntimeError(reason)
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f".build-{rootfs_key()}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    deadline = time.monotonic() + timeout_s
    t0 = time.monotonic()

    def step(cmd: list[str], what: str) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"rootfs build: out of time before {what}")
        log(f"rootfs: {what}")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        if proc.returncode != 0:
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
            raise RuntimeError(f"rootfs build: {what} failed (exit {proc.returncode}): {' | '.join(tail)}")

    try:
        step(["debootstrap", "--foreign", "--arch", "arm64", "--variant=minbase",
              f"--include={','.join(PACKAGES)}", SUITE, str(work), MIRROR], "debootstrap first stage")
        qemu = shutil.which("qemu-aarch64-static")
        if qemu:  # harmless with the binfmt F flag, needed without it
            shutil.copy2(qemu, work / "usr/bin/qemu-aarch64-static")
        step(["chroot", str(work), "/debootstrap/debootstrap", "--second-stage"], "debootstrap second stage (qemu)")
        step(["chroot", str(work), "/usr/bin/python3", "-c", "import venv, ensurepip, platform; "
              "print(platform.machine())"], "python3 check")
        (work / "etc/hostname").write_text("dlas-arm64-sim\n")
        apt_lists = work / "var/lib/apt/lists"
        shutil.rmtree(work / "var/cache/apt/archives", ignore_errors=True)
        (work / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        if apt_lists.is_dir():
            for item in apt_lists.iterdir():
                if item.is_file():
                    item.unlink()
        (work / ".complete").write_text(json.dumps({"built_s": round(time.monotonic() - t0, 1),
                                                    "key": rootfs_key()}))
        os.chmod(work, 0o755)
        if final.exists():  # another run finished first
            shutil.rmtree(work, ignore_errors=True)
        else:
            work.rename(final)
        log(f"rootfs: ready at {final} in {time.monotonic() - t0:.0f} s")
        return final
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


if __name__ == "__main__":
    print(ensure_rootfs(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
