"""Agent container images: build, push and list ``dlas-agent:<flavor>`` with Docker or podman.

A build needs no package index: the context gets the offline agent bundle for the image's platform
(:mod:`dlas_host.bundle`), a freshly built dlas-agent wheel and a pip wheel; the Dockerfiles in ``docker/``
install from those. Where no registry can be pulled from, ``build_base`` makes the base image itself
(``debootstrap --variant=minbase`` + python3, imported as ``dlas-base:bookworm[-arm64]``).

``run_command`` is what ``dlas-host deploy`` runs on a device whose agent mode is ``container``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from . import arches
from .errors import DlasError
from .paths import PROJECT_ROOT

DOCKER_DIR = PROJECT_ROOT / "docker"
IMAGE_REPO = "dlas-agent"
BASE_REPO = "dlas-base"
DEFAULT_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("DLAS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the debootstrap base carries besides minbase: the interpreter (with its stdlib) and useradd.
BASE_PACKAGES = ["python3", "passwd"]
# Removed from the base root filesystem, as debian:*-slim does (package caches, docs, man pages, locales).
BASE_PRUNE = ["var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*", "usr/share/doc/*",
              "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*", "var/log/*.log", "var/log/apt/*",
              "var/cache/debconf/*-old", "var/lib/dpkg/*-old",
              # glibc iconv modules (8 MB amd64, 20 MB arm64): Python has its own codecs; UTF-8/Latin-1 are built in.
              "usr/lib/*-linux-gnu/gconv/*.so"]
PODMAN_ULIMITS = ["--ulimit", "nofile=10000:10000", "--ulimit", "nproc=4096:4096"]

Progress = Callable[[str], None]


class ImageError(DlasError, RuntimeError):
    """An image could not be built, pushed or listed (no engine, engine failure, missing base)."""


@dataclass(frozen=True)
class Flavor:
    name: str
    dockerfile: str
    arch: str  # bundle arch: a name in arches.ARCHES
    python: str  # CPython version of the base image's python3 (the bundle must match it)
    base_image: str  # default base for online builds (the Dockerfile's BASE_IMAGE default)
    cuda: bool
    description: str

    @property
    def tag(self) -> str:
        return f"{IMAGE_REPO}:{self.name}"

    @property
    def platform(self) -> str:
        return docker_platform(self.arch)

    @property
    def oci_arch(self) -> str:
        return deb_arch(self.arch)


# One CPU-only flavor per row of the arch table (all built from Dockerfile.cpu), then the GPU flavors.
FLAVORS: dict[str, Flavor] = {f.name: f for f in [
    *(Flavor(a.cpu_flavor, "Dockerfile.cpu", a.name, "3.11", "debian:bookworm-slim", False, a.cpu_flavor_description)
      for a in arches.ARCHES.values()),
    Flavor("cuda-x86_64", "Dockerfile.cuda", "x86_64", "3.12", "nvidia/cuda:13.0.0-base-ubuntu24.04", True,
           "x86_64 servers with NVIDIA GPUs (H100 class); needs the NVIDIA container toolkit"),
    Flavor("jetson", "Dockerfile.jetson", "aarch64", "3.12", "nvcr.io/nvidia/l4t-jetpack:r38.2.0", True,
           "NVIDIA Jetson (JetPack 7 / L4T r38, CUDA 13); needs the NVIDIA container runtime"),
]}


def _cpu_flavors() -> list[str]:
    return [f.name for f in FLAVORS.values() if not f.cuda]


def flavor(name: str) -> Flavor:
    try:
        return FLAVORS[name]
    except KeyError:
        raise ImageError(f"unknown image flavor {name!r}; known: {', '.join(FLAVORS)}") from None


def cache_dir() -> Path:
    """Where base tarballs and the debootstrap package cache live (outlives test data dirs)."""
    env = os.environ.get("DLAS_IMAGE_CACHE")
    base = Path(env).expanduser() if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
        "dlas-lab" / "images"
    base.mkdir(parents=True, exist_ok=True)
    return base


# --- engines -----------------------------------------------------------------------------------------------------

@dataclass
class Engine:
    """A container CLI: ``podman`` (preferred where both exist: it needs no daemon) or ``docker``."""

    name: str  # "podman" | "docker"
    exe: str
    global_args: list[str] = field(default_factory=list)

    @property
    def is_podman(self) -> bool:
        return self.name == "podman"

    def cmd(self, *args: str) -> list[str]:
        return [self.exe, *self.global_args, *args]

    def run(self, *args: str, check: bool = True, capture: bool = True, timeout: float | None = None,
            input_file: Path | None = None) -> subprocess.CompletedProcess[str]:
        cmd = self.cmd(*args)
        stdin = open(input_file, "rb") if input_file else None  # noqa: SIM115 - closed below
        try:
            proc = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout, stdin=stdin)
        except subprocess.TimeoutExpired:
            raise ImageError(f"{shlex.join(cmd[:4])} ...: no result within {timeout:g} s") from None
        finally:
            if stdin:
                stdin.close()
        if check and proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:] if capture else []
            raise ImageError(f"{shlex.join(cmd[:6])}{' ...' if len(cmd) > 6 else ''} failed "
                             f"(exit {proc.returncode}): {' | '.join(tail) or 'see output above'}")
        return proc

    def run_args(self) -> list[str]:
        """Extra ``run``/``build`` flags this engine needs here (podman: the ulimits of rootful labs)."""
        return list(PODMAN_ULIMITS) if self.is_podman and os.geteuid() == 0 else []


def _podman_global_args() -> list[str]:
    """runc + cgroupfs where podman's defaults fail (no systemd as PID 1, crun broken): see fleet-lab notes.

    ``DLAS_PODMAN_ARGS`` overrides (empty string: podman's own defaults)."""
    env = os.environ.get("DLAS_PODMAN_ARGS")
    if env is not None:
        return shlex.split(env)
    args: list[str] = []
    if shutil.which("runc"):
        args += ["--runtime", "runc"]
    if not Path("/run/systemd/system").is_dir():
        args += ["--cgroup-manager", "cgroupfs"]
    return args


def detect_engine(prefer: str | None = None) -> Engine:
    """``prefer`` (or ``DLAS_CONTAINER_ENGINE``), else podman, else docker."""
    prefer = prefer or os.environ.get("DLAS_CONTAINER_ENGINE") or None
    order = [prefer] if prefer else ["podman", "docker"]
    for name in order:
        if name not in ("podman", "docker"):
            raise ImageError(f"unknown container engine {name!r}: use podman or docker")
        exe = shutil.which(name)
        if exe:
            return Engine(name, exe, _podman_global_args() if name == "podman" else [])
    raise ImageError(f"no container engine found ({' or '.join(order)} not on PATH)")


# --- base image (offline) ------------------------------------------------------------------------------------------

def base_tag(arch: str = "x86_64", suite: str = DEFAULT_SUITE) -> str:
    return f"{BASE_REPO}:{suite}{arches.get(arch).base_tag_suffix}"


def docker_platform(arch: str) -> str:
    """``linux/amd64`` for x86_64 and so on (from the arch table)."""
    return arches.get(arch).docker_platform


def deb_arch(arch: str) -> str:
    """dpkg / debootstrap / OCI name of ``arch``: ``amd64`` for x86_64 and so on."""
    return arches.get(arch).deb_arch


_debian_arch = deb_arch  # older name, kept for callers


def _host_arch() -> str:
    return arches.host()


def _sh(cmd: Sequence[str], what: str, timeout: float = 1800) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ImageError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}")


def build_base_tarball(arch: str = "x86_64", suite: str = DEFAULT_SUITE, refresh: bool = False,
                       progress: Progress = lambda _m: None) -> Path:
    """Root filesystem tarball of a slim Debian with python3, made by debootstrap (root only); cached."""
    out = cache_dir() / f"{BASE_REPO}-{suite}-{deb_arch(arch)}.tar"
    if out.is_file() and not refresh:
        return out
    if os.geteuid() != 0:
        raise ImageError("building the base image needs root (debootstrap); run as root or use an online base")
    if not shutil.which("debootstrap"):
        raise ImageError("debootstrap not found: apt-get install debootstrap")
    foreign = arch != _host_arch()
    if foreign and not Path(arches.get(arch).binfmt_path).exists():
        raise ImageError(f"a {arch} base on {_host_arch()} needs qemu binfmt: apt-get install qemu-user-static "
                         "binfmt-support")
    debs = cache_dir() / "debs" / f"{suite}-{deb_arch(arch)}"
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dlas-base-", dir=cache_dir()) as tmp:
        root = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--arch={deb_arch(arch)}",
               f"--include={','.join(BASE_PACKAGES)}", f"--cache-dir={debs}"]
        if foreign:
            cmd.append("--foreign")
        progress(f"debootstrap {suite} {deb_arch(arch)} (minbase + python3)")
        _sh(cmd + [suite, str(root), DEBIAN_MIRROR], "debootstrap")
        if foreign:
            progress("debootstrap second stage under qemu")
            _sh(["chroot", str(root), "/debootstrap/debootstrap", "--second-stage"], "debootstrap --second-stage")
        _prune_rootfs(root)
        progress("packing the root filesystem")
        partial = out.with_suffix(".tar.partial")
        _sh(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(partial), "."], "tar")
        partial.replace(out)
    return out


def _prune_rootfs(root: Path) -> None:
    import glob  # noqa: PLC0415

    for pattern in BASE_PRUNE:
        for path in glob.glob(str(root / pattern)):
            p = Path(path)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    # Keep apt usable (online users may add packages) but keep no package lists in the image.
    (root / "etc/apt/apt.conf.d/docker-clean").write_text(
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n')
    (root / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/dpkg/dpkg.cfg.d/docker-excludes").write_text(
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\n"
        "path-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\n")
    (root / "etc/hostname").write_text("localhost\n")


def build_base(arch: str = "x86_64", suite: str = DEFAULT_SUITE, engine: Engine | None = None, refresh: bool = False,
               progress: Progress = lambda _m: None) -> str:
    """Import the debootstrap base as ``dlas-base:<suite>[-arm64]`` (skipped when the engine has it)."""
    engine = engine or detect_engine()
    tag = base_tag(arch, suite)
    if not refresh and image_exists(engine, tag):
        return tag
    tarball = build_base_tarball(arch, suite, refresh=refresh, progress=progress)
    progress(f"importing {tarball.name} as {tag}")
    args = ["import", "--change", "CMD [\"/bin/bash\"]"]
    if engine.is_podman:
        args += ["--arch", deb_arch(arch)]
    else:
        args += ["--platform", docker_platform(arch)]
    engine.run(*args, "-", tag, input_file=tarball, timeout=600)
    return tag


def image_exists(engine: Engine, ref: str) -> bool:
    return engine.run("image", "inspect", ref, check=False).returncode == 0


# --- build context and build ---------------------------------------------------------------------------------------

def _pip_wheel(dest: Path) -> Path:
    """A pip wheel for the build (pip runs straight from it): ensurepip's, Debian's, else downloaded."""
    import ensurepip  # noqa: PLC0415

    candidates = sorted((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))
    candidates += sorted(Path("/usr/share/python-wheels").glob("pip-*.whl"))
    candidates += sorted(cache_dir().glob("pip-*.whl"))
    if not candidates:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                               "-d", str(cache_dir()), "pip"], capture_output=True, text=True)
        candidates = sorted(cache_dir().glob("pip-*.whl"))
        if proc.returncode != 0 or not candidates:
            raise ImageError("no pip wheel found (ensurepip, /usr/share/python-wheels) and none could be downloaded")
    src = candidates[-1]
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest / "pip.whl")  # a fixed name the Dockerfiles run (python3 pip.whl/pip ...)
    return dest / "pip.whl"


def cached_wheelhouse(arch: str, python: str = "3.11") -> Path:
    """The bundle's third-party wheels kept in :func:`cache_dir` (survives per-run data dirs, e.g. tests).

    Filled once from :func:`dlas_host.bundle.build_bundle` (the data dir's bundle, else a download)."""
    from .bundle import build_bundle  # noqa: PLC0415

    target = cache_dir() / "wheels" / f"{arch}-cp{python.replace('.', '')}"
    if any(target.glob("apache_tvm-*.whl")):
        return target
    source = build_bundle(arch, python)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for whl in source.glob("*.whl"):
        if not whl.name.startswith("dlas_agent-"):
            shutil.copy2(whl, partial / whl.name)
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)
    return target


def _wheel_version(wheelhouse: Path, dist: str) -> str:
    found = sorted(wheelhouse.glob(f"{dist}-*.whl"))
    return found[-1].name.split("-")[1] if found else "unknown"


def prepare_context(fl: Flavor, context: Path, wheelhouse: Path | None = None) -> dict[str, str]:
    """Fill ``context/wheels`` (bundle wheels, a fresh dlas-agent wheel) and ``context/tools/pip.whl``;
    return the build args."""
    from .bundle import build_agent_wheel, build_bundle  # noqa: PLC0415

    wheels = context / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    source = wheelhouse or build_bundle(fl.arch, fl.python)
    for whl in source.glob("*.whl"):
        if not whl.name.startswith(("dlas_agent-", "pip-")):
            os.link(whl, wheels / whl.name) if _same_fs(whl, wheels) else shutil.copy2(whl, wheels / whl.name)
    if not any(wheels.glob("apache_tvm-*.whl")):
        raise ImageError(f"{source}: no apache-tvm wheel in the bundle for {fl.arch}/py{fl.python}")
    agent_wheel = build_agent_wheel(wheels)
    _pip_wheel(context / "tools")
    from dlas_agent.protocol import PROTOCOL_VERSION  # noqa: PLC0415

    return {
        "AGENT_VERSION": agent_wheel.name.split("-")[1],
        "TVM_VERSION": _wheel_version(wheels, "apache_tvm"),
        "PROTOCOL_VERSION": str(PROTOCOL_VERSION),
        "VCS_REF": _git_rev(),
        "FLAVOR": fl.name,
    }


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False


def _git_rev() -> str:
    proc = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return proc.stdout.strip() + ("-dirty" if dirty else "")


@dataclass
class BuildResult:
    flavor: str
    tag: str
    base_image: str
    build_s: float
    size_bytes: int
    labels: dict[str, str]


def build(name: str, *, base_image: str | None = None, base_from_debootstrap: bool = False,
          engine: Engine | None = None, wheelhouse: Path | None = None, tag: str | None = None,
          no_cache: bool = False, progress: Progress = lambda _m: None, stream: bool = False) -> BuildResult:
    """Build one flavor; ``base_from_debootstrap`` builds/uses the local ``dlas-base`` image (offline)."""
    fl = flavor(name)
    engine = engine or detect_engine()
    if base_from_debootstrap:
        if fl.cuda:
            raise ImageError(f"{fl.name} needs an NVIDIA base image ({fl.base_image}); the debootstrap base has "
                             "no CUDA runtime")
        base_image = build_base(fl.arch, engine=engine, progress=progress)
    base_image = base_image or fl.base_image
    dockerfile = DOCKER_DIR / fl.dockerfile
    if not dockerfile.is_file():
        raise ImageError(f"{dockerfile}: Dockerfile missing")
    tag = tag or fl.tag
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlas-image-ctx-", dir=cache_dir()) as tmp:
        context = Path(tmp)
        progress(f"preparing the build context (agent bundle for {fl.arch}/py{fl.python})")
        build_args = prepare_context(fl, context, wheelhouse)
        build_args["BASE_IMAGE"] = _local_ref(engine, base_image)
        args = ["build", "-f", str(dockerfile), "-t", tag, "--platform", fl.platform]
        if engine.is_podman:
            # docker format keeps HEALTHCHECK (OCI image configs have no field for it); never pull a local base.
            args += ["--format", "docker", "--pull=never" if _is_local(engine, base_image) else "--pull=missing",
                     "--layers", *engine.run_args()]
        if no_cache:
            args.append("--no-cache")
        for key, value in build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        progress(f"{engine.name} build {tag} (base {base_image})")
        engine.run(*args, str(context), capture=not stream, timeout=3600)
    build_s = time.perf_counter() - t0
    info = inspect(engine, tag)
    return BuildResult(fl.name, tag, base_image, build_s, info["size"], info["labels"])


def _is_local(engine: Engine, ref: str) -> bool:
    """A base that exists only on this machine (never to be pulled): the debootstrap base."""
    return ref.removeprefix("localhost/").startswith(f"{BASE_REPO}:")


def _local_ref(engine: Engine, ref: str) -> str:
    """podman names unqualified local images localhost/NAME; without it podman would search registries."""
    if engine.is_podman and ref.startswith(f"{BASE_REPO}:"):
        return f"localhost/{ref}"
    return ref


def inspect(engine: Engine, ref: str) -> dict[str, Any]:
    proc = engine.run("image", "inspect", ref)
    data = json.loads(proc.stdout)[0]
    config = data.get("Config") or data.get("config") or {}
    return {"size": int(data.get("Size", 0)), "labels": config.get("Labels") or {},
            "arch": data.get("Architecture", ""),
            "healthcheck": config.get("Healthcheck") or data.get("Healthcheck"),  # docker | podman
            "entrypoint": config.get("Entrypoint"), "user": config.get("User", ""), "id": data.get("Id", "")}


# --- list and push ------------------------------------------------------------------------------------------------

@dataclass
class ImageRow:
    ref: str
    id: str
    size_bytes: int
    created: str
    arch: str
    labels: dict[str, str]


def list_images(engine: Engine | None = None, include_base: bool = True) -> list[ImageRow]:
    engine = engine or detect_engine()
    repos = [IMAGE_REPO] + ([BASE_REPO] if include_base else [])
    rows: list[ImageRow] = []
    proc = engine.run("images", "--format", "json" if engine.is_podman else "{{json .}}")
    text = proc.stdout.strip()
    entries: list[dict[str, Any]] = json.loads(text) if text.startswith("[") else \
        [json.loads(line) for line in text.splitlines() if line.strip()]
    for entry in entries:
        names = entry.get("Names") or ([f"{entry.get('Repository')}:{entry.get('Tag')}"]
                                       if entry.get("Repository") else [])
        for ref in names:
            short = ref.removeprefix("localhost/")
            repo = short.rsplit(":", 1)[0].split("/")[-1]
            if repo not in repos:
                continue
            image_id = entry.get("Id") or entry.get("ID") or ""
            try:
                info = inspect(engine, image_id or ref)
            except ImageError:
                info = {"size": entry.get("Size", 0), "labels": {}, "arch": ""}
            created = entry.get("CreatedAt") or entry.get("CreatedSince") or ""
            if isinstance(entry.get("Created"), (int, float)):
                created = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["Created"]))
            rows.append(ImageRow(short, image_id[:12], int(info["size"]), str(created), info.get("arch", ""),
                                 info["labels"]))
    return sorted(rows, key=lambda r: r.ref)


_REGISTRY_RE = re.compile(r"^[A-Za-z0-9.-]+(:\d+)?(/[A-Za-z0-9._/-]+)?$")


def push(name_or_ref: str, registry: str, engine: Engine | None = None, tls_verify: bool | None = None) -> str:
    """Tag ``dlas-agent:<flavor>`` (or any local ref) as ``REGISTRY/dlas-agent:<tag>`` and push it."""
    engine = engine or detect_engine()
    registry = registry.rstrip("/")
    if not _REGISTRY_RE.match(registry):
        raise ImageError(f"bad registry {registry!r}: expected HOST[:PORT][/NAMESPACE]")
    ref = FLAVORS[name_or_ref].tag if name_or_ref in FLAVORS else name_or_ref
    if not image_exists(engine, ref):
        raise ImageError(f"no local image {ref}: build it first (dlas-host images build)")
    remote = f"{registry}/{ref.removeprefix('localhost/').split('/')[-1]}"
    engine.run("tag", ref, remote)
    host = registry.split("/")[0].split(":")[0]
    insecure = host in ("localhost", "127.0.0.1", "::1") if tls_verify is None else not tls_verify
    args = ["push"]
    if engine.is_podman:
        args += [f"--tls-verify={'false' if insecure else 'true'}", "--format", "v2s2"]
    engine.run(*args, remote, timeout=3600)
    return remote


# --- running the agent image (used by deploy) -----------------------------------------------------------------------

def run_command(image: str, rpc_port: int = 9190, engine: str = "docker", *, name: str = "dlas-agent",
                threads: int = 0, tracker: str | None = None, key: str = "dlas", gpus: bool = False,
                jetson: bool = False, network: str = "publish", restart: str = "unless-stopped",
                extra_env: dict[str, str] | None = None, detach: bool = True,
                env_file: str | None = None) -> list[str]:
    """The command line that starts the agent container on a device (for ``dlas-host deploy``).

    ``env_file``: a file on the device (mode 0600) holding ``DLAS_AGENT_SECRET=<hex>``, the agent's secret
    (``dlas-host deploy`` writes it to ``install_dir/agent.env``); passed as ``--env-file`` so the secret never
    appears on a command line. The agent refuses to start without a secret. None: the caller passes it.

    ``network="publish"``: the agent listens on the container's network and the port is published on the
    device's loopback only (127.0.0.1:PORT), so it is reachable through the SSH tunnel and nowhere else.
    ``network="host"``: the container shares the device's network; the agent binds 127.0.0.1 itself.
    ``gpus``: NVIDIA GPUs (docker ``--gpus all``; podman via CDI ``--device nvidia.com/gpu=all``);
    ``jetson``: the NVIDIA container runtime of JetPack. Threads 0 = all cores.
    """
    if engine not in ("docker", "podman"):
        raise ImageError(f"unknown container engine {engine!r}: use docker or podman")
    if not 1 <= rpc_port <= 65535:
        raise ImageError(f"bad rpc_port {rpc_port}")
    cmd = [engine, "run"]
    if detach:
        cmd.append("-d")
    cmd += ["--name", name, "--init", "--label", "io.dlas.role=agent"]
    if restart and detach:
        cmd += ["--restart", restart]
    if engine == "podman" and os.geteuid() == 0:
        cmd += list(PODMAN_ULIMITS)
    env = {"DLAS_AGENT_PORT": str(rpc_port), "DLAS_AGENT_KEY": key, "DLAS_AGENT_THREADS": str(threads)}
    if network == "host":
        cmd += ["--network", "host"]
        env["DLAS_AGENT_HOST"] = "127.0.0.1"
    elif network == "publish":
        cmd += ["-p", f"127.0.0.1:{rpc_port}:{rpc_port}"]
        env["DLAS_AGENT_HOST"] = "0.0.0.0"
    else:
        raise ImageError(f"unknown network mode {network!r}: use publish or host")
    if tracker:
        env["DLAS_AGENT_TRACKER"] = tracker
    if gpus:
        cmd += ["--gpus", "all"] if engine == "docker" else ["--device", "nvidia.com/gpu=all"]
    if jetson:
        cmd += ["--runtime", "nvidia"]
    env.update(extra_env or {})
    for k, v in env.items():
        cmd += ["-e", f"{k}={v}"]
    if env_file:
        cmd += ["--env-file", env_file]
    cmd += [image, "serve"]
    return cmd


def stop_command(engine: str = "docker", name: str = "dlas-agent") -> list[str]:
    """Stop and remove the agent container started by :func:`run_command` (``-t``: seconds before SIGKILL)."""
    return [engine, "rm", "-f", "-t", "10", name] if engine == "podman" else [engine, "rm", "-f", name]


def image_contents_check(engine: Engine, ref: str) -> dict[str, Any]:
    """What is inside: torch/compiler/CUDA library present? user? (runs python in the image, no network)."""
    script = (
        "import importlib.util as u, json, os, glob, shutil; "
        "t=os.path.dirname(u.find_spec('tvm').origin); "
        "print(json.dumps({'torch': u.find_spec('torch') is not None, "
        "'compiler_lib': os.path.exists(os.path.join(t,'lib','libtvm_compiler.so')), "
        "'cuda_lib': os.path.exists(os.path.join(t,'lib','libtvm_runtime_cuda.so')), "
        "'cc': [c for c in ('gcc','cc','g++','clang') if shutil.which(c)], "
        "'uid': os.getuid(), 'tvm_libs': sorted(os.listdir(os.path.join(t,'lib')))}))"
    )
    proc = engine.run("run", "--rm", "--network", "none", *engine.run_args(), "--entrypoint", "python3", ref, "-c",
                      script, timeout=300)
    return json.loads(proc.stdout.strip().splitlines()[-1])
