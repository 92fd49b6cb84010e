"""Clean measurements (issue #20): session workers die with their session, nothing else uses a CPU while it
is timed, and every row records the load seen during its timing.

Real processes throughout: an agent on loopback, clients killed with SIGKILL in the middle of a timing loop,
a CPU burner beside a real benchmark.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from dlas_agent import auth
from dlas_agent.load import LoadMeter
from dlas_agent.protocol import BenchmarkRequest, BenchmarkResult, ProtocolError, TimingLoad
from dlas_agent.stats import COMPETING_CORES_WARN, load_warnings, summarize

ROOT = Path(__file__).resolve().parents[1]
N = 256  # the kernel: an unscheduled 256x256 matmul, tens of ms per run on one thread
KERNEL_ARGS = [{"shape": [N, N], "dtype": "float32"}] * 3
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(autouse=True)
def own_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DLAS_LOCK_DIR", str(tmp_path / "locks"))  # no other test run's timings to wait for


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_for(condition, seconds: float = 60.0, every: float = 0.1) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


def _group_empty(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return all(_gone(p.pid) for p in psutil.process_iter() if _pgid(p.pid) == pgid)


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


def _burner() -> subprocess.Popen:
    """A process spinning one core until killed."""
    proc = subprocess.Popen([sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "spinning"
    return proc


def _stop(proc: subprocess.Popen, group: bool = False) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        except ProcessLookupError:
            pass
    proc.wait(10)


# ------------------------------------------------------------------------------------------------ load, unit
def test_load_meter_counts_other_processes_not_its_own():
    burner = _burner()
    try:
        with LoadMeter() as meter:
            time.sleep(1.0)  # this process idles; the burner spins
        load = meter.result
    finally:
        _stop(burner)
    assert load is not None and load.cores == psutil.cpu_count()
    assert load.competing_cores > 0.5, load
    assert load.own_cores < 0.5 and load.busy_cores >= load.competing_cores
    assert all({"pid", "name", "cores"} <= set(p) for p in load.top)
    assert any(w.startswith(f"another process used {load.competing_cores:.2f} cores") for w in load_warnings(load))


def test_load_warning_threshold_and_resolution():
    quiet = TimingLoad(wall_s=2.0, cores=2, busy_cores=1.05, own_cores=1.0, competing_cores=0.05)
    assert load_warnings(quiet) == []
    busy = TimingLoad(wall_s=2.0, cores=2, busy_cores=1.9, own_cores=1.0, competing_cores=0.9,
                      top=[{"pid": 1234, "name": "python3", "cores": 0.88}])
    assert load_warnings(busy) == ["another process used 0.90 cores during timing (python3 pid 1234 0.88): "
                                   "timings may be inflated"]
    # 40 ms windows on 64 cores: the counters (10 ms ticks per core) cannot tell 0.3 cores from noise
    assert load_warnings(TimingLoad(wall_s=0.04, cores=64, competing_cores=0.3 + COMPETING_CORES_WARN)) == []
    stolen = TimingLoad(wall_s=5.0, cores=4, steal_cores=0.6)
    assert load_warnings(stolen) == ["the hypervisor took 0.60 cores (steal) during timing: timings may be inflated"]
    assert load_warnings(None) == []


# ------------------------------------------------------------------------------------------------ protocol
# BenchmarkResult / TimingStats fields of protocol 2 as released before the load was added: hosts of that
# version refuse any other key, so a newer agent must not send one.
OLD_RESULT_KEYS = {"ok", "stats", "error", "load_s", "first_run_ms", "outputs", "output_shapes", "env", "protocol"}
OLD_STATS_KEYS = {"n", "median_ms", "mean_ms", "stdev_ms", "mad_ms", "iqr_ms", "p90_ms", "p99_ms", "min_ms",
                  "max_ms", "samples_ms", "warnings"}


def test_the_load_travels_where_older_hosts_and_agents_accept_it():
    from dlas_host.bench import record_load
    from dlas_host.store import ResultRow

    load = TimingLoad(wall_s=1.0, cores=2, busy_cores=1.9, own_cores=1.0, competing_cores=0.9)
    stats = summarize([1.0, 1.1, 1.2, 1.0, 1.05])
    stats.warnings += load_warnings(load)
    new = BenchmarkResult(ok=True, stats=stats, env={"load_avg": [0.1], "timing_load": json.loads(load.to_json())})
    wire = json.loads(new.to_json())
    assert set(wire) <= OLD_RESULT_KEYS and set(wire["stats"]) <= OLD_STATS_KEYS  # an older host parses it
    assert any("another process used" in w for w in wire["stats"]["warnings"])  # and stores the warning
    again = BenchmarkResult.from_json(new.to_json())
    assert again.timing_load() == load
    row = ResultRow(dataset="d", model="m", system="tvm", device="local")
    record_load(row, again.timing_load())
    assert row.extra["load"]["competing_cores"] == 0.9

    old = BenchmarkResult.from_json(json.dumps({"ok": True, "stats": json.loads(stats.to_json()), "env": {}}))
    assert old.timing_load() is None  # an older agent: no load, no crash
    row = ResultRow(dataset="d", model="m", system="tvm", device="local")
    record_load(row, old.timing_load())
    assert "load" not in row.extra
    # replies from a newer agent may carry fields this host does not know; requests stay strict
    later = BenchmarkResult.from_json(json.dumps({**wire, "some_future_field": 1}))
    assert later.ok and later.timing_load() == load
    with pytest.raises(ProtocolError, match="unknown keys"):
        BenchmarkRequest.from_json(json.dumps({"artifact": "a", "sha256": "b", "inputs": "c", "evil": 1}))


# ------------------------------------------------------------------------------------------------ sessions
@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> tuple[Path, str]:
    """(library, sha256) of a small TVM kernel that an agent times through dlas.time_kernel."""
    import tvm
    from tvm import te

    a = te.placeholder((N, N), name="A")
    b = te.placeholder((N, N), name="B")
    k = te.reduce_axis((0, N), name="k")
    c = te.compute((N, N), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    path = tmp_path_factory.mktemp("kernel") / "matmul.so"
    tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, b, c])}), target="llvm").export_library(str(path))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def agent(tmp_path):
    """A long-running agent on loopback (as on a remote device), one thread."""
    secret_file = tmp_path / "agent.secret"
    auth.write_secret(secret_file)
    log = tmp_path / "agent.log"
    env = {k: v for k, v in ENV.items() if not k.startswith("DLAS_AGENT_")}
    proc = subprocess.Popen([sys.executable, "-m", "dlas_agent", "serve", "--host", "127.0.0.1", "--port",
                             str(_free_port()), "--secret-file", str(secret_file), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
                            env={**env, "TVM_USE_RUNTIME_LIB": "1"}, start_new_session=True)
    line = proc.stdout.readline()
    assert line, log.read_text()
    yield {"proc": proc, "port": json.loads(line)["port"], "secret_file": secret_file, "log": log}
    _stop(proc, group=True)


CLIENT = """
import sys
from pathlib import Path
from dlas_agent import auth
from dlas_agent.protocol import FN_TIME_KERNEL, KernelTimingRequest
port, secret_file, lib, sha, number = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
sess = auth.connect("127.0.0.1", port, auth.read_secret_file(Path(secret_file)), session_timeout_s=600)
sess.upload(lib, "k.so")
secret, nonce = sess.dlas_auth
mac = auth.artifact_mac(secret, nonce, sha)
request = KernelTimingRequest(artifact="k.so", sha256=sha, args=[{"shape": [256, 256], "dtype": "float32"}] * 3,
                              number=number, repeat=1, min_repeat_ms=0, artifact_mac=mac)
print("calling", flush=True)
print(sess.get_function(FN_TIME_KERNEL)(request.to_json()), flush=True)
"""


def _client(agent: dict, kernel: tuple[Path, str], number: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLIENT, str(agent["port"]), str(agent["secret_file"]),
                             str(kernel[0]), kernel[1], str(number)], stdout=subprocess.PIPE, text=True, env=ENV)


def _timing_worker(parent: psutil.Process) -> psutil.Process:
    """The parent's session worker, once it has spent CPU time (it is in the timing loop)."""
    found: list[psutil.Process] = []

    def busy() -> bool:
        for child in parent.children():
            try:
                if child.cpu_times().user > 0.5:
                    found.append(child)
                    return True
            except psutil.Error:
                continue
        return False

    assert _wait_for(busy, 120), "no session worker started timing"
    return found[0]


def _tree_cpu_s(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def test_killed_host_leaves_no_session_worker_on_a_running_agent(agent, kernel):
    """kill -9 of the host mid-benchmark: the agent sees the connection go, kills the worker's group, serves on."""
    client = _client(agent, kernel, number=10**6)  # hours of work inside one C++ call
    try:
        assert client.stdout.readline().strip() == "calling"
        server = psutil.Process(agent["proc"].pid)
        worker = _timing_worker(server)
        group = os.getpgid(worker.pid)
        client.kill()
        client.wait(10)
        assert _wait_for(lambda: _gone(worker.pid), 30), "the session worker outlived its client"
        assert group == worker.pid != os.getpgid(server.pid)  # it had a group of its own, and that is empty
        assert _wait_for(lambda: _group_empty(group), 10)
        assert not [c for c in server.children() if not _gone(c.pid)]
        before = _tree_cpu_s(server)
        time.sleep(1.0)
        assert _tree_cpu_s(server) - before < 0.3, "the agent still burns CPU"
        assert "went away: killing session worker" in agent["log"].read_text()
    finally:
        _stop(client)
    follower = _client(agent, kernel, number=2)  # the agent serves the next host
    out, _ = follower.communicate(timeout=300)
    reply = json.loads(out.strip().splitlines()[-1])
    assert reply["ok"] and len(reply["run_secs"]) == 1, out


LOCAL_CLIENT = """
import sys
from pathlib import Path
from dlas_host.devices import load
from dlas_host.transport import connect
devfile, lib, sha = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
device = load(devfile).get("local").model_copy(update={"threads": 1})
with connect(device) as client:
    print("calling", flush=True)
    client.time_kernel(lib, sha, [{"shape": [256, 256], "dtype": "float32"}] * 3, number=10**6, min_repeat_ms=0,
                       num_threads=1)
"""


def test_killed_host_takes_its_local_agent_and_session_worker_along(kernel, local_device):
    """The local device: the host spawned the agent; kill -9 of the host ends agent and worker (PDEATHSIG)."""
    client = subprocess.Popen([sys.executable, "-c", LOCAL_CLIENT, str(ROOT / "devices.yaml"), str(kernel[0]),
                               kernel[1]], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert client.stdout.readline().strip() == "calling"
        host = psutil.Process(client.pid)
        agents = [c for c in host.children() if c.cmdline()[1:4] == ["-m", "dlas_agent", "serve"]]
        assert len(agents) == 1
        worker = _timing_worker(agents[0])
        client.kill()
        client.wait(10)
        assert _wait_for(lambda: _gone(agents[0].pid), 30), "the local agent outlived its host"
        assert _wait_for(lambda: _gone(worker.pid), 30), "the session worker outlived its host"
    finally:
        _stop(client)
    from dlas_host.transport import connect

    with connect(local_device.model_copy(update={"threads": 1})) as following:  # the next benchmark works
        result = following.time_kernel(kernel[0], kernel[1], KERNEL_ARGS, number=1, min_repeat_ms=0, num_threads=1)
    assert result.ok and result.run_secs


# ------------------------------------------------------------------------------------------------ rows (slow)
@pytest.fixture(scope="module")
def one_thread(local_device):
    return local_device.model_copy(update={"name": "local-1t", "threads": 1})


@pytest.fixture(scope="module")
def locked_bench(one_thread, tmp_path_factory):
    """bench_tvm started while another process times this machine: its compile waits for that timing to end,
    then it compiles, times and checks in one process (no deadlock between its shared and exclusive holds)."""
    from dlas_host import compile as build
    from dlas_host.bench import RunOptions, bench_tvm
    from dlas_host.cache import ArtifactCache
    from dlas_host.compile import BuildSpec
    from dlas_host.store import ResultStore

    work = tmp_path_factory.mktemp("locked-bench")
    saved = os.environ.get("DLAS_LOCK_DIR")
    os.environ["DLAS_LOCK_DIR"] = str(work / "locks")  # module scope: set by hand, restored below
    go, released = work / "go", work / "released"
    holder_code = ("import sys, time; from pathlib import Path\n"
                   "from dlas_host.fleet.locks import device_lock, machine_key\n"
                   "with device_lock(machine_key(), purpose='another timing'):\n"
                   "    print('held', flush=True)\n"
                   f"    while not Path({str(go)!r}).exists(): time.sleep(0.05)\n"
                   f"    Path({str(released)!r}).write_text('x')\n")
    holder = subprocess.Popen([sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True,
                              env={**ENV, "DLAS_LOCK_DIR": str(work / "locks")})
    seen: dict[str, bool] = {}
    original_build = build._build

    def build_and_note(*args, **kwargs):
        seen["timing_over_when_build_started"] = released.exists()
        return original_build(*args, **kwargs)

    build._build = build_and_note
    out: dict[str, object] = {}
    handler = _ListHandler()
    logging.getLogger("dlas_host.locks").addHandler(handler)
    logging.getLogger("dlas_host.locks").setLevel(logging.INFO)
    try:
        assert holder.stdout.readline().strip() == "held"
        store = ResultStore(work / "results.sqlite")
        runner = threading.Thread(target=lambda: out.update(row=bench_tvm(
            BuildSpec(model="resnet18", dataset="cifar10"), one_thread, store,
            RunOptions(number=5, repeat=5, warmup=1, force_compile=True), cache=ArtifactCache())))
        runner.start()
        assert _wait_for(lambda: any("waiting for this machine" in m for m in handler.messages), 300)
        seen["waiting_while_held"] = runner.is_alive() and "timing_over_when_build_started" not in seen
        go.write_text("go")
        holder.wait(60)
        runner.join(1800)
        yield {"row": out["row"], "seen": seen, "store": store}
    finally:
        build._build = original_build
        logging.getLogger("dlas_host.locks").removeHandler(handler)
        go.write_text("go")
        _stop(holder)
        if saved is None:
            os.environ.pop("DLAS_LOCK_DIR", None)
        else:
            os.environ["DLAS_LOCK_DIR"] = saved


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.slow
def test_compile_waits_for_a_timing_then_bench_compiles_times_and_checks(locked_bench):
    row, seen = locked_bench["row"], locked_bench["seen"]
    assert seen == {"waiting_while_held": True, "timing_over_when_build_started": True}
    assert row.status == "ok", row.error
    assert row.extra["artifact_cached"] is False and row.max_abs_err < 1e-3
    load = row.extra["load"]  # the quiet-or-not load of this run is on the row, whatever it was
    assert set(load) >= {"wall_s", "cores", "busy_cores", "own_cores", "competing_cores", "top"}
    assert load["wall_s"] > 0 and "timing_load" not in row.device_env["after_run"]


@pytest.mark.slow
def test_bench_inside_a_held_lock_is_reentrant(locked_bench, one_thread):
    """A sweep holding the device calls bench_tvm: its timing and its torch check pass the same process's hold."""
    from dlas_host.bench import RunOptions, bench_tvm
    from dlas_host.compile import BuildSpec
    from dlas_host.fleet.locks import device_lock

    with device_lock(one_thread, purpose="sweep"):
        row = bench_tvm(BuildSpec(model="resnet18", dataset="cifar10"), one_thread, locked_bench["store"],
                        RunOptions(number=2, repeat=3, warmup=1))
    assert row.status == "ok", row.error
    assert row.extra["artifact_cached"] is True and "load" in row.extra


@pytest.mark.slow
def test_a_competing_process_during_timing_is_on_the_row(locked_bench, one_thread):
    from dlas_host.bench import RunOptions, bench_engine, bench_tvm
    from dlas_host.compile import BuildSpec

    spec, store = BuildSpec(model="resnet18", dataset="cifar10"), locked_bench["store"]
    burner = _burner()
    try:
        tvm_row = bench_tvm(spec, one_thread, store, RunOptions(number=20, repeat=10, warmup=1, check=False))
        torch_row = bench_engine("torch", spec, one_thread, store, RunOptions(number=5, repeat=5, warmup=1,
                                                                              check=False))
    finally:
        _stop(burner)
    for row in (tvm_row, torch_row):
        assert row.status == "ok", row.error
        assert row.extra["load"]["competing_cores"] > 0.5, row.extra["load"]
        assert any(w.startswith("another process used") and "timings may be inflated" in w for w in row.warnings), \
            row.warnings
    stored = store.query({"system": "tvm"}, limit=1)[0]  # what the store keeps
    assert stored["extra"]["load"] == tvm_row.extra["load"] and stored["warnings"] == tvm_row.warnings
