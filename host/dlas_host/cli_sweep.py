"""``dlas-host sweep run|resume|status|list`` and ``dlas-host report``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .cli_common import DbOpt, DevicesOpt, JsonOpt, emit_json, err, out, user_errors
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
    from .sweep.runner import start_sweep, run_sweep
    from .sweep.spec import expand, load_spec

    if bool(spec_file) == bool(preset):
        with user_errors():
            raise DlasError("give a sweep spec file or --preset NAME (not both)")
    with user_errors():
        spec = load_spec(spec_file or preset)
        registry, store = _open(devices_file, db)
        names = [n.strip() for item in only or [] for n in item.split(",") if n.strip()] or None
        if names:
            registry.select(names)  # an unknown name is an error, not an empty sweep
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
        counts = run_sweep(sweep_id, registry, store, executor, console=err)
    _print_counts(sweep_id, counts)


@sweep_app.command("resume")
def sweep_resume(
    sweep_id: str = typer.Argument(..., help="sweep id (or a unique prefix)"),
    executor: str = typer.Option("local", help="compile executor: local | ray | ray:ADDRESS"),
    devices_file: Optional[Path] = DevicesOpt,
    db: Optional[Path] = DbOpt,
) -> None:
    """Run the jobs of an interrupted sweep that have no final result yet."""
    from .sweep.runner import run_sweep
    from .sweep.state import SweepNotFound

    try:
        with user_errors():
            registry, store = _open(devices_file, db)
            counts = run_sweep(sweep_id, registry, store, executor, console=err)
    except SweepNotFound as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1)
    _print_counts(sweep_id, counts)


@sweep_app.command("status")
def sweep_status(sweep_id: Optional[str] = typer.Argument(None), db: Optional[Path] = DbOpt,
                 as_json: bool = JsonOpt) -> None:
    """Progress of one sweep (default: the newest)."""
    from .store import ResultStore
    from .sweep.state import SweepNotFound, SweepState

    state = SweepState(ResultStore(db).path)
    try:
        sweeps = state.list()
        record = state.get(sweep_id or (sweeps[0]["id"] if sweeps else "-none-"))
    except SweepNotFound as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1)
    counts = state.counts(record["id"])
    finished = counts.get("ok", 0) + counts.get("skipped", 0)
    if as_json:
        emit_json({**record, "counts": counts, "finished": finished})
        return
    out.print(f"sweep {record['id']} ({record['name']}): {record['status']}, {finished}/{record['total']} jobs final "
              f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'nothing run yet'}); "
              f"started {record['created_at']}, updated {record['updated_at']}")


@sweep_app.command("list")
def sweep_list(db: Optional[Path] = DbOpt, as_json: bool = JsonOpt) -> None:
    """All sweeps in the results database."""
    from .store import ResultStore
    from .sweep.state import SweepState

    state = SweepState(ResultStore(db).path)
    if as_json:
        emit_json(state.list())
        return
    table = Table(title="sweeps")
    for col in ("id", "name", "jobs", "status", "created", "updated"):
        table.add_column(col)
    for s in state.list():
        table.add_row(s["id"], s["name"], str(s["total"]), s["status"], s["created_at"], s["updated_at"])
    out.print(table)


def _print_counts(sweep_id: str, counts: dict[str, int]) -> None:
    out.print(f"sweep {sweep_id}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if counts.get("error"):
        out.print(f"failed jobs stay pending: `dlas-host sweep resume {sweep_id}` retries them")


def report(
    sweep: Optional[str] = typer.Option(None, "--sweep", help="only this sweep's rows (id or prefix)"),
    out_dir: Path = typer.Option(Path("report"), "--out", help="directory for report.html, report.md and PNGs"),
    title: str = typer.Option("DLAS Lab report"),
    db: Optional[Path] = DbOpt,
) -> None:
    """Write an HTML + Markdown report: heatmaps, Pareto plots, spreads and automatic observations."""
    from .report import write_report
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
    rows = store.query(where, order="id ASC")
    if not rows:
        err.print("[bold red]error:[/] no results to report (run `dlas-host bench` or `dlas-host sweep run` first)")
        raise typer.Exit(1)
    result = write_report(rows, out_dir, title)
    out.print(f"wrote {result.html_path} and {result.markdown_path}: {result.rows} rows, {result.figures} figures, "
              f"{len(result.findings)} observations")
    for f in result.findings:
        out.print(f"  - {f.text}")
