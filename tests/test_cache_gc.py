"""``dlas-host cache stats|gc``: least-recently-used collection under a cap, never what an unfinished sweep
still needs nor what is in use, dry runs that remove nothing, one-line errors, one JSON document."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dlas_host.cache import ArtifactCache, CacheError, cache_stats, collect, key_of, parse_age, parse_size
from dlas_host.store import ResultRow, ResultStore
from dlas_host.sweep.needs import unfinished_needs
from dlas_host.sweep.spec import expand, parse_spec
from dlas_host.sweep.state import SweepState

ROOT = Path(__file__).resolve().parents[1]
KB = 1000
HOUR = 3600.0


def _put(cache: ArtifactCache, tmp: Path, name: str, size: int = KB, used_ago: float = HOUR, **meta) -> str:
    """An entry of ``size`` distinct bytes whose last use was ``used_ago`` seconds ago."""
    src = tmp / f"{name}.so"
    src.write_bytes(name.encode().ljust(size, b"x"))
    key = key_of({"name": name})
    entry = cache.put(key, src, {"model": meta.get("model", "resnet18"), "device": "local", **meta})
    past = time.time() - used_ago
    os.utime(cache.index / key[:2] / f"{key}.json", (past, past))
    os.utime(entry.path, (past, past))
    return key


def _keys(cache: ArtifactCache) -> set[str]:
    return {p.stem for p in cache.index.glob("*/*.json")}


def test_lru_order_is_respected_and_the_cap_reached(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    old = _put(cache, tmp_path, "old", used_ago=3 * HOUR)
    mid = _put(cache, tmp_path, "mid", used_ago=2 * HOUR)
    new = _put(cache, tmp_path, "new", used_ago=1 * HOUR)
    result = collect(cache, max_size=2 * KB)
    assert [r["key"] for r in result.removed] == [old]
    assert _keys(cache) == {mid, new} and result.total_after <= 2 * KB and result.freed == KB
    assert cache_stats(cache)["total_bytes"] == 2 * KB  # the blob went with its entry
    # a hit is a use: "mid" is now the newest, so "new" goes first (collected as if an hour from now)
    assert cache.get(mid) is not None
    result = collect(cache, max_size=KB, now=time.time() + HOUR)
    assert [r["key"] for r in result.removed] == [new] and _keys(cache) == {mid}


def test_max_age_shared_blobs_and_orphans(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    stale = _put(cache, tmp_path, "stale", used_ago=40 * 24 * HOUR)
    fresh = _put(cache, tmp_path, "fresh", used_ago=HOUR)
    src = tmp_path / "again.so"
    src.write_bytes(b"fresh".ljust(KB, b"x"))  # the same bytes as "fresh": one blob, two entries
    twin = cache.put(key_of({"name": "twin"}), src, {"model": "vgg16"}).key
    past = time.time() - 50 * 24 * HOUR
    os.utime(cache.index / twin[:2] / f"{twin}.json", (past, past))
    orphan = cache.objects / "ff" / ("f" * 64 + ".so")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"y" * KB)
    os.utime(orphan, (past, past))
    result = collect(cache, max_age=parse_age("30d"))
    assert {r["key"] for r in result.removed} == {stale, twin} and _keys(cache) == {fresh}
    assert result.orphans_removed == 1 and not orphan.exists()
    assert result.freed == 2 * KB  # stale's blob and the orphan; the twin's blob is still fresh's
    assert cache.get(fresh) is not None


def test_an_entry_in_use_is_never_removed(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    busy = _put(cache, tmp_path, "busy", used_ago=60)  # used a minute ago
    idle = _put(cache, tmp_path, "idle", used_ago=HOUR)
    result = collect(cache, max_size=0)
    assert _keys(cache) == {busy} and [r["key"] for r in result.removed] == [idle]
    assert sum(result.kept.values()) == 1 and "in use" in next(iter(result.kept))
    assert result.as_dict()["over_cap"] is True


def test_dry_run_removes_nothing(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    keys = {_put(cache, tmp_path, n, used_ago=HOUR * (i + 1)) for i, n in enumerate("abc")}
    before = sorted(p.name for p in cache.root.rglob("*") if p.is_file())
    result = collect(cache, max_size=0, dry_run=True)
    assert len(result.removed) == 3 and result.total_after == 0 and result.freed == 3 * KB
    assert _keys(cache) == keys and sorted(p.name for p in cache.root.rglob("*") if p.is_file()) == before


@pytest.mark.parametrize("text", ["10Q", "", "G", "-5G", "ten"])
def test_bad_sizes_are_errors(text: str) -> None:
    with pytest.raises(CacheError, match="bad size"):
        parse_size(text)


def test_sizes_and_ages() -> None:
    assert parse_size("10G") == 10 * 2**30 and parse_size("1.5GiB") == 3 * 2**29 and parse_size("512") == 512
    assert parse_size("500mb") == 500 * 2**20 and parse_age("30d") == 30 * 86400 and parse_age("90m") == 5400
    with pytest.raises(CacheError, match="bad age"):
        parse_age("soon")
    with pytest.raises(CacheError, match="--max-size or --max-age"):
        collect(ArtifactCache(Path(os.environ["DLAS_DATA_DIR"]) / "unused-cache"))


SPEC = """
name: keep-me
jobs:
  - {model: resnet18, dataset: digits, system: tvm, algorithm: spatial_pack}
  - {model: resnet18, dataset: digits, system: tvm, algorithm: direct}
"""


def test_unfinished_sweep_keeps_what_it_needs(tmp_path: Path, registry) -> None:
    """The keys come from the run's own function (compile.build_key of runner.build_spec): entries stored
    under them stay however old, until the job has a final row or the sweep is done."""
    store = ResultStore(tmp_path / "results.sqlite")
    spec = parse_spec(SPEC)
    jobs = expand(spec, registry)
    state = SweepState(store.path)
    sweep_id = state.create(spec.name, spec.model_dump(), None, len(jobs), [j.key for j in jobs])
    needs = unfinished_needs(store.path, registry)
    assert needs.sweeps == [sweep_id] and len(needs.keys) == 2 and not needs.loose

    cache = ArtifactCache(tmp_path / "cache")
    needed = []
    for i, key in enumerate(needs.keys):  # fake artifacts under the keys the sweep will ask for
        src = tmp_path / f"needed{i}.so"
        src.write_bytes(bytes([i]) * KB)
        cache.put(key, src, {"model": "resnet18", "dataset": "digits", "device": "local"})
        past = time.time() - 100 * 24 * HOUR  # the least recently used of all
        os.utime(cache.index / key[:2] / f"{key}.json", (past, past))
        needed.append(key)
    other = _put(cache, tmp_path, "other", used_ago=HOUR)
    result = collect(cache, max_size=0, keep=lambda item: needs.reason(item.key, item.meta))
    assert _keys(cache) == set(needed) and [r["key"] for r in result.removed] == [other]
    assert result.kept == {f"needed by unfinished sweep {sweep_id}": 2}

    # the spatial_pack job gets its final row: its artifact is no longer needed
    first = jobs[0]
    row = ResultRow(dataset="digits", model="resnet18", system="tvm", device="local", sweep_id=sweep_id,
                    job_key=first.key)
    store.add_job_row(row)
    needs = unfinished_needs(store.path, registry)
    assert len(needs.keys) == 1
    collect(cache, max_size=0, keep=lambda item: needs.reason(item.key, item.meta))
    assert _keys(cache) == set(needs.keys)

    state.set_status(sweep_id, "done")
    needs = unfinished_needs(store.path, registry)
    assert not needs.keys and not needs.sweeps
    collect(cache, max_size=0, keep=lambda item: needs.reason(item.key, item.meta))
    assert _keys(cache) == set()


def test_a_sweep_whose_jobs_cannot_be_expanded_keeps_its_models(tmp_path: Path, registry) -> None:
    store = ResultStore(tmp_path / "results.sqlite")
    spec = parse_spec(SPEC.replace("algorithm: direct}", "algorithm: direct, device: gone}"))
    SweepState(store.path).create(spec.name, spec.model_dump(), None, 2, None)
    needs = unfinished_needs(store.path, registry)
    assert needs.notes and "cannot expand" in needs.notes[0]
    assert needs.reason("k", {"model": "resnet18", "device": "x"}) and not needs.reason("k", {"model": "vgg16"})


# ------------------------------------------------------------------------------------------------ the CLI
@pytest.fixture()
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DLAS_RESULTS_DB", str(tmp_path / "results.sqlite"))
    monkeypatch.setenv("DLAS_DEVICES", str(ROOT / "devices.yaml"))
    monkeypatch.delenv("DLAS_CACHE_MAX", raising=False)
    from dlas_host.cli_cache import cache_app

    root = typer.Typer()
    root.add_typer(cache_app, name="cache")
    return root


def test_cli_stats_json_is_one_document_and_gc_reports(cli: typer.Typer, tmp_path: Path) -> None:
    cache = ArtifactCache()  # the data dir of the fixture
    _put(cache, tmp_path, "a", used_ago=2 * HOUR, model="vgg16")
    _put(cache, tmp_path, "b", used_ago=HOUR)
    result = CliRunner().invoke(cli, ["cache", "stats", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["entries"] == 2 and stats["total_bytes"] == 2 * KB
    assert stats["bytes_by_model"] == {"resnet18": KB, "vgg16": KB} and stats["bytes_by_kind"] == {"artifact": 2 * KB}
    assert stats["oldest_use"] < stats["newest_use"]

    result = CliRunner().invoke(cli, ["cache", "gc", "--max-size", "1K", "--dry-run"])
    assert result.exit_code == 0 and "would free 1000 B" in result.stdout and len(_keys(cache)) == 2
    result = CliRunner().invoke(cli, ["cache", "gc", "--max-size", "1K", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["freed_bytes"] == KB and report["removed"][0]["model"] == "vgg16" and len(_keys(cache)) == 1


@pytest.mark.parametrize("args, message", [
    (["--max-size", "10Q"], "bad size '10Q'"),
    (["--max-age", "a while"], "bad age"),
    ([], "give --max-size or --max-age"),
])
def test_cli_bad_input_is_one_line(cli: typer.Typer, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["cache", "gc", *args])
    assert result.exit_code == 1 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_cli_cap_from_the_environment(cli: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ArtifactCache()
    _put(cache, tmp_path, "a", used_ago=2 * HOUR)
    _put(cache, tmp_path, "b", used_ago=HOUR)
    monkeypatch.setenv("DLAS_CACHE_MAX", "1500")
    result = CliRunner().invoke(cli, ["cache", "gc"])
    assert result.exit_code == 0 and "freed" in result.stdout and len(_keys(cache)) == 1
