"""``dlas-host cache stats|gc``: what the content-addressed artifact cache holds, and its collection."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from .cli_common import DbOpt, DevicesOpt, JsonOpt, emit_json, err, out, user_errors

cache_app = typer.Typer(no_args_is_help=True, help="The artifact cache: usage and least-recently-used collection.")


def _when(ts: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


@cache_app.command("stats")
def cache_stats_cmd(as_json: bool = JsonOpt) -> None:
    """Entries, bytes on disk, bytes per kind, device and model, oldest and newest use."""
    from .cache import ArtifactCache, cache_stats, human_size

    with user_errors():
        stats = cache_stats(ArtifactCache())
    if as_json:
        emit_json(stats)
        return
    out.print(f"cache {stats['root']}: {stats['entries']} entries, {stats['blobs']} blobs, "
              f"{human_size(stats['total_bytes'])} on disk"
              + (f" ({stats['orphan_blobs']} unreferenced: {human_size(stats['orphan_bytes'])})"
                 if stats["orphan_blobs"] else "")
              + f"; oldest use {_when(stats['oldest_use'])}, newest {_when(stats['newest_use'])}",
              highlight=False, soft_wrap=True)
    for group in ("kind", "device", "model"):
        by = stats[f"bytes_by_{group}"]
        if by:
            table = Table(title=f"bytes by {group}")
            table.add_column(group)
            table.add_column("bytes", justify="right")
            for name, size in sorted(by.items(), key=lambda kv: -kv[1]):
                table.add_row(name, human_size(size))
            out.print(table)


@cache_app.command("gc")
def cache_gc_cmd(
    max_size: Optional[str] = typer.Option(None, "--max-size", help="cap, e.g. 10G (default: $DLAS_CACHE_MAX)"),
    max_age: Optional[str] = typer.Option(None, "--max-age", help="remove entries unused for this long, e.g. 30d"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show what would be removed; remove nothing"),
    devices_file: Optional[Path] = DevicesOpt,
    db: Optional[Path] = DbOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Remove least-recently-used entries until the cache fits --max-size (and those unused for --max-age),
    then unreferenced blobs. Never removes what an unfinished sweep still needs, nor anything used in the last
    few minutes."""
    from .cache import ArtifactCache, CacheError, collect, default_max_size, human_size, parse_age, parse_size
    from .cli_common import registry_of
    from .store import ResultStore
    from .sweep.needs import unfinished_needs

    with user_errors():
        cap = parse_size(max_size) if max_size is not None else default_max_size()
        age = parse_age(max_age) if max_age is not None else None
        if cap is None and age is None:
            raise CacheError("give --max-size or --max-age (or set DLAS_CACHE_MAX)")
        needs = unfinished_needs(ResultStore(db).path, lambda: registry_of(devices_file))
        for note in needs.notes:
            err.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
        result = collect(ArtifactCache(), max_size=cap, max_age=age, dry_run=dry_run,
                         keep=lambda item: needs.reason(item.key, item.meta))
    if as_json:
        emit_json({**result.as_dict(), "unfinished_sweeps": needs.sweeps})
        return
    verb = "would free" if dry_run else "freed"
    _print_removed(result.removed, dry_run)
    out.print(f"{verb} {human_size(result.freed)}: {len(result.removed)} entries, {result.orphans_removed} "
              f"unreferenced blobs; cache {human_size(result.total_before)} -> {human_size(result.total_after)}",
              highlight=False, soft_wrap=True)
    for why, n in sorted(result.kept.items()):
        out.print(f"  kept {n}: {why}", highlight=False, soft_wrap=True)
    if cap is not None and result.total_after > cap:
        out.print(f"  still over the cap ({human_size(cap)}): what is left is in use or needed by an unfinished "
                  "sweep", highlight=False, soft_wrap=True)


def _print_removed(removed: list[dict[str, Any]], dry_run: bool) -> None:
    from .cache import human_size

    for r in removed[:20]:
        out.print(f"  {'would remove' if dry_run else 'removed'} {r['key'][:12]} {r['model']} on {r['device']} "
                  f"({r['kind']}, {human_size(r['bytes_freed'])} freed, last used {_when(r['last_used'])}, {r['why']})",
                  highlight=False, soft_wrap=True)
    if len(removed) > 20:
        out.print(f"  ... and {len(removed) - 20} more", highlight=False)
