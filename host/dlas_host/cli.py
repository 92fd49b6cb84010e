"""``dlas-host``: the host controller's command line."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

import typer
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from . import __version__, dimensions
from .cli_common import (DbOpt, DevicesOpt, JsonOpt, build_spec, dim_option, emit_json, err, fail, out, status,
                         user_errors)
from .cli_common import registry_of as _registry
from .cli_common import store_of as _store
from .errors import DlasError

if TYPE_CHECKING:
    from .store import ResultStore

class _Group(TyperGroup):
    """The root group: a ``DlasError`` from any command (wrapped in user_errors() or not) is one error line."""

    def invoke(self, ctx):  # noqa: ANN001, ANN201
        try:
            return super().invoke(ctx)
        except DlasError as exc:
            fail(str(exc))


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="DLAS Lab host controller: compile, ship, time and compare DNNs across a device fleet.")
devices_app = typer.Typer(no_args_is_help=True, help="The device registry (devices.yaml).")
results_app = typer.Typer(no_args_is_help=True, help="The results store.")
app.add_typer(devices_app, name="devices")
app.add_typer(results_app, name="results")
from .cli_images import images_app  # noqa: E402
app.add_typer(images_app, name="images")



# the --system choices: generated from the system dimension (tvm + the registered engines)
System = Enum("System", {name: name for name in dimensions.get("system").known()}, type=str)


# ----------------------------------------------------------------------------------------------- devices
@devices_app.command("list")
def devices_list(devices_file: Optional[Path] = DevicesOpt, as_json: bool = JsonOpt) -> None:
    """List registered devices."""
    with user_errors():
        registry = _registry(devices_file)
    locks = _lock_states(list(registry.devices.values()))
    if as_json:
        emit_json([{**dev.model_dump(mode="json"), "lock": locks.get(dev.name, "free")}
                   for dev in registry.devices.values()])
        return
    table = Table(title=f"devices ({registry.path})")
    for col in ("name", "connection", "arch", "target", "threads", "tags", "lock"):
        table.add_column(col)
    for dev in registry.devices.values():
        conn = dev.connection
        where = conn.type if conn.type == "local" else f"{conn.type}:{getattr(conn, 'host', '')}"
        table.add_row(dev.name, where, dev.arch, json.dumps(dev.target), str(dev.threads), ",".join(dev.tags),
                      locks.get(dev.name, "free"))
    out.print(table)


def _lock_states(devices: list[Any]) -> dict[str, str]:
    """Per device name: what holds it, by the name a holder asked for or by what the device physically is
    (every name of this machine shows the timing or compiles that hold it)."""
    try:
        from .fleet.locks import describe_locks
    except ImportError:
        return {}
    return {**describe_locks(), **describe_locks(devices=devices)}


@devices_app.command("check")
def devices_check(name: Optional[str] = typer.Argument(None, help="device (default: all)"),
                  devices_file: Optional[Path] = DevicesOpt, as_json: bool = JsonOpt) -> None:
    """Validate devices.yaml and health-check each device's agent (ping + device info)."""
    from .transport import AgentError, connect

    with user_errors():
        registry = _registry(devices_file)
        chosen = registry.select([name] if name else None)
    checks: list[dict[str, Any]] = []
    for dev in chosen:
        with status(f"checking {dev.name}"):
            try:
                with connect(dev) as client:
                    ping = client.ping()
                    info = client.device_info()
            except AgentError as exc:
                checks.append({"device": dev.name, "ok": False, "error": str(exc)})
                if not as_json:
                    out.print(f"[red]unreachable[/] {dev.name}: {exc}")
                continue
        checks.append({"device": dev.name, "ok": True, "ping": ping, "info": info})
        if not as_json:
            out.print(f"[green]ok[/] {dev.name}: agent {ping['agent']} on {info.hostname} ({info.arch}, "
                      f"{info.cpu_model}, {info.cores_logical} cores), TVM {info.tvm_version} "
                      f"{'runtime-only' if info.tvm_runtime_only else 'full'}")
    if as_json:
        emit_json(checks)
    raise typer.Exit(0 if all(c["ok"] for c in checks) else 1)


# ----------------------------------------------------------------------------------------------- deploy
@app.command("deploy")
def deploy_cmd(
    device: str = typer.Option(..., "--device", help="SSH device from devices.yaml"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan from devices.yaml; connect to nothing"),
    probe_device: bool = typer.Option(False, "--probe", help="with --dry-run: run the read-only probe for an exact plan"),
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
            report = deploy(dev, dry_run=dry_run, probe_device=probe_device, accept_new_host_key=accept_new_host_key, force=force,
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
    model: str = dim_option("model"),
    dataset: str = dim_option("dataset"),
    batch: int = typer.Option(1, min=1),
    algorithm: str = dim_option("algorithm"),
    layout: str = dim_option("layout"),
    sparse_format: str = dim_option("sparse_format"),
    bsr_block: str = dim_option("bsr_block"),
    sparsity: float = typer.Option(0.0, help="random unstructured weight sparsity for speed studies"),
    quantize: str = dim_option("quantization", "--quantize"),
    tuning: str = dim_option("tuning"),
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
    model: str = dim_option("model"),
    dataset: str = dim_option("dataset"),
    system: System = typer.Option(System(dimensions.get("system").default), help=dimensions.get("system").help_text()),
    batch: int = typer.Option(1, min=1),
    algorithm: str = dim_option("algorithm"),
    layout: str = dim_option("layout"),
    sparse_format: str = dim_option("sparse_format"),
    bsr_block: str = dim_option("bsr_block"),
    sparsity: float = typer.Option(0.0, help="random unstructured weight sparsity for speed studies"),
    quantize: str = dim_option("quantization", "--quantize"),
    tuning: str = dim_option("tuning"),
    checkpoint: Optional[Path] = typer.Option(None, help="local torch checkpoint (state_dict)"),
    optimized_model: Optional[str] = typer.Option(None, "--model-id", help="stored optimized model id"),
    prune: Optional[str] = typer.Option(None, help="data-free pruning KIND:SCOPE:l1:AMOUNT, e.g. "
                                        "unstructured:global:l1:0.9 (others: `dlas-host optimize`, then --model-id)"),
    number: int = typer.Option(3, min=1, help="runs per timing sample"),
    repeat: int = typer.Option(10, min=1, help="timing samples"),
    eval_images: Optional[int] = typer.Option(None, "--eval", min=0, help="also measure top-1/top-5 on the device "
                                              "with the timed artifact over N test images (a fixed seeded subset; 0: all)"),
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
        opts = RunOptions(number=number, repeat=repeat, eval_images=eval_images)
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
            "sparse_block", "sparsity", "quantization", "tuning", "built", "median_ms", "mad_ms", "iqr_ms", "p90_ms", "p99_ms", "n",
            "max_abs_err", "top1", "top5", "eval_images", "eval_fingerprint", "warnings", "artifact_sha256", "run_id",
            "threads")
    return {k: getattr(row, k) for k in keys} | {"eval": row.extra.get("eval")}


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
    model: str = dim_option("model"),
    repeat: int = typer.Option(10, min=1),
    algorithm: str = dim_option("algorithm"),
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
    attempts: bool = typer.Option(False, "--attempts", help="also sweep attempts a later row superseded"),
    db: Optional[Path] = DbOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show stored results, newest first."""
    where = {k: v for k, v in (("model", model), ("device", device), ("system", system)) if v}
    with user_errors():
        rows = _store(db).query(where, limit=limit, current=not attempts)
    if as_json:
        emit_json(rows)
    else:
        _print_rows(rows)


def _find_result(store: ResultStore, ident: str) -> dict[str, Any]:
    """The row whose integer id is ``ident``, else the one row whose run_id starts with it (LookupError if none)."""
    from .store import connect

    if ident.isdigit():
        rows = store.query({"id": int(ident)})
        if rows:
            return rows[0]
    with connect(store.path) as db:
        ids = [r["id"] for r in db.execute("SELECT id FROM results WHERE substr(run_id, 1, ?) = ? LIMIT 2",
                                           (len(ident), ident))]
    if not ids:
        raise DlasError(f"no result with id or run_id {ident!r} in {store.path}")
    if len(ids) > 1:
        raise DlasError(f"run_id prefix {ident!r} matches several results; give more characters or the row id")
    return store.query({"id": ids[0]})[0]


def _cell(value: Any) -> Text:
    """A table cell shown literally (no rich markup): '-' for nothing, JSON for lists and dicts."""
    if value is None or value == "":
        return Text("-")
    return Text(json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value))


def _fields_table(title: str, row: dict[str, Any], keys: Iterable[str]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key in keys:
        value = row.get(key)
        if isinstance(value, dict) and value:
            for sub, sub_value in value.items():
                table.add_row(f"{key}.{sub}", _cell(sub_value))
        else:
            table.add_row(key, _cell(value))
    return table


_SHOW_STATS = ("median_ms", "mean_ms", "stdev_ms", "mad_ms", "iqr_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "n",
               "samples_ms", "max_abs_err", "top1", "top5")
_SHOW_PROVENANCE = ("artifact_sha256", "artifact_key", "artifact_bytes", "compile_s", "load_s", "threads",
                    "sweep_id", "job_key", "created_at", "host_env", "device_env", "extra")
_SHOW_ELSEWHERE = {"id", "run_id", "status", "error", "warnings", "built", "manifest"}


@results_app.command("show")
def results_show(
    ident: str = typer.Argument(..., metavar="ID", help="row id (see `results list`) or a unique run_id prefix"),
    db: Optional[Path] = DbOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Everything stored about one result: DLAS dimensions, timings, provenance, warnings, build manifest."""
    from .store import DIMENSIONS

    with user_errors():
        row = _find_result(_store(db), ident)
    if as_json:
        emit_json(row)
        return
    head = Text.assemble(f"result {row['id']} (run {row.get('run_id') or '-'}): ", (str(row.get("status")), "bold"))
    if row.get("error"):
        head.append(f": {row['error']}")
    out.print(head)
    shown = set(DIMENSIONS) | set(_SHOW_STATS) | set(_SHOW_PROVENANCE) | _SHOW_ELSEWHERE
    out.print(_fields_table("DLAS dimensions", row, DIMENSIONS))
    out.print(_fields_table("timing", row, _SHOW_STATS))
    out.print(_fields_table("provenance", row, _SHOW_PROVENANCE))
    other = [k for k in row if k not in shown]
    if other:
        out.print(_fields_table("other", row, other))
    for warning in row.get("warnings") or []:
        out.print(Text.assemble(("warning: ", "yellow"), str(warning)))
    if row.get("built"):
        out.print(Text.assemble(("built: ", "bold"), row["built"]))
    manifest = row.get("manifest") or []
    if manifest:
        # the fused function's name is long and for debugging: --json has it; notes only when a layer has one
        columns = [key for key in dict.fromkeys(key for layer in manifest for key in layer)
                   if key != "function" and (key != "note" or any(layer.get("note") for layer in manifest))]
        table = Table(title=f"build manifest ({len(manifest)} layers)", title_justify="left")
        for col in columns:
            table.add_column(col, overflow="fold", min_width=20 if col in ("shape", "note") else None,
                             no_wrap=col not in ("shape", "note"))
        for layer in manifest:
            table.add_row(*(_cell(layer.get(col)) for col in columns))
        out.print(table)


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
@app.command("kernels")
def kernels_cmd(as_json: bool = JsonOpt) -> None:
    """The registered kernels: what each algorithm runs, per layer kind, layout and dtype (lower/kernels/)."""
    from .lower import registry

    kernels = [{"name": k.name, "algorithm": k.algorithm, "ops": list(k.ops), "layout": k.layout,
                "tile": k.tile_layout, "dtypes": list(k.dtypes), "priority": k.priority,
                "module": k.emit.__module__} for k in registry.load().values()]
    if as_json:
        emit_json(kernels)
        return
    table = Table(title="registered kernels (+ stock: TVM's own legalization and schedules)")
    for col in ("name", "algorithm", "ops", "layout", "tile", "dtypes", "module"):
        table.add_column(col)
    for k in kernels:
        table.add_row(k["name"], k["algorithm"], ", ".join(k["ops"]), k["layout"] or "-", k["tile"],
                      ", ".join(k["dtypes"]), k["module"].rsplit(".", 1)[-1])
    out.print(table)


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
    from .cli_models import models_app, train_cmd
    from .cli_optimize import optimize
    from .cli_profile import profile_cmd
    from .cli_sweep import report, sweep_app
    from .cli_tune import tune, tune_db_app
    from .cli_cache import cache_app

    app.add_typer(cache_app, name="cache")
    app.add_typer(sweep_app, name="sweep")
    app.command("report")(report)
    app.command("optimize")(optimize)
    app.command("profile")(profile_cmd)
    app.command("train")(train_cmd)
    app.add_typer(models_app, name="models")
    app.command("tune")(tune)
    app.add_typer(tune_db_app, name="tune-db")


def main() -> None:
    _register_subcommands()
    app()


if __name__ == "__main__":
    main()
