"""Chaos: a real `dlas-host sweep` on the local device, killed at random points (SIGKILL / SIGTERM / SIGINT, to
the runner or its process group) many times, resumed in between, then resumed to the end: every job is
stored exactly once and no process of the sweep outlives its runner.

Kill points are drawn (seeded) from three kinds: a random delay after start (imports, lock, guard, spawning
the worker), a random delay after a job is claimed (mid-job: the engine process or the skip in flight), and
a few milliseconds after a row lands (store writes and the next claim). When a sweep finishes between kills,
the next cycle starts a new one in the same database. ``DLAS_CHAOS_KILLS`` sets the number of kills (30),
``DLAS_CHAOS_LANES`` how many independent lanes (data dir + database each) share them (2).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweeptools import (cli, count, final_count, isolated_sweep, job_rows_by_key,  # noqa: E402
                        start_sweep_process, wait_no_sweep_processes)

KILLS = int(os.environ.get("DLAS_CHAOS_KILLS", "30"))
SEED = int(os.environ.get("DLAS_CHAOS_SEED", "20"))
LANES = int(os.environ.get("DLAS_CHAOS_LANES", "2"))

# 10 jobs: 2 real ones (torch eager in a fresh process) and 8 that are skipped at once (quantized baselines):
# kills land in engine processes and in bursts of row writes.
SPEC = """name: chaos
grid:
  devices: [local]
  models: [resnet18, mobilenet_v2]
  datasets: [cifar10]
  systems: [torch, onnxruntime]
  quantization: [float32, int8, float16]
exclude: [{system: onnxruntime, quantization: float32}]
run: {number: 1, repeat: 2, warmup: 0, retries: 0}
"""

# What a runner may exit with after each signal: handled (128 + n), the default action before the handler is
# installed (-n), click's "Aborted!" for Ctrl-C during start-up (1), or done before the signal landed (0).
ALLOWED_RC = {signal.SIGKILL: {-9, 0}, signal.SIGTERM: {143, -15, 0}, signal.SIGINT: {130, 1, -2, 0}}


def _latest_sweep(db: Path) -> str | None:
    import sqlite3

    if not db.exists():
        return None
    con = sqlite3.connect(db)
    try:
        row = con.execute("SELECT id FROM sweeps ORDER BY created_at DESC, rowid DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:
        row = None
    finally:
        con.close()
    return row[0] if row else None


def _finished(db: Path, sweep_id: str) -> bool:
    return count(db, "SELECT count(*) FROM sweeps WHERE id = ? AND status = 'done'", sweep_id) == 1


def _no_job_twice(db: Path, sweep_ids: list[str]) -> None:
    for sweep_id in sweep_ids:
        twice = {k: rows for k, rows in job_rows_by_key(db, sweep_id).items() if final_count(rows) > 1}
        assert not twice, f"jobs stored twice in {sweep_id}: {twice}"


def _lane(root: Path, kills_wanted: int, seed: int) -> dict:
    """One independent chaos lane (its own data dir and database): kill, resume, ..., resume to the end."""
    world = isolated_sweep(root, SPEC, "chaos.yaml", "results.sqlite")
    data, env, spec, db, common = world.data, world.env, world.spec, world.db, world.common
    rng = random.Random(seed)
    startup_s = 4.0  # grows to the longest time seen from start to the first claim
    kills: list[tuple[str, str, str]] = []
    sweeps: list[str] = []
    completed = 0
    while len(kills) < kills_wanted:
        current = sweeps[-1] if sweeps and not _finished(db, sweeps[-1]) else None
        args = ["resume", current, *common] if current else ["run", str(spec), *common]
        mode = rng.choices(["startup", "mid-job", "store"], weights=[3, 4, 3])[0]
        sig = rng.choice([signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
        to_group = rng.random() < 0.3
        claims0 = count(db, "SELECT count(*) FROM sweep_claims")
        rows0 = count(db, "SELECT count(*) FROM results")
        t0 = time.monotonic()
        proc = start_sweep_process(args, env)
        fire_at = t0 + rng.uniform(0.0, startup_s) if mode == "startup" else None
        first_claim = None
        while proc.poll() is None and time.monotonic() - t0 < 600:
            now = time.monotonic()
            if first_claim is None and count(db, "SELECT count(*) FROM sweep_claims") > claims0:
                first_claim = now
                startup_s = max(startup_s, now - t0)
                if mode == "mid-job":
                    fire_at = now + rng.uniform(0.0, 3.0)
            if mode == "store" and fire_at is None and count(db, "SELECT count(*) FROM results") > rows0:
                fire_at = now + rng.uniform(0.0, 0.05)
            if fire_at is not None and now >= fire_at:
                break
            time.sleep(0.02)
        if proc.poll() is not None:  # the run ended before its kill point: a finished sweep, or a new one next
            out, err = proc.communicate()
            assert proc.returncode == 0, err[-2000:]
            completed += 1
        else:
            if to_group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            out, err = proc.communicate(timeout=300)
            assert proc.returncode in ALLOWED_RC[sig], (sig, proc.returncode, err[-2000:])
            # Ctrl-C while Python is still importing the CLI is Python's own KeyboardInterrupt; nothing started yet
            assert "Traceback" not in err or (sig == signal.SIGINT and "KeyboardInterrupt" in err), err[-3000:]
            kills.append((mode, sig.name, "group" if to_group else "pid"))
            print(f"{root.name} kill {len(kills)}: {' '.join(args[:2])} {mode} {sig.name} to the {kills[-1][2]} "
                  f"after {time.monotonic() - t0:.1f} s -> exit {proc.returncode}", flush=True)
        left = wait_no_sweep_processes(data)
        assert not left, f"processes outlived the runner after {kills[-1:]}: {left}"
        latest = _latest_sweep(db)
        if latest and latest not in sweeps:
            sweeps.append(latest)
        _no_job_twice(db, sweeps)

    for sweep_id in sweeps:  # one final resume of each to completion
        if not _finished(db, sweep_id):
            done = cli("sweep", "resume", sweep_id, *common, env=env)
            assert done.returncode == 0, done.stderr[-2000:]
    assert not wait_no_sweep_processes(data)

    stored = 0
    for sweep_id in sweeps:
        status = json.loads(cli("sweep", "status", sweep_id, "--json", "--db", str(db), env=env).stdout)
        rows = job_rows_by_key(db, sweep_id)
        assert set(rows) == set(status["jobs"]) and len(status["jobs"]) == 10
        assert all(final_count(r) == 1 for r in rows.values()), rows  # every job exactly once
        # anything else stored for a job is an attempt that the final row superseded
        assert all(sup is not None for r in rows.values() for st, rt, sup in r[:-1]), rows
        assert status["status"] == "done" and status["finished"] == 10 and sum(status["counts"].values()) == 10
        assert status["counts"] == {"ok": 2, "skipped": 8}, status["counts"]
        assert status["duplicates"] == 0 and status["orphans"] == 0 and status["pending"] == 0
        stored += len(rows)
    return {"kills": kills, "completed": completed, "sweeps": len(sweeps), "jobs": stored}


@pytest.mark.slow
def test_random_kills_store_every_job_exactly_once(tmp_path):
    """Independent lanes run side by side (a 2-CPU machine spends most of a cycle importing in one process)."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.monotonic()
    per_lane = -(-KILLS // LANES)
    with ThreadPoolExecutor(LANES) as pool:
        futures = [pool.submit(_lane, tmp_path / f"lane{i}", per_lane, SEED + i) for i in range(LANES)]
        results = [f.result() for f in futures]
    elapsed = time.monotonic() - started
    kills = [k for r in results for k in r["kills"]]
    assert len(kills) >= KILLS
    by = Counter(k[1] for k in kills), Counter(k[0] for k in kills), Counter(k[2] for k in kills)
    print(f"\nchaos: {len(kills)} kills {dict(by[0])} {dict(by[1])} {dict(by[2])} in {LANES} lanes, "
          f"{sum(r['completed'] for r in results)} runs ended on their own, {sum(r['sweeps'] for r in results)} "
          f"sweeps, {sum(r['jobs'] for r in results)} jobs each stored once, no process left; {elapsed:.0f} s")
