"""Bad-input (fuzz) suite: malformed or hostile files handed to the CLI.

Every case runs a real command (typer's CliRunner in process; a subprocess where TVM could be reached,
since TVM's JSON reader can kill the process) with DLAS_DATA_DIR, DLAS_RESULTS_DB, DLAS_DEVICES and
DLAS_TUNING_DIR inside ``tmp_path`` and checks: a non-zero exit where the input is bad, exactly one
``error:`` line on stderr, no traceback, no segfault, and every file that existed before unchanged.
Complements tests/test_hostile_input.py (shell metacharacters) and tests/test_devices.py (schema).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
TID = "llvm-abc0123456"
TARGET_JSON = json.dumps({"target": json.dumps({"kind": "llvm"})})
# a structurally valid MetaSchedule workload line and record line (never handed to TVM by these tests:
# each archive below has a bad line somewhere, which validation must catch first)
WORKLOAD = json.dumps(["11165939856252971045", "UiwAAAAAAAB7fQ=="])
RECORD = json.dumps([0, [[[], []], [1e-5], {"kind": "llvm"}, [["TENSOR", "float32", [4]]]]])


# ------------------------------------------------------------------------------------------------ harness
@pytest.fixture(scope="module")
def app() -> typer.Typer:
    """The command tree main() builds, on a root group of the same class (DlasError -> one line)."""
    from dlas_host.cli import _Group, devices_app, images_app, results_app
    from dlas_host.cli_sweep import report, sweep_app
    from dlas_host.cli_tune import tune_db_app

    root = typer.Typer(cls=_Group)
    for sub, name in ((devices_app, "devices"), (results_app, "results"), (images_app, "images"),
                      (sweep_app, "sweep"), (tune_db_app, "tune-db")):
        root.add_typer(sub, name=name)
    root.command("report")(report)
    return root


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    env = {"DLAS_DATA_DIR": str(tmp_path / "data"), "DLAS_RESULTS_DB": str(tmp_path / "results.sqlite"),
           "DLAS_TUNING_DIR": str(tmp_path / "tuning"), "DLAS_DEVICES": str(ROOT / "devices.yaml"),
           "COLUMNS": "200"}
    (tmp_path / "tuning").mkdir()
    return env


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_unchanged(before: dict[str, str], root: Path) -> None:
    after = snapshot(root)
    changed = {k for k, v in before.items() if after.get(k) != v}
    assert not changed, f"changed or removed: {sorted(changed)}"


def check_failure(code: int, stderr: str, stdout: str = "") -> None:
    assert code != -11, "segfault"
    assert "Traceback" not in stderr + stdout, stderr + stdout
    assert code != 0, f"bad input accepted:\n{stdout}\n{stderr}"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr


def run_in_process(app: typer.Typer, env: dict[str, str], *args: str):
    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}") \
            from result.exception
    return result.exit_code, result.stderr, result.stdout


def run_subprocess(env: dict[str, str], *args: str):
    proc = subprocess.run([sys.executable, "-m", "dlas_host.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)
    return proc.returncode, proc.stderr, proc.stdout


# ------------------------------------------------------------------------------------------------ devices.yaml
GOOD_DEVICE = "    arch: x86_64\n    target: {kind: llvm}\n    connection: {type: local}\n"
DEVICES_CASES = {
    "empty": "",
    "whitespace": "   \n\n\t\n",
    "comment-only": "# nothing here\n",
    "top-level-list": "- a\n- b\n",
    "top-level-scalar": "42\n",
    "devices-int": "devices: 5\n",
    "devices-list": "devices: [a, b]\n",
    "devices-string": "devices: local\n",
    "device-int": "devices:\n  pi: 5\n",
    "device-list": "devices:\n  pi: [1, 2]\n",
    "arch-int": "devices:\n  pi:\n    arch: 5\n    target: {kind: llvm}\n",
    "arch-unknown": "devices:\n  pi:\n    arch: z80\n    target: {kind: llvm}\n",
    "target-string": "devices:\n  pi:\n    arch: x86_64\n    target: llvm -mcpu=x\n",
    "target-list": "devices:\n  pi:\n    arch: x86_64\n    target: [llvm]\n",
    "target-kind-int": "devices:\n  pi:\n    arch: x86_64\n    target: {kind: 7}\n",
    "threads-string": f"devices:\n  pi:\n{GOOD_DEVICE}    threads: many\n",
    "threads-huge": f"devices:\n  pi:\n{GOOD_DEVICE}    threads: {10 ** 40}\n",
    "threads-negative": f"devices:\n  pi:\n{GOOD_DEVICE}    threads: -3\n",
    "threads-float": f"devices:\n  pi:\n{GOOD_DEVICE}    threads: 1.5\n",
    "threads-nan": f"devices:\n  pi:\n{GOOD_DEVICE}    threads: .nan\n",
    "port-huge": "devices:\n  pi:\n    arch: aarch64\n    target: {kind: llvm}\n"
                 "    connection: {type: ssh, host: pi.lab, user: pi, port: 99999999999999999999}\n",
    "port-string": "devices:\n  pi:\n    arch: aarch64\n    target: {kind: llvm}\n"
                   "    connection: {type: ssh, host: pi.lab, user: pi, port: eighty}\n",
    "connection-type-unknown": "devices:\n  pi:\n    arch: x86_64\n    target: {kind: llvm}\n"
                               "    connection: {type: carrier-pigeon}\n",
    "tags-int": f"devices:\n  pi:\n{GOOD_DEVICE}    tags: 5\n",
    "unknown-key": f"devices:\n  pi:\n{GOOD_DEVICE}    colour: blue\n",
    "host-unicode-rtl": "devices:\n  pi:\n    arch: aarch64\n    target: {kind: llvm}\n"
                        "    connection: {type: ssh, host: \"pi\u202e.lab\", user: pi}\n",
    "host-nul": "devices:\n  pi:\n    arch: aarch64\n    target: {kind: llvm}\n"
                "    connection: {type: ssh, host: \"pi\\0lab\", user: pi}\n",
    "user-huge": "devices:\n  pi:\n    arch: aarch64\n    target: {kind: llvm}\n"
                 f"    connection: {{type: ssh, host: pi.lab, user: {'u' * 100_000}}}\n",
    "yaml-syntax": "devices:\n  pi: {arch: x86_64\n",
    "yaml-tab-indent": "devices:\n\tpi:\n\t\tarch: x86_64\n",
    "python-tag": "devices: !!python/object/apply:os.system ['true']\n",
    "deep-nesting": "devices:\n  pi:\n    target: " + "[" * 5000 + "]" * 5000 + "\n",
    "alias-bomb": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                  "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                  "devices: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
}
DEVICES_BYTES = {
    "binary-garbage": bytes(random.Random(1).randrange(256) for _ in range(4096)),
    "invalid-utf8": b"devices:\n  pi\xff\xfe:\n    arch: x86_64\n",
    "utf16-bom": "devices:\n  pi:\n    arch: x86_64\n".encode("utf-16"),
    "nul-bytes": b"devices:\x00\x00\n",
}


# Found by this suite, in dlas_host/devices.py (not fixed here; owned elsewhere): accepted or two lines.
DEVICES_KNOWN: dict[str, str] = {}  # cases known to fail (strict xfail): none left


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(reason=DEVICES_KNOWN[c], strict=True))
                                  if c in DEVICES_KNOWN else c
                                  for c in sorted(DEVICES_CASES) + sorted(DEVICES_BYTES)])
def test_devices_yaml_bad(app, env, tmp_path, case):
    path = tmp_path / "devices.yaml"
    if case in DEVICES_CASES:
        path.write_text(DEVICES_CASES[case])
    else:
        path.write_bytes(DEVICES_BYTES[case])
    before = snapshot(tmp_path)
    check_failure(*run_in_process(app, {**env, "DLAS_DEVICES": str(path)}, "devices", "list"))
    assert_unchanged(before, tmp_path)


@pytest.mark.parametrize("case", ["directory", "missing", "fifo"])
def test_devices_yaml_not_a_file(app, env, tmp_path, case):
    path = tmp_path / "devices.yaml"
    if case == "directory":
        path.mkdir()
    elif case == "fifo":
        os.mkfifo(path)
    before = snapshot(tmp_path)
    check_failure(*run_in_process(app, {**env, "DLAS_DEVICES": str(path)}, "devices", "list"))
    assert_unchanged(before, tmp_path)


# ------------------------------------------------------------------------------------------------ tune-db import
def _tar(path: Path, members: list[tuple[str, bytes]], gz: bool = True) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def _special(path: Path, kind: str) -> Path:
    """An archive whose member is a symlink, hard link, device, fifo, or claims to be huge."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(f"{TID}/target.json")
        info.size = len(TARGET_JSON)
        tar.addfile(info, io.BytesIO(TARGET_JSON.encode()))
        info = tarfile.TarInfo(f"{TID}/database_tuning_record.json")
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, f"{TID}/target.json"
        elif kind == "chardev":
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        elif kind == "fifo":
            info.type = tarfile.FIFOTYPE
        if kind == "huge":  # the header claims 64 GiB; the data is never there
            info.size = 64 << 30
            buf.write(info.tobuf(tarfile.GNU_FORMAT))
        else:
            tar.addfile(info)
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


def _cut(path: Path, n: int) -> Path:
    path.write_bytes(path.read_bytes()[:n])
    return path


def _files(**over: bytes | str | None) -> list[tuple[str, bytes]]:
    files = {"target.json": TARGET_JSON, "database_workload.json": WORKLOAD + "\n",
             "database_tuning_record.json": RECORD + "\n"}
    files.update(over)
    return [(f"{TID}/{k}", v.encode() if isinstance(v, str) else v) for k, v in files.items() if v is not None]


ARCHIVES = {
    "records-blank-lines": lambda p: _tar(p, _files(**{"database_tuning_record.json": "\n\n\n"})),
    "workloads-blank-lines": lambda p: _tar(p, _files(**{"database_workload.json": "\n\n"})),
    "records-blank-line-between": lambda p: _tar(p, _files(**{"database_tuning_record.json": f"{RECORD}\n\n{RECORD}\n"})),
    "records-truncated-json": lambda p: _tar(p, _files(**{"database_tuning_record.json": RECORD[:25] + "\n"})),
    "workloads-truncated-json": lambda p: _tar(p, _files(**{"database_workload.json": WORKLOAD[:30] + "\n"})),
    "record-object": lambda p: _tar(p, _files(**{"database_tuning_record.json": '{"a": 1}\n'})),
    "record-short": lambda p: _tar(p, _files(**{"database_tuning_record.json": "[0]\n"})),
    "record-index-string": lambda p: _tar(p, _files(**{"database_tuning_record.json": RECORD.replace("[0,", '["0",', 1) + "\n"})),
    "record-index-bool": lambda p: _tar(p, _files(**{"database_tuning_record.json": RECORD.replace("[0,", "[true,", 1) + "\n"})),
    "record-index-out-of-range": lambda p: _tar(p, _files(**{"database_tuning_record.json": RECORD.replace("[0,", "[7,", 1) + "\n"})),
    "record-index-negative": lambda p: _tar(p, _files(**{"database_tuning_record.json": RECORD.replace("[0,", "[-1,", 1) + "\n"})),
    "record-run-secs-strings": lambda p: _tar(p, _files(**{"database_tuning_record.json": RECORD.replace("[1e-05]", '["fast"]') + "\n"})),
    "record-trace-string": lambda p: _tar(p, _files(**{"database_tuning_record.json": RECORD.replace("[[[], []]", '["trace"') + "\n"})),
    "record-target-no-kind": lambda p: _tar(p, _files(**{"database_tuning_record.json": RECORD.replace('"kind": "llvm"', '"x": 1') + "\n"})),
    "record-huge-number": lambda p: _tar(p, _files(**{"database_tuning_record.json": RECORD.replace("[0,", f"[{10 ** 400},", 1) + "\n"})),
    "workload-not-base64": lambda p: _tar(p, _files(**{"database_workload.json": json.dumps(["1", "!!not base64!!"]) + "\n"})),
    "workload-hash-int": lambda p: _tar(p, _files(**{"database_workload.json": json.dumps([5, "UiwA"]) + "\n"})),
    "records-without-workloads": lambda p: _tar(p, _files(**{"database_workload.json": None})),
    "records-not-utf8": lambda p: _tar(p, _files(**{"database_tuning_record.json": b"\xff\xfe\x00garbage\n"})),
    "target-missing": lambda p: _tar(p, _files(**{"target.json": None})),
    "target-garbage": lambda p: _tar(p, _files(**{"target.json": "{{{"})),
    "target-no-kind": lambda p: _tar(p, _files(**{"target.json": json.dumps({"target": "{}"})})),
    "target-wrong-type": lambda p: _tar(p, _files(**{"target.json": json.dumps({"target": 5})})),
    "defaults-truncated": lambda p: _tar(p, _files(**{"defaults.json": '{"a": {"task": "t", "defa'})),
    "defaults-wrong-types": lambda p: _tar(p, _files(**{"defaults.json": json.dumps({"a": {"task": 1, "default_s": "x"}})})),
    "defaults-list": lambda p: _tar(p, _files(**{"defaults.json": "[1, 2]"})),
    "path-traversal": lambda p: _tar(p, _files() + [("../../x", b"pwned")]),
    "path-traversal-deep": lambda p: _tar(p, [(f"{TID}/../../../x/target.json", TARGET_JSON.encode())]),
    "absolute-path": lambda p: _tar(p, _files() + [("/tmp/dlas-pwned", b"pwned")]),
    "dotdot-target-dir": lambda p: _tar(p, [("../target.json", TARGET_JSON.encode())]),
    "too-deep": lambda p: _tar(p, _files() + [(f"{TID}/sub/target.json", TARGET_JSON.encode())]),
    "unknown-member": lambda p: _tar(p, _files() + [(f"{TID}/evil.sh", b"#!/bin/sh\n")]),
    "duplicate-member": lambda p: _tar(p, _files() + [(f"{TID}/target.json", TARGET_JSON.encode())]),
    "symlink-member": lambda p: _special(p, "symlink"),
    "hardlink-member": lambda p: _special(p, "hardlink"),
    "device-member": lambda p: _special(p, "chardev"),
    "fifo-member": lambda p: _special(p, "fifo"),
    "huge-member": lambda p: _special(p, "huge"),
    "empty-archive": lambda p: _tar(p, []),
    "plain-tar": lambda p: _tar(p, _files(), gz=False),
    "truncated-gzip": lambda p: _cut(_tar(p, _files() + [(f"{TID}/defaults.json", os.urandom(3000))]), 200),
    "gzip-of-garbage": lambda p: p.write_bytes(gzip.compress(os.urandom(3000))) or p,
    "zero-bytes": lambda p: p.write_bytes(b"") or p,
    "random-bytes": lambda p: p.write_bytes(random.Random(7).randbytes(5000)) or p,
    "a-directory": lambda p: p.mkdir() or p,
    "one-good-one-bad-target": lambda p: _tar(p, _files() + [
        ("llvm-second00000/target.json", TARGET_JSON.encode()),
        ("llvm-second00000/database_workload.json", (WORKLOAD + "\n").encode()),
        ("llvm-second00000/database_tuning_record.json", b"\n")]),
}


@pytest.mark.parametrize("case", sorted(ARCHIVES))
def test_tune_db_import_bad_archive(env, tmp_path, case):
    """A subprocess: TVM's JSON reader segfaults on some of these if they ever reach it."""
    existing = tmp_path / "tuning" / "llvm-existing000"
    existing.mkdir()
    (existing / "target.json").write_text(TARGET_JSON + "\n")
    (existing / "defaults.json").write_text(json.dumps({"k": {"task": "t", "default_s": 0.5}}))
    archive = ARCHIVES[case](tmp_path / "records.tar.gz")
    before = snapshot(tmp_path)
    check_failure(*run_subprocess(env, "tune-db", "import", str(archive)))
    assert_unchanged(before, tmp_path)
    assert sorted(p.name for p in (tmp_path / "tuning").iterdir()) == ["llvm-existing000"], "nothing imported"
    assert not Path("/tmp/dlas-pwned").exists()


# ------------------------------------------------------------------------------------------------ results database
def _real_db(path: Path, rows: int = 30) -> None:
    from dlas_host.store import ResultRow, ResultStore

    from dlas_host.sweep.state import SweepState

    store = ResultStore(path)
    SweepState(path)
    for i in range(rows):
        store.add(ResultRow(model="resnet18", dataset="cifar10", device="local", system="tvm", status="ok",
                            error="x" * 300 + str(i)))


def _db_case(path: Path, case: str) -> None:
    if case == "directory":
        path.mkdir()
        return
    if case in ("random-bytes", "text"):
        path.write_bytes(random.Random(3).randbytes(8192) if case == "random-bytes" else b"hello\n" * 100)
        return
    if case == "header-only":
        path.write_bytes(b"SQLite format 3\x00" + random.Random(4).randbytes(4000))
        return
    _real_db(path)
    data = path.read_bytes()
    if case == "truncated-half":
        data = data[: len(data) // 2]
    elif case == "truncated-100":
        data = data[:100]
    elif case == "truncated-one-page":
        data = data[:4096]
    elif case == "zeroed-page-2":
        data = data[:4096] + b"\x00" * 4096 + data[8192:]
    elif case == "garbage-page-2":
        data = data[:4096] + random.Random(5).randbytes(4096) + data[8192:]
    path.write_bytes(data)


DB_CASES = ["directory", "random-bytes", "text", "header-only", "truncated-100", "truncated-one-page",
            "zeroed-page-2", "garbage-page-2"]
DB_COMMANDS = {
    "results-list": ["results", "list"],
    "results-export-csv": ["results", "export", "--format", "csv"],
    "results-export-json": ["results", "export", "--format", "json"],
    "sweep-status": ["sweep", "status"],
    "sweep-list": ["sweep", "list"],
    "report": ["report", "--out", "REPORT"],
}


@pytest.mark.parametrize("command", sorted(DB_COMMANDS))
@pytest.mark.parametrize("case", DB_CASES)
def test_results_db_bad(app, env, tmp_path, case, command):
    db = tmp_path / "results.sqlite"
    _db_case(db, case)
    before = snapshot(tmp_path)
    args = [a.replace("REPORT", str(tmp_path / "report")) for a in DB_COMMANDS[command]]
    code, stderr, stdout = run_in_process(app, env, *args)
    if command.startswith("sweep") and case.endswith("page-2"):
        # the damaged page holds results, not the sweeps table: sweeps may still be listed (none here)
        if code != 0:
            check_failure(code, stderr, stdout)
    else:
        check_failure(code, stderr, stdout)
        assert str(db) in stderr.replace("\n", "")
    assert "Traceback" not in stderr + stdout
    assert_unchanged(before, tmp_path)


@pytest.mark.parametrize("case", ["random-bytes", "truncated-one-page"])
def test_results_db_bad_bench_subprocess(env, tmp_path, case):
    """bench (through main(), as users run it) stops before building anything."""
    db = tmp_path / "results.sqlite"
    _db_case(db, case)
    before = snapshot(tmp_path)
    check_failure(*run_subprocess(env, "bench", "--device", "local", "--model", "resnet18", "--dataset", "cifar10",
                                  "--system", "torch"))
    assert_unchanged(before, tmp_path)


# ------------------------------------------------------------------------------------------------ sweep spec fuzz
def _fuzz_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 10 ** 30, 1.5, float("inf"), -(10 ** 19)])
    if kind == 2:
        return rng.choice(["", "resnet18", "π-模型-🙂", "x" * 5000, "../../etc/passwd", "$(touch pwned)", "\x00"])
    if kind == 3:
        return rng.choice(["cifar10", "imagenet", "direct", "tvm", "local", "untuned"])
    if kind in (4, 5):
        return [rng.choice(["resnet18", "cifar10", 3, None])]
    if kind == 6:
        return [_fuzz_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["grid", "run", "models", "x", "devices", "🙂"]): _fuzz_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


GRID_KEYS = ["devices", "datasets", "models", "algorithms", "layouts", "systems", "tuning", "batches",
             "sparsities", "quantization", "colour"]


def _fuzz_spec(seed: int) -> str:
    import yaml

    rng = random.Random(seed)
    spec = {"name": "fuzz", "grid": {"devices": ["local"], "datasets": ["cifar10"], "models": ["resnet18"],
                                     "systems": ["torch"]}, "run": {"number": 1, "repeat": 2, "warmup": 0}}
    mode = seed % 5
    if mode == 0:  # wrong types for known keys
        for _ in range(rng.randrange(1, 4)):
            spec["grid"][rng.choice(GRID_KEYS)] = _fuzz_value(rng)
    elif mode == 1:  # unknown keys, at the top and in the grid/run
        spec[rng.choice(["extra", "🙂", "gird", "Run"])] = _fuzz_value(rng)
        spec["grid"][f"unknown_{seed}"] = ["x"]
    elif mode == 2:  # deep nesting (written as flow YAML: the dumper itself would recurse too deep)
        opens = [rng.choice(["[", "{k: "]) for _ in range(rng.randrange(50, 2000))]
        closes = "".join("]" if o == "[" else "}" for o in reversed(opens))
        return yaml.safe_dump(spec).replace("- resnet18", "- " + "".join(opens) + "leaf" + closes)
    elif mode == 3:  # the whole document replaced
        return rng.choice(["", "[]", "42", "name: [unclosed", "grid: 5", "\t- x", "null", "{{{{"]) + "\n"
    else:  # run options mutated
        spec["run"] = {rng.choice(["number", "repeat", "warmup", "bogus"]): _fuzz_value(rng) for _ in range(3)}
    return yaml.safe_dump(spec, allow_unicode=True)


@pytest.mark.parametrize("seed", range(30))
def test_sweep_spec_fuzz(app, env, tmp_path, seed):
    spec = tmp_path / "spec.yaml"
    spec.write_text(_fuzz_spec(seed))
    before = snapshot(tmp_path)
    code, stderr, stdout = run_in_process(app, env, "sweep", "run", str(spec), "--dry-run")
    assert "Traceback" not in stderr + stdout
    if code != 0:
        check_failure(code, stderr, stdout)
    assert_unchanged(before, tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_sweep_spec_fuzz_is_not_all_valid():
    """The generator does produce bad specs (most seeds): the suite above tests failures, not only successes."""
    from dlas_host.sweep.spec import load_spec

    failures = 0
    for seed in range(30):
        path = Path(f"/tmp/dlas-fuzz-{os.getpid()}-{seed}.yaml")
        path.write_text(_fuzz_spec(seed))
        try:
            load_spec(str(path))
        except Exception:  # noqa: BLE001
            failures += 1
        finally:
            path.unlink()
    assert failures >= 20


# ------------------------------------------------------------------------------------------------ cache and records files
@pytest.mark.parametrize("cut", [0, 1, 100, -1])
def test_truncated_cached_artifact_is_a_miss_and_replaced(tmp_path, cut):
    from dlas_host.cache import ArtifactCache

    cache = ArtifactCache(tmp_path / "cache")
    src = tmp_path / "model.so"
    payload = os.urandom(5000)
    src.write_bytes(payload)
    entry = cache.put("k" * 64, src)
    entry.path.write_bytes(payload[:cut])
    assert cache.get("k" * 64) is None
    again = cache.put("k" * 64, src)
    assert hashlib.sha256(again.path.read_bytes()).hexdigest() == again.sha256
    assert cache.get("k" * 64) is not None


@pytest.mark.parametrize("cut", [0, 1, 20, -2])
def test_truncated_cache_index_is_a_miss(tmp_path, cut):
    from dlas_host.cache import ArtifactCache

    cache = ArtifactCache(tmp_path / "cache")
    src = tmp_path / "model.so"
    src.write_bytes(b"lib" * 100)
    cache.put("k" * 64, src)
    index = cache._index_path("k" * 64)
    index.write_text(index.read_text()[:cut])
    assert cache.get("k" * 64) is None
    assert len(cache.entries()) == 0


DEFAULTS_CUTS = [1, 10, 50, -1, -10]


@pytest.mark.parametrize("cut", DEFAULTS_CUTS)
def test_truncated_defaults_moved_aside_not_overwritten(tmp_path, cut, caplog):
    from dlas_host.tune.records import DEFAULTS, TuningRecords

    recs = TuningRecords(json.dumps({"kind": "llvm"}), tmp_path)
    full = {f"w{i}": {"task": f"t{i}", "default_s": 0.001 * i} for i in range(18)}
    text = json.dumps(full, indent=1)
    (recs.dir / DEFAULTS).write_text(text[:cut])
    recs.set_default("new", "t", 0.5)
    asides = list(recs.dir.glob(f"{DEFAULTS}.corrupt-*"))
    assert len(asides) == 1 and asides[0].read_text() == text[:cut]
    assert json.loads((recs.dir / DEFAULTS).read_text()) == {"new": {"task": "t", "default_s": 0.5}}
    assert sum("moved aside" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("tail", ['[0, [[[], []], [1e-0', "\x00\x00\x00", '{"trunc', "\xff"])
def test_truncated_records_file_kept_aside(tmp_path, tail):
    from dlas_host.tune.records import RECORDS, TuningRecords

    probe = TuningRecords(json.dumps({"kind": "llvm"}), tmp_path)
    original = (RECORD + "\n") * 3 + tail
    (probe.dir / RECORDS).write_text(original)
    TuningRecords(json.dumps({"kind": "llvm"}), tmp_path)
    assert (probe.dir / RECORDS).read_text() == (RECORD + "\n") * 3
    asides = list(probe.dir.glob(f"{RECORDS}.corrupt-*"))
    assert len(asides) == 1 and asides[0].read_text() == original


def test_case_count():
    """The issue asks for at least 100 bad-input cases."""
    n = (len(DEVICES_CASES) + len(DEVICES_BYTES) + 3 + len(ARCHIVES) + len(DB_CASES) * len(DB_COMMANDS) + 2 + 30
         + 4 + 4 + len(DEFAULTS_CUTS) + 5)
    assert n >= 100
