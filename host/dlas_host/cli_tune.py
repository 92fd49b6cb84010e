"""``dlas-host tune`` (MetaSchedule over RPC) and ``dlas-host tune-db list|export|import`` (tuning records)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .cli_common import DevicesOpt, JsonOpt, build_spec, dim_option, emit_json, err, fail, out, user_errors
from .cli_common import registry_of as _registry
from .errors import DlasError

tune_db_app = typer.Typer(no_args_is_help=True, help="Tuning records: list, export, import.")
RecordsOpt = typer.Option(None, "--records-dir", envvar="DLAS_TUNING_DIR",
                          help="tuning records directory (default: <data dir>/tuning)")


def parse_duration(text: Optional[str]) -> Optional[float]:
    """'90s', '30m', '1.5h', '45' (seconds) -> seconds."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise DlasError(f"time budget {text!r}: expected a number with an optional unit s, m or h (e.g. 30m)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def tune(
    device: list[str] = typer.Option(["local"], "--device", help="device from devices.yaml; repeat it to share "
                                     "the measurements between several devices of the same kind"),
    model: str = dim_option("model"),
    dataset: str = dim_option("dataset"),
    batch: int = typer.Option(1, min=1),
    algorithm: str = dim_option("algorithm"),
    layout: str = dim_option("layout"),
    sparse_format: str = dim_option("sparse_format"),
    bsr_block: str = dim_option("bsr_block"),
    sparsity: float = typer.Option(0.0, help="random unstructured weight sparsity for speed studies"),
    quantize: str = dim_option("quantization", "--quantize"),
    checkpoint: Optional[Path] = typer.Option(None, help="local torch checkpoint (state_dict)"),
    optimized_model: Optional[str] = typer.Option(None, "--model-id", help="stored optimized model id"),
    trials: int = typer.Option(200, help="total trials for the model, at least 1 (records already made count: "
                               "the same command resumes)"),
    time_budget: Optional[str] = typer.Option(None, help="stop after this long, e.g. 30m (re-run to resume)"),
    space: str = typer.Option("dlas", help="dlas (project kernels with sampled knobs) | metaschedule | both"),
    per_round: int = typer.Option(8, "--per-round", min=1, help="candidates built and measured per round"),
    parallel: int = typer.Option(0, help="measurement slots for a tracker device (0: one per agent)"),
    build_workers: int = typer.Option(0, help="host build processes (0: all cores)"),
    build_timeout: float = typer.Option(30.0, help="seconds to build one candidate"),
    upload_timeout: float = typer.Option(60.0, help="seconds to upload one candidate"),
    queue_timeout: float = typer.Option(300.0, help="seconds to wait for a free device at a tracker"),
    run_timeout: float = typer.Option(60.0, help="seconds to time one candidate on the device"),
    reconnect_timeout: float = typer.Option(120.0, help="seconds a device may stay away before tuning stops"),
    records_dir: Optional[Path] = RecordsOpt,
    as_json: bool = typer.Option(False, "--json", help="print the tuning report as one JSON object"),
    devices_file: Optional[Path] = DevicesOpt,
) -> None:
    """Auto-schedule a model's kernels (MetaSchedule, Ansor's successor) with measurements on remote agents."""
    import os  # noqa: PLC0415

    from .tune import tuning_target  # noqa: PLC0415
    from .tune.measure import MeasureConfig  # noqa: PLC0415
    from .tune.records import TuningRecords  # noqa: PLC0415
    from .tune.tuner import Tuner, TuneOptions  # noqa: PLC0415

    if trials < 1:  # 0 would still measure every task's default schedule, for minutes, and tune nothing
        fail(f"--trials must be at least 1 (got {trials})")
    with user_errors():
        registry = _registry(devices_file)
        devs = [registry.get(name) for name in device]
        spec = build_spec(model, dataset, batch, algorithm, layout, sparse_format, sparsity, quantize, "tuned",
                          checkpoint, optimized_model, bsr_block=bsr_block)
        options = TuneOptions(
            trials=trials, time_budget_s=parse_duration(time_budget), batch=per_round, space=space,
            build_workers=build_workers or os.cpu_count() or 1, build_timeout_s=build_timeout, parallel=parallel,
            measure=MeasureConfig(upload_s=upload_timeout, queue_s=queue_timeout, run_s=run_timeout,
                                  reconnect_s=reconnect_timeout))
        target = tuning_target(devs[0].tvm_target(), devs[0].threads)
        records = TuningRecords(target, records_dir)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
                      console=err, transient=False) as progress:
            bar = progress.add_task(f"tuning {model}/{dataset} on {', '.join(device)}", total=None, info="extracting tasks",
                                    eta="-")

            def on_progress(event: dict) -> None:
                eta = event.get("eta_s")
                info = f"tasks {event['tasks_done']}/{event['tasks_total']}"
                if event.get("task"):
                    best, default = event.get("task_best_ms"), event.get("task_default_ms")
                    info += f" | {event['task'][:40]}"
                    if default:
                        info += f" default {default:.3f} ms"
                    if best:
                        info += f" best {best:.3f} ms"
                if event["event"] == "seeding":
                    info = "measuring the default schedules"
                progress.update(bar, total=max(1, event["trials_planned"]), completed=event["trials_done"], info=info,
                                eta="-" if eta is None else f"{eta / 60:.1f} min")

            report = Tuner(spec, devs, options, records=records, progress=on_progress).run()
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    table = Table(title=f"tuning {model}/{dataset} on {report.device}: {report.trials_run} new trials in "
                        f"{report.elapsed_s:.0f} s")
    for col in ("task", "weight", "default ms", "best ms", "speedup", "trials"):
        table.add_column(col)
    for t in report.tasks:
        d = t.to_dict()
        table.add_row(t.name, str(t.weight), _f(d["default_ms"], ".3f"), _f(d["best_ms"], ".3f"),
                      _f(d["speedup"], ".2f") + "x" if d["speedup"] else "-",
                      f"{t.done}/{t.alloc}" + (" (space exhausted)" if t.exhausted else ""))
    out.print(table)
    out.print(f"kernel time (sum of weight x latency): untuned {report.untuned_ms:.3f} ms -> tuned "
              f"{report.tuned_ms:.3f} ms; records in {report.records_dir}")
    for event in report.events:
        err.print(f"[yellow]{event}[/]")
    if report.stopped:
        err.print(f"[yellow]stopped early:[/] {report.stopped}")
    out.print(f"apply them: dlas-host bench --device {device[0]} --model {model} --dataset {dataset} --tuning tuned")


def _f(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@tune_db_app.command("list")
def tune_db_list(records_dir: Optional[Path] = RecordsOpt, as_json: bool = JsonOpt) -> None:
    """Targets with tuning records, and how many."""
    from .tune.records import summaries  # noqa: PLC0415

    if as_json:
        emit_json(summaries(records_dir))
        return
    table = Table(title="tuning records")
    for col in ("target id", "target", "workloads", "records", "size"):
        table.add_column(col, overflow="fold")
    for s in summaries(records_dir):
        table.add_row(s.target_id, s.target, str(s.workloads), str(s.records), f"{s.size_bytes / 1024:.0f} KiB")
    out.print(table)


@tune_db_app.command("export")
def tune_db_export(
    archive: Path = typer.Argument(..., help="output .tar.gz"),
    target_id: Optional[list[str]] = typer.Option(None, "--target-id", help="only these targets (see list)"),
    records_dir: Optional[Path] = RecordsOpt,
) -> None:
    """Write tuning records (all targets, or the chosen ones) into one archive."""
    from .tune.records import RecordsError, export_all  # noqa: PLC0415

    try:
        path = export_all(archive, records_dir, target_id or None)
    except RecordsError as exc:
        fail(str(exc))
    out.print(f"exported {path} ({path.stat().st_size / 1024:.0f} KiB)")


@tune_db_app.command("import")
def tune_db_import(archive: Path = typer.Argument(..., help="a .tar.gz written by `tune-db export`"),
                   records_dir: Optional[Path] = RecordsOpt) -> None:
    """Merge an archive's records into the local ones (duplicates skipped, nothing overwritten)."""
    from .tune.records import RecordsError, import_archive  # noqa: PLC0415

    if not archive.is_file():
        fail(f"{archive}: no such file")
    try:  # validated whole before TVM reads it; an error imports nothing
        added = import_archive(archive, records_dir)
    except RecordsError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{archive}: cannot import ({exc.strerror or exc}); nothing imported")
    for tid, n in added.items():
        out.print(f"{tid}: {n} new record(s)")
