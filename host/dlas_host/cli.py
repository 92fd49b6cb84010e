"""``dlas-host``: the host controller's command line."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="DLAS Lab host controller: compile, ship, time and compare DNNs across a device fleet.")
devices_app = typer.Typer(no_args_is_help=True, help="The device registry (devices.yaml).")
results_app = typer.Typer(no_args_is_help=True, help="The results store.")
app.add_typer(devices_app, name="devices")
app.add_typer(results_app, name="results")
from .images import images_app  # noqa: E402
app.add_typer(images_app, name="images")

# Rich assumes 80 columns when stdout is not a terminal (CI logs, pipes); tables need more.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

DevicesOpt = typer.Option(None, "--devices", envvar="DLAS_DEVICES", help="devices.yaml to use")
DbOpt = typer.Option(None, "--db", envvar="DLAS_RESULTS_DB", help="results database (SQLite file)")


class System(str, Enum):
    tvm = "tvm"
    torch = "torch"
    onnxruntime = "onnxruntime"
    torch_compile = "torch_compile"


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Known bad input becomes one red line and a non-zero exit, never a traceback."""
    from .compile import CompileError
    from .devices import DeviceConfigError
    from .lower.policy import PolicyError
    from .toolchain import ToolchainError
    from .transport import AgentError
    from .zoo import ZooError

    try:
        yield
    except (DeviceConfigError, ZooError, PolicyError, CompileError, ToolchainError, AgentError, ValueError,
            FileNotFoundError, LookupError, RuntimeError) as exc:
        fail(str(exc))


@contextmanager
def status(message: str, quiet: bool = False) -> Iterator[callable]:
    if quiet:
        yield lambda _msg: None
        return
    with err.status(message) as spinner:
        yield lambda msg: spinner.update(msg)


def _registry(devices_file: Optional[Path]):
    from .devices import load

    return load(devices_file)


def _store(db: Optional[Path]):
    from .store import ResultStore

    return ResultStore(db)


def parse_block(text: str) -> tuple[int, int]:
    """'8x1' -> (8, 1): a BSR block of rows (output channels) x columns."""
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"BSR block must be RxC like 4x1 or 1x8, got {text!r}") from None
    if r < 1 or c < 1:
        raise ValueError(f"BSR block sizes must be >= 1, got {text!r}")
    return (r, c)


def build_spec(model: str, dataset: str, batch: int, algorithm: str, layout: str, sparse_format: str,
               sparsity: float, quantize: Optional[str], tuning: str, checkpoint: Optional[Path],
               optimized_model: Optional[str], seed: int = 0, bsr_block: str = "4x1"):
    from . import zoo
    from .compile import BuildSpec
    from .lower.policy import LoweringPolicy

    zoo.spec(model), zoo.dataset(dataset)  # validate early, with the list of known names
    if quantize not in (None, "float16", "bfloat16", "int8"):
        raise ValueError(f"unknown quantization {quantize!r}; supported: float16, bfloat16, int8")
    if tuning not in ("untuned", "tuned"):
        raise ValueError(f"unknown tuning {tuning!r}; supported: untuned, tuned")
    policy = LoweringPolicy(algorithm=algorithm, layout=layout, sparse_format=sparse_format, sparsity=sparsity,
                            bsr_block=parse_block(bsr_block))
    return BuildSpec(model=model, dataset=dataset, batch=batch, seed=seed, policy=policy, quantize=quantize,
                     tuning=tuning, checkpoint=str(checkpoint) if checkpoint else None, optimized_model=optimized_model)


# ----------------------------------------------------------------------------------------------- devices
@devices_app.command("list")
def devices_list(devices_file: Optional[Path] = DevicesOpt) -> None:
    """List registered devices."""
    with user_errors():
        registry = _registry(devices_file)
    table = Table(title=f"devices ({registry.path})")
    for col in ("name", "connection", "arch", "target", "threads", "tags", "lock"):
        table.add_column(col)
    locks = _lock_states()
    for dev in registry.devices.values():
        conn = dev.connection
        where = conn.type if conn.type == "local" else f"{conn.type}:{getattr(conn, 'host', '')}"
        table.add_row(dev.name, where, dev.arch, json.dumps(dev.target), str(dev.threads), ",".join(dev.tags),
                      locks.get(dev.name, "free"))
    out.print(table)


def _lock_states() -> dict[str, str]:
    try:
        from .fleet.locks import describe_locks
    except ImportError:
        return {}
    return describe_locks()


@devices_app.command("check")
def devices_check(name: Optional[str] = typer.Argument(None, help="device (default: all)"),
                  devices_file: Optional[Path] = DevicesOpt) -> None:
    """Validate devices.yaml and health-check each device's agent (ping + device info)."""
    from .transport import AgentError, connect

    with user_errors():
        registry = _registry(devices_file)
        chosen = registry.select([name] if name else None)
    bad = 0
    for dev in chosen:
        with status(f"checking {dev.name}"):
            try:
                with connect(dev) as client:
                    ping = client.ping()
                    info = client.device_info()
                out.print(f"[green]ok[/] {dev.name}: agent {ping['agent']} on {info.hostname} ({info.arch}, "
                          f"{info.cpu_model}, {info.cores_logical} cores), TVM {info.tvm_version} "
                          f"{'runtime-only' if info.tvm_runtime_only else 'full'}")
            except AgentError as exc:
                bad += 1
                out.print(f"[red]unreachable[/] {dev.name}: {exc}")
    raise typer.Exit(1 if bad else 0)


# ----------------------------------------------------------------------------------------------- deploy
@app.command("deploy")
def deploy_cmd(
    device: str = typer.Option(..., "--device", help="SSH device from devices.yaml"),
    dry_run: bool = typer.Option(False, "--dry-run", help="probe the device and print the plan; change nothing"),
    accept_new_host_key: bool = typer.Option(False, "--accept-new-host-key",
                                             help="record the key of a host not yet in known_hosts (never a changed one)"),
    force: bool = typer.Option(False, "--force", help="reinstall even if the deployed fingerprint matches"),
    devices_file: Optional[Path] = DevicesOpt,
) -> None:
    """Install or update the agent on a device, start it as a supervised service, health-check it."""
    from .bundle import BundleError
    from .fleet.deploy import deploy

    with user_errors():
        dev = _registry(devices_file).get(device)
        try:
            report = deploy(dev, dry_run=dry_run, accept_new_host_key=accept_new_host_key, force=force,
                            log=lambda msg: err.print(msg, highlight=False, soft_wrap=True))
        except BundleError as exc:
            fail(str(exc))
    for action in report.actions:
        out.print(f"- {action}", highlight=False)
    if not dry_run:
        times = ", ".join(f"{k} {v:.1f} s" for k, v in report.timings_s.items())
        out.print(f"[green]deployed[/] {device} ({'changed' if report.changed else 'unchanged'}; {times})")


# ----------------------------------------------------------------------------------------------- compile/bench
@app.command("compile")
def compile_cmd(
    device: str = typer.Option("local", help="device from devices.yaml"),
    model: str = typer.Option("resnet18"),
    dataset: str = typer.Option("cifar10", help="cifar10 (32x32) or imagenet (224x224)"),
    batch: int = typer.Option(1, min=1),
    algorithm: str = typer.Option("spatial_pack", help="direct | gemm | spatial_pack | stock (TVM's unscheduled default pipeline)"),
    layout: str = typer.Option("NCHW", help="NCHW | NHWC | NCHWc"),
    sparse_format: str = typer.Option("dense", "--sparse-format", help="dense | csr | bsr | coo"),
    bsr_block: str = typer.Option("4x1", "--bsr-block", help="BSR block RxC; match the block of a block-pruned model"),
    sparsity: float = typer.Option(0.0, help="random unstructured weight sparsity for speed studies"),
    quantize: Optional[str] = typer.Option(None, help="float16 | bfloat16 | int8"),
    tuning: str = typer.Option("untuned", help="untuned | tuned"),
    checkpoint: Optional[Path] = typer.Option(None, help="local torch checkpoint (state_dict)"),
    optimized_model: Optional[str] = typer.Option(None, "--model-id", help="stored optimized model id"),
    force: bool = typer.Option(False, help="rebuild even if cached"),
    devices_file: Optional[Path] = DevicesOpt,
) -> None:
    """Compile a model for a device into the artifact cache."""
    from .compile import compile_artifact

    with user_errors():
        dev = _registry(devices_file).get(device)
        spec = build_spec(model, dataset, batch, algorithm, layout, sparse_format, sparsity, quantize, tuning,
                          checkpoint, optimized_model, bsr_block=bsr_block)
        with status(f"compiling {model}/{dataset} for {device}"):
            art = compile_artifact(spec, dev, force=force)
    out.print(f"{'cached' if art.cached else 'built'} {art.path} ({art.size / 2**20:.1f} MiB, sha256 {art.sha256[:16]}, "
              f"compile {art.compile_s:.1f} s)")


@app.command("bench")
def bench_cmd(
    device: str = typer.Option("local", help="device from devices.yaml"),
    model: str = typer.Option("resnet18"),
    dataset: str = typer.Option("cifar10", help="cifar10 (32x32) or imagenet (224x224)"),
    system: System = typer.Option(System.tvm, help="tvm | torch | onnxruntime | torch_compile"),
    batch: int = typer.Option(1, min=1),
    algorithm: str = typer.Option("spatial_pack", help="direct | gemm | spatial_pack | stock (TVM's unscheduled default pipeline)"),
    layout: str = typer.Option("NCHW", help="NCHW | NHWC | NCHWc"),
    sparse_format: str = typer.Option("dense", "--sparse-format", help="dense | csr | bsr | coo"),
    bsr_block: str = typer.Option("4x1", "--bsr-block", help="BSR block RxC; match the block of a block-pruned model"),
    sparsity: float = typer.Option(0.0, help="random unstructured weight sparsity for speed studies"),
    quantize: Optional[str] = typer.Option(None, help="float16 | bfloat16 | int8"),
    tuning: str = typer.Option("untuned", help="untuned | tuned"),
    checkpoint: Optional[Path] = typer.Option(None, help="local torch checkpoint (state_dict)"),
    optimized_model: Optional[str] = typer.Option(None, "--model-id", help="stored optimized model id"),
    prune: Optional[str] = typer.Option(None, help="data-free pruning KIND:SCOPE:l1:AMOUNT, e.g. "
                                        "unstructured:global:l1:0.9 (others: `dlas-host optimize`, then --model-id)"),
    number: int = typer.Option(3, min=1, help="runs per timing sample"),
    repeat: int = typer.Option(10, min=1, help="timing samples"),
    as_json: bool = typer.Option(False, "--json", help="print exactly one JSON object on stdout"),
    devices_file: Optional[Path] = DevicesOpt,
    db: Optional[Path] = DbOpt,
) -> None:
    """Benchmark one configuration on one device and store the result."""
    from .bench import RunOptions, bench_engine, bench_tvm

    with user_errors():
        dev = _registry(devices_file).get(device)
        if prune:
            from .sweep.runner import make_pruned_model

            with status(f"pruning {model}/{dataset} ({prune})"):
                optimized_model = make_pruned_model(model, dataset, prune)
        spec = build_spec(model, dataset, batch, algorithm, layout, sparse_format, sparsity, quantize, tuning,
                          checkpoint, optimized_model, bsr_block=bsr_block)
        store = _store(db)
        opts = RunOptions(number=number, repeat=repeat)
        with status(f"{system.value}: {model}/{dataset} on {device}", quiet=False) as progress:
            if system == System.tvm:
                row = bench_tvm(spec, dev, store, opts, progress)
            else:
                row = bench_engine(system.value, spec, dev, store, opts, progress)
    if as_json:
        print(json.dumps(_row_summary(row)))
    else:
        _print_rows([row.__dict__])
    if row.status == "error":
        if not as_json:
            err.print(f"[red]error:[/] {row.error}")
        raise typer.Exit(1)


def _row_summary(row) -> dict:
    keys = ("status", "error", "device", "model", "dataset", "system", "algorithm", "layout", "sparse_format",
            "sparsity", "quantization", "tuning", "median_ms", "mad_ms", "iqr_ms", "p90_ms", "p99_ms", "n",
            "max_abs_err", "warnings", "artifact_sha256", "run_id", "threads")
    return {k: getattr(row, k) for k in keys}


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _print_rows(rows: list[dict], title: str = "results") -> None:
    table = Table(title=title)
    for col in ("id", "device", "model", "dataset", "system", "algo/layout/fmt", "quant", "tuning", "median ms",
                "IQR ms", "p90 ms", "n", "max|err|", "status"):
        table.add_column(col, overflow="fold")
    for r in rows:
        algo = "-" if r["system"] != "tvm" else f"{r['algorithm']}/{r['layout']}/{r['sparse_format']}"
        st = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['error']}"
        warn = " !" if r.get("warnings") else ""
        table.add_row(str(r.get("id", "")), r["device"], r["model"], r["dataset"], r["system"], algo,
                      r["quantization"], r["tuning"], _fmt(r["median_ms"]) + warn, _fmt(r["iqr_ms"]),
                      _fmt(r["p90_ms"]), str(r["n"]), _fmt(r["max_abs_err"], ".1e"), st)
    out.print(table)


@app.command("quickstart")
def quickstart(
    device: str = typer.Option("local"),
    model: str = typer.Option("resnet18"),
    repeat: int = typer.Option(10, min=1),
    algorithm: str = typer.Option("spatial_pack", help="direct | gemm | spatial_pack | stock (TVM's unscheduled default pipeline)"),
    devices_file: Optional[Path] = DevicesOpt,
    db: Optional[Path] = DbOpt,
) -> None:
    """The main job: compile MODEL for CIFAR-10 and ImageNet sizes, run it on the agent, compare with torch."""
    from .bench import RunOptions, bench_engine, bench_tvm
    from .lower.policy import LoweringPolicy
    from .compile import BuildSpec

    with user_errors():
        dev = _registry(devices_file).get(device)
        store = _store(db)
        rows = []
        for dataset in ("cifar10", "imagenet"):
            spec = BuildSpec(model=model, dataset=dataset, policy=LoweringPolicy(algorithm=algorithm))
            with status(f"{model}/{dataset}") as progress:
                rows.append(bench_tvm(spec, dev, store, RunOptions(repeat=repeat), progress))
                rows.append(bench_engine("torch", spec, dev, store, RunOptions(repeat=repeat), progress))
    _print_rows([r.__dict__ for r in rows], title=f"{model} on {device} (results in {store.path})")
    for tvm_row, torch_row in zip(rows[::2], rows[1::2]):
        if tvm_row.median_ms and torch_row.median_ms:
            out.print(f"{tvm_row.dataset}: TVM {tvm_row.median_ms:.2f} ms vs torch {torch_row.median_ms:.2f} ms "
                      f"= {torch_row.median_ms / tvm_row.median_ms:.2f}x torch speed; max |err| {tvm_row.max_abs_err:.1e}")
    if any(r.status == "error" for r in rows):
        raise typer.Exit(1)


# ----------------------------------------------------------------------------------------------- results
@results_app.command("list")
def results_list(
    limit: int = typer.Option(20, help="newest N rows"),
    model: Optional[str] = None, device: Optional[str] = None, system: Optional[str] = None,
    db: Optional[Path] = DbOpt,
) -> None:
    """Show stored results, newest first."""
    where = {k: v for k, v in (("model", model), ("device", device), ("system", system)) if v}
    with user_errors():
        rows = _store(db).query(where, limit=limit)
    _print_rows(rows)


@results_app.command("export")
def results_export(
    fmt: str = typer.Option("csv", "--format", help="csv | json"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="file (default: stdout)"),
    db: Optional[Path] = DbOpt,
) -> None:
    """Export every stored result as CSV or JSON."""
    with user_errors():
        text = _store(db).export(fmt)
    if output:
        output.write_text(text)
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(text)


# ----------------------------------------------------------------------------------------------- doctor
@app.command("doctor")
def doctor() -> None:
    """Check versions, pins and toolchains; print the fix for each problem."""
    from .doctor import run_checks

    table = Table(title=f"dlas-host {__version__} doctor")
    for col in ("check", "status", "detail / fix"):
        table.add_column(col, overflow="fold")
    failed = 0
    for check in run_checks():
        colour = {"ok": "green", "warn": "yellow", "fail": "red"}[check.status]
        failed += check.status == "fail"
        table.add_row(check.name, f"[{colour}]{check.status}[/]", check.detail)
    out.print(table)
    raise typer.Exit(1 if failed else 0)


def _register_subcommands() -> None:
    from .cli_optimize import optimize
    from .cli_sweep import report, sweep_app
    from .cli_tune import tune, tune_db_app

    app.add_typer(sweep_app, name="sweep")
    app.command("report")(report)
    app.command("optimize")(optimize)
    app.command("tune")(tune)
    app.add_typer(tune_db_app, name="tune-db")


def main() -> None:
    _register_subcommands()
    app()


if __name__ == "__main__":
    main()
