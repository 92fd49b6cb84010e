"""``dlas-host sweep run|resume|plan|status|list`` and ``dlas-host report``."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .cli_common import DbOpt, DevicesOpt, JsonOpt, emit_json, err, fail, out, user_errors
from .errors import DlasError

sweep_app = typer.Typer(no_args_is_help=True, help="Fleet-wide benchmark sweeps over the DLAS layers.")


def _open(devices_file: Optional[Path], db: Optional[Path]):
    from .devices import load
    from .store import ResultStore

    return load(devices_file), ResultStore(db)


@sweep_app.command("run")
def sweep_run(
    spec_file: Optional[str] = typer.Argument(None, help="sweep spec YAML (or use --preset)"),
    preset: Optional[str] = typer.Option(None, help="shipped preset: quick | dlas-paper"),
    only: Optional[list[str]] = typer.Option(None, "--only", metavar="NAME",
                                             help="run only this device's jobs (repeat it, or comma-separate names)"),
    executor: str = typer.Option("local", help="compile executor: local | ray | ray:ADDRESS"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the jobs and exit"),
    devices_file: Optional[Path] = DevicesOpt,
    db: Optional[Path] = DbOpt,
) -> None:
    """Expand a sweep spec into jobs and run them across the devices."""
    from .sweep.runner import start_sweep
    from .sweep.spec import expand

    spec, registry, store, names = _load(spec_file, preset, only, devices_file, db)
    with user_errors():
        jobs = expand(spec, registry, names)
        if dry_run:
            table = Table(title=f"{spec.name}: {len(jobs)} jobs")
            for col in ("device", "job", "key"):
                table.add_column(col)
            for job in jobs:
                table.add_row(job.device, job.label(), job.key)
            out.print(table)
            return
        sweep_id = start_sweep(spec, registry, store, names)
    try:
        _print_plan_summary(spec, registry, names, store.path, jobs)
    except KeyboardInterrupt:  # Ctrl-C while planning: the sweep is recorded, nothing of it started
        _exit_interrupted(f"sweep {sweep_id} interrupted before it started: `dlas-host sweep resume {sweep_id}` "
                          "runs it", 128 + signal.SIGINT)
    _run(sweep_id, registry, store, executor)


def _load(spec_file: Optional[str], preset: Optional[str], only: Optional[list[str]], devices_file: Optional[Path],
          db: Optional[Path]) -> tuple:
    """(spec, registry narrowed to ``--only``, store, names or None) of `sweep run|plan`; bad input is one line."""
    from .sweep.spec import load_spec

    if bool(spec_file) == bool(preset):
        with user_errors():
            raise DlasError("give a sweep spec file or --preset NAME (not both)")
    with user_errors():
        spec = load_spec(spec_file or preset)
        registry, store = _open(devices_file, db)
        names = [n.strip() for item in only or [] for n in item.split(",") if n.strip()] or None
        if names:
            registry.select(names)  # an unknown name is an error, not an empty sweep
    return spec, registry, store, names


def _print_plan_summary(spec, registry, names, db_path: Path, jobs) -> None:
    """The plan's one paragraph on stderr before the run; a plan that cannot be made never stops the run."""
    from .sweep.plan import plan_sweep

    try:
        err.print(plan_sweep(spec, registry, names, db_path, jobs).summary(), highlight=False, soft_wrap=True,
                  markup=False)
    except Exception as exc:  # noqa: BLE001 - only an estimate
        err.print(f"(no plan: {type(exc).__name__}: {str(exc)[:160]})", highlight=False, markup=False)


@sweep_app.command("plan")
def sweep_plan(
    spec_file: Optional[str] = typer.Argument(None, help="sweep spec YAML (or use --preset)"),
    preset: Optional[str] = typer.Option(None, help="shipped preset: quick | dlas-paper"),
    only: Optional[list[str]] = typer.Option(None, "--only", metavar="NAME",
                                             help="plan only this device's jobs (repeat it, or comma-separate names)"),
    devices_file: Optional[Path] = DevicesOpt,
    db: Optional[Path] = DbOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Count a sweep's jobs, distinct builds, tuning tasks and models to make, and estimate host time, device
    time and disk from earlier runs' costs (defaults where there are none). Runs nothing."""
    from .sweep.plan import fmt_s, plan_sweep

    spec, registry, store, names = _load(spec_file, preset, only, devices_file, db)
    with user_errors():
        plan = plan_sweep(spec, registry, names, store.path)
    if as_json:
        emit_json(plan.as_dict())
        return
    table = Table(title=f"plan {plan.name}")
    for col in ("phase", "count", "host", "device", "costs"):
        table.add_column(col, justify="left" if col in ("phase", "costs") else "right")
    for phase in plan.phases:
        table.add_row(phase.name, str(phase.count), fmt_s(phase.host_s), fmt_s(phase.device_s), phase.source)
    out.print(table)
    out.print(plan.summary(), highlight=False, soft_wrap=True, markup=False)


@sweep_app.command("resume")
def sweep_resume(
    sweep_id: str = typer.Argument(..., help="sweep id (or a unique prefix)"),
    executor: str = typer.Option("local", help="compile executor: local | ray | ray:ADDRESS"),
    devices_file: Optional[Path] = DevicesOpt,
    db: Optional[Path] = DbOpt,
) -> None:
    """Run the jobs of a sweep that have no final result yet (never run, failed, or skipped for a reason that
    may pass); one runner per sweep."""
    with user_errors():
        registry, store = _open(devices_file, db)
    _run(sweep_id, registry, store, executor)


def _exit_interrupted(message: str, code: int) -> None:
    """Say why and leave at once. The run's processes are gone and its state is stored; skipping interpreter
    teardown means no thread still inside an extension (Rust or C++) is unwound by the exiting interpreter,
    which aborts the process ("Rust cannot catch foreign exceptions") instead of exiting with ``code``."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):  # our multiprocessing resource tracker: gone before we are, as at a
        from multiprocessing import resource_tracker  # noqa: PLC0415 - normal exit (it exits when its pipe closes)

        resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]
    os._exit(code)


def _run(sweep_id: str, registry, store, executor: str) -> None:
    """Run the sweep; SIGINT/SIGTERM end it with 128 + the signal's number once its processes are gone."""
    from .sweep.runner import SweepInterrupted, run_sweep

    try:
        counts = run_sweep(sweep_id, registry, store, executor, console=err)
    except SweepInterrupted as exc:
        _exit_interrupted(str(exc), 128 + exc.signum)
    except KeyboardInterrupt as exc:  # before the runner took the sweep: nothing of it was started
        signum = getattr(exc, "signum", 2)
        _exit_interrupted(f"sweep {sweep_id} interrupted before it started: `dlas-host sweep resume {sweep_id}` "
                          "runs it", 128 + signum)
    except (DlasError, OSError) as exc:
        fail(str(exc))
    _print_counts(sweep_id, counts)


@sweep_app.command("status")
def sweep_status(sweep_id: Optional[str] = typer.Argument(None), db: Optional[Path] = DbOpt,
                 as_json: bool = JsonOpt) -> None:
    """Progress of one sweep (default: the newest), from the final row of each job, with the jobs retried
    after a skip that may pass, duplicates (jobs stored more than once) and orphans."""
    from .store import ResultStore
    from .sweep.state import SweepState

    with user_errors():
        state = SweepState(ResultStore(db).path)
        sweeps = state.list()
        record = state.get(sweep_id or (sweeps[0]["id"] if sweeps else "-none-"))
        summary = state.summary(record["id"], record)
        runner = state.runner(record)
        live = state.live_status(record)
    if as_json:
        emit_json({**record, "status": live, "recorded_status": record["status"], **summary.as_dict(),
                   "runner": runner})
        return
    final = {k: v for k, v in summary.counts.items() if k in ("ok", "skipped")}
    pending = [f"{k} {v}" for k, v in sorted(summary.pending_by.items())]
    who = f" (pid {runner.get('pid')} on {runner.get('host')})" if runner and live == "running" else ""
    out.print(f"sweep {record['id']} ({record['name']}): {live}{who}, {summary.finished}/{summary.total} jobs final "
              f"({', '.join(f'{k} {v}' for k, v in sorted(final.items())) or 'none yet'}); "
              f"pending {summary.pending}{' (' + ', '.join(pending) + ')' if summary.pending > 0 and pending else ''}; "
              f"retried {summary.retried}, duplicates {summary.duplicates}, orphans {summary.orphans}; "
              f"started {record['created_at']}, updated {record['updated_at']}", highlight=False, soft_wrap=True)
    if summary.duplicates:
        out.print(f"  duplicates: {summary.duplicates} job(s) stored more than once (the first final row counts): "
                  f"{', '.join(summary.duplicate_keys[:5])}{' ...' if summary.duplicates > 5 else ''}",
                  highlight=False, soft_wrap=True)
    if summary.orphans:
        parts = []
        if summary.orphan_rows:
            parts.append(f"{summary.orphan_rows} row(s) whose job is not in the sweep")
        if summary.orphan_jobs:
            parts.append(f"{summary.orphan_jobs} job(s) started by a runner that is gone, without a final row")
        out.print(f"  orphans: {'; '.join(parts)}", highlight=False, soft_wrap=True)
    if summary.pending > 0 and live != "running":
        out.print(f"  `dlas-host sweep resume {record['id']}` runs the {summary.pending} pending job(s)",
                  highlight=False, soft_wrap=True)


@sweep_app.command("list")
def sweep_list(db: Optional[Path] = DbOpt, as_json: bool = JsonOpt) -> None:
    """All sweeps in the results database (a sweep whose runner is gone shows "interrupted")."""
    from .store import ResultStore
    from .sweep.state import SweepState

    with user_errors():
        sweeps = SweepState(ResultStore(db).path).list()
    if as_json:
        emit_json(sweeps)
        return
    table = Table(title="sweeps")
    for col in ("id", "name", "jobs", "status", "created", "updated"):
        table.add_column(col)
    for s in sweeps:
        table.add_row(s["id"], s["name"], str(s["total"]), s["status"], s["created_at"], s["updated_at"])
    out.print(table)


def _print_counts(sweep_id: str, counts: dict[str, int]) -> None:
    out.print(f"sweep {sweep_id}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if counts.get("error") or counts.get("retryable"):
        out.print(f"failed jobs and skips that may pass stay pending: `dlas-host sweep resume {sweep_id}` retries them")


def report(
    sweep: Optional[str] = typer.Option(None, "--sweep", help="only this sweep's rows (id or prefix)"),
    out_dir: Path = typer.Option(Path("report"), "--out", help="directory for report.html, report.md and SVG figures"),
    title: str = typer.Option("DLAS Lab report"),
    db: Optional[Path] = DbOpt,
) -> None:
    """Write an HTML + Markdown report: heatmaps, Pareto plots, spreads and automatic observations."""
    from .report import load_sweeps, write_report
    from .store import ResultStore
    from .sweep.state import SweepNotFound, SweepState

    store = ResultStore(db)
    where = {}
    if sweep:
        try:
            where = {"sweep_id": SweepState(store.path).get(sweep)["id"]}
        except SweepNotFound as exc:
            err.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1)
    rows = store.query(where, order="id ASC", current=True)  # superseded attempts are not results
    if not rows:
        err.print("[bold red]error:[/] no results to report (run `dlas-host bench` or `dlas-host sweep run` first)")
        raise typer.Exit(1)
    result = write_report(rows, out_dir, title, sweeps=load_sweeps(store.path, rows))
    out.print(f"wrote {result.html_path} and {result.markdown_path}: {result.rows} rows, {result.figures} figures, "
              f"{len(result.findings)} observations", markup=False)
    for f in result.findings:  # finding texts carry user data (names, brackets): never Rich markup
        out.print(f"  - {f.text}", markup=False, highlight=False)
