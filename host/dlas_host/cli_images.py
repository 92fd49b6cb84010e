"""``dlas-host images ...``: the command line of :mod:`dlas_host.images` (build, base, push, list, run-command)."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from . import arches
from .cli_common import JsonOpt, emit_json
from .images import (FLAVORS, ImageError, _cpu_flavors, _local_ref, build, build_base, detect_engine, flavor, inspect,
                     list_images, push, run_command)


images_app = typer.Typer(no_args_is_help=True, help="Agent container images (docker/ Dockerfiles, Docker or podman).")
_EngineOpt = typer.Option(None, "--engine", envvar="DLAS_CONTAINER_ENGINE",
                          help="podman or docker (default: podman if installed, else docker)")


def _console(stderr: bool = False) -> Any:
    from rich.console import Console  # noqa: PLC0415

    stream = sys.stderr if stderr else sys.stdout
    # Not a terminal (CI logs, pipes): wide enough that image refs and versions are not cut.
    return Console(stderr=stderr, width=None if stream.isatty() else 160)


def _fail(message: str) -> None:
    _console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@images_app.command("build")
def build_cmd(
    flavors: list[str] = typer.Argument(None, help=f"image flavors: {', '.join(FLAVORS)} (default: cpu-x86_64)"),
    all_cpu: bool = typer.Option(False, "--all-cpu", help=f"build {' and '.join(_cpu_flavors())}"),
    base_from_debootstrap: bool = typer.Option(False, "--base-from-debootstrap",
                                               help="offline: build on the local debootstrap base (root)"),
    base_image: Optional[str] = typer.Option(None, "--base-image", help="override the Dockerfile's BASE_IMAGE"),
    wheelhouse: Optional[Path] = typer.Option(None, "--wheelhouse", help="agent bundle directory to install from"),
    no_cache: bool = typer.Option(False, "--no-cache", help="rebuild every layer"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show the engine's build output"),
    engine_name: Optional[str] = _EngineOpt,
) -> None:
    """Build agent images (tags dlas-agent:<flavor>); the build context gets the offline agent bundle."""
    from .bundle import BundleError  # noqa: PLC0415

    names = list(flavors or []) + (_cpu_flavors() if all_cpu else [])
    names = list(dict.fromkeys(names or ["cpu-x86_64"]))
    err = _console(stderr=True)
    results = []
    try:
        engine = detect_engine(engine_name)
        for name in names:
            flavor(name)
            with err.status(f"building {name}") as spinner:
                results.append(build(name, base_image=base_image, base_from_debootstrap=base_from_debootstrap,
                                     engine=engine, wheelhouse=wheelhouse, no_cache=no_cache, stream=verbose,
                                     progress=lambda m: spinner.update(m)))
            r = results[-1]
            err.print(f"[green]built[/] {r.tag} in {r.build_s:.1f} s: {_mb(r.size_bytes)} (base {r.base_image})")
    except (ImageError, BundleError) as exc:
        _fail(str(exc))
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="built images")
    for col in ("image", "size", "build s", "agent", "tvm", "protocol", "base"):
        table.add_column(col)
    for r in results:
        table.add_row(r.tag, _mb(r.size_bytes), f"{r.build_s:.1f}", r.labels.get("io.dlas.agent.version", ""),
                      r.labels.get("io.dlas.tvm.version", ""), r.labels.get("io.dlas.protocol", ""), r.base_image)
    _console().print(table)


@images_app.command("base")
def base_cmd(
    arch: str = typer.Option("x86_64", "--arch", help=f"{' or '.join(arches.names())} (one foreign to the host "
                                                       "runs under qemu)"),
    refresh: bool = typer.Option(False, "--refresh", help="debootstrap again even if cached"),
    engine_name: Optional[str] = _EngineOpt,
) -> None:
    """Make the offline base image dlas-base:bookworm[-arm64] (debootstrap minbase + python3; root)."""
    if arch not in arches.names():
        _fail(f"unknown arch {arch!r}: use {' or '.join(arches.names())}")
    err = _console(stderr=True)
    try:
        engine = detect_engine(engine_name)
        t0 = time.perf_counter()
        with err.status("building the base image") as spinner:
            tag = build_base(arch, engine=engine, refresh=refresh, progress=lambda m: spinner.update(m))
        size = inspect(engine, _local_ref(engine, tag))["size"]
    except ImageError as exc:
        _fail(str(exc))
    _console().print(f"{tag}: {_mb(size)} ({time.perf_counter() - t0:.1f} s)")


@images_app.command("push")
def push_cmd(
    flavors: list[str] = typer.Argument(..., help="flavors or local image refs to push"),
    registry: str = typer.Option(..., "--registry", "-r", envvar="DLAS_REGISTRY", help="HOST[:PORT][/NAMESPACE]"),
    tls_verify: Optional[bool] = typer.Option(None, "--tls-verify/--no-tls-verify",
                                              help="default: verify, except for a registry on localhost"),
    engine_name: Optional[str] = _EngineOpt,
) -> None:
    """Push built images to a registry as REGISTRY/dlas-agent:<flavor>."""
    try:
        engine = detect_engine(engine_name)
        for name in flavors:
            remote = push(name, registry, engine, tls_verify)
            _console().print(f"[green]pushed[/] {remote}")
    except ImageError as exc:
        _fail(str(exc))


@images_app.command("list")
def list_cmd(
    as_json: bool = JsonOpt,
    engine_name: Optional[str] = _EngineOpt,
) -> None:
    """Agent (and base) images on this machine, with sizes and versions."""
    try:
        rows = list_images(detect_engine(engine_name))
    except ImageError as exc:
        _fail(str(exc))
    if as_json:
        emit_json([{"image": r.ref, "id": r.id, "size_bytes": r.size_bytes, "created": r.created,
                    "arch": r.arch, "labels": r.labels} for r in rows])
        return
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="DLAS images")
    for col in ("image", "size", "arch", "agent", "tvm", "protocol", "created", "id"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.ref, _mb(r.size_bytes), r.arch, r.labels.get("io.dlas.agent.version", ""),
                      r.labels.get("io.dlas.tvm.version", ""), r.labels.get("io.dlas.protocol", ""), r.created, r.id)
    _console().print(table)


@images_app.command("run-command")
def run_command_cmd(
    image: str = typer.Argument("cpu-x86_64", help="flavor or image ref"),
    port: int = typer.Option(9190, "--port", help="agent RPC port (published on the device's 127.0.0.1)"),
    engine_name: str = typer.Option("docker", "--engine", help="the device's engine: docker or podman"),
    threads: int = typer.Option(0, "--threads"),
    host_network: bool = typer.Option(False, "--host-network", help="--network host instead of publishing"),
    env_file: str = typer.Option("~/.dlas-agent/agent.env", "--env-file",
                                 help="file on the device with DLAS_AGENT_SECRET=<hex> (mode 0600; deploy writes it)"),
) -> None:
    """Print the command that starts the agent container on a device (what deploy runs)."""
    fl = FLAVORS.get(image)
    try:
        cmd = run_command(fl.tag if fl else image, port, engine_name, threads=threads,
                          gpus=bool(fl and fl.cuda and fl.name != "jetson"), jetson=bool(fl and fl.name == "jetson"),
                          network="host" if host_network else "publish", env_file=env_file)
    except ImageError as exc:
        _fail(str(exc))
    words = [shlex.quote(a) for a in cmd]
    if env_file.startswith("~/") and shlex.quote(env_file[2:]) == env_file[2:]:
        words[cmd.index("--env-file") + 1] = env_file  # unquoted: the device's shell expands ~
    print(" ".join(words))
