"""Whole-model latency per convolution algorithm vs torch eager, and int8 vs float32 per layer.

Each engine runs in a fresh subprocess (batch 1, 2 threads). TVM: ``dlas_host.lower.lower`` +
``tvm.compile``, timed with the VM's ``time_evaluator`` (number=3, repeat=10, median). Torch eager:
same protocol with ``time.perf_counter`` (3 warm-up calls). Writes ``benchmarks/results/algorithms.md``.

    PYTHONPATH=host:agent python benchmarks/bench_algorithms.py [--models resnet18 mobilenet_v2] [--size 224]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

THREADS = 2
ENGINES = ["torch", "direct/NCHW", "direct/NHWC", "gemm/NCHW", "gemm/NHWC", "spatial_pack/NCHWc"]
ROOT = Path(__file__).resolve().parents[1]
TARGET = {"kind": "llvm", "mcpu": "native", "num-cores": THREADS}  # resolved by dlas_host.devices.build_target


def _median_ms(fn, number: int = 3, repeat: int = 10) -> float:
    import numpy as np

    for _ in range(3):
        fn()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - t0) / number)
    return float(np.median(runs) * 1e3)


def _import(model_name: str, size: int):
    import torch

    from dlas_host import zoo

    dataset = "imagenet" if size == 224 else "cifar10"
    model = zoo.fold_batchnorm(zoo.create(model_name, dataset))
    return model, zoo.example_input(dataset)


def worker_model(model_name: str, size: int, engine: str) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(THREADS)
    model, x = _import(model_name, size)
    if engine == "torch":
        with torch.no_grad():
            return {"ms": _median_ms(lambda: model(x))}
    import tvm
    import tvm.relax.frontend.torch  # noqa: F401
    from tvm import relax

    from dlas_host.devices import build_target
    from dlas_host.lower import LoweringPolicy, lower

    algo, layout = engine.split("/")
    target = build_target(TARGET)
    mod = relax.frontend.torch.from_exported_program(torch.export.export(model, (x,)), keep_params_as_input=False)
    t0 = time.perf_counter()
    mod = lower(mod, target, LoweringPolicy(algorithm=algo, layout=layout))  # depthwise: policy default (direct)
    ex = tvm.compile(mod, target=target)
    build_s = time.perf_counter() - t0
    vm = relax.VirtualMachine(ex, tvm.cpu())
    xt = tvm.runtime.tensor(x.numpy())
    out = vm["main"](xt)[0].numpy()
    with torch.no_grad():
        err = float(np.abs(out - model(x).numpy()).max())
    timer = vm.time_evaluator("main", tvm.cpu(), number=3, repeat=10)
    return {"ms": float(np.median(timer(xt).results) * 1e3), "max_abs_err": err, "build_s": build_s}


def _conv_layers(size: int) -> list[tuple]:
    """Distinct (C, H, W, O, k, stride, pad) of resnet18's convolutions at ``size``."""
    import torch

    model, x = _import("resnet18", size)
    seen, layers = set(), []

    def hook(mod, inp, _out):
        key = (mod.in_channels, inp[0].shape[2], inp[0].shape[3], mod.out_channels, mod.kernel_size[0],
               mod.stride[0], mod.padding[0])
        if key not in seen:
            seen.add(key)
            layers.append(key)

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return layers


def worker_int8(size: int, algo: str) -> dict:
    import numpy as np
    import tvm
    from tvm import relax

    from dlas_host.devices import build_target
    from dlas_host.lower import LoweringPolicy, lower

    target = build_target(TARGET)
    rng = np.random.default_rng(0)
    rows = []
    for c, h, w, o, k, s, p in _conv_layers(size):
        row = {"layer": f"{c}x{h}x{w} -> {o}, {k}x{k}/s{s}"}
        for dtype in ("float32", "int8"):
            if dtype == "int8":
                x = rng.integers(-128, 128, (1, c, h, w)).astype(np.int8)
                wt = rng.integers(-128, 128, (o, c, k, k)).astype(np.int8)
            else:
                x = rng.standard_normal((1, c, h, w)).astype(np.float32)
                wt = rng.standard_normal((o, c, k, k)).astype(np.float32)
            bb = relax.BlockBuilder()
            xv = relax.Var("x", relax.TensorType((1, c, h, w), dtype))
            with bb.function("main", [xv]):
                with bb.dataflow():
                    y = bb.emit(relax.op.nn.conv2d(xv, relax.const(wt), strides=(s, s), padding=(p, p),
                                                   out_dtype="int32" if dtype == "int8" else dtype))
                    if dtype == "float32":
                        y = bb.emit(relax.op.nn.relu(y))
                    gv = bb.emit_output(y)
                bb.emit_func_output(gv)
            mod = lower(bb.get(), target, LoweringPolicy(algorithm=algo))
            vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
            timer = vm.time_evaluator("main", tvm.cpu(), number=3, repeat=10)
            row[dtype] = float(np.median(timer(tvm.runtime.tensor(x)).results) * 1e3)
        rows.append(row)
    return {"rows": rows}


def _spawn(args: list[str]) -> dict:
    env = dict(os.environ, TVM_NUM_THREADS=str(THREADS), OMP_NUM_THREADS=str(THREADS),
               PYTHONPATH=os.pathsep.join([str(ROOT / "host"), str(ROOT / "agent"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    ap.add_argument("--size", type=int, default=224, choices=(32, 224))
    ap.add_argument("--engines", nargs="+", default=ENGINES)
    ap.add_argument("--int8-algorithm", default="spatial_pack")
    ap.add_argument("--passes", type=int, default=2,
                    help="run every engine this many times (fresh subprocess each) and keep the fastest median: "
                         "on a shared machine, other jobs only ever add time")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "algorithms.md"))
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        kind, *rest = a.worker
        res = worker_model(rest[0], int(rest[1]), rest[2]) if kind == "model" else worker_int8(int(rest[0]), rest[1])
        print(json.dumps(res))
        return

    from dlas_host.devices import resolve_target_dict

    cmd = "PYTHONPATH=host:agent python benchmarks/bench_algorithms.py " + " ".join(sys.argv[1:])
    lines = [f"# Convolution algorithms: whole-model latency (batch 1, {THREADS} threads, {a.size}x{a.size})", "",
             f"Command: `{cmd.strip()}`  ", f"Target: `{json.dumps(resolve_target_dict(TARGET))}`; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.  ",
             "TVM rows: `dlas_host.lower.lower` (untuned project schedules) + `tvm.compile`, VM `time_evaluator` "
             "number=3 repeat=10 median; torch eager: same protocol. Each engine in a fresh subprocess. "
             "Depthwise layers use the policy default (`direct`). Shared 2-core machine: expect +-15 % noise.", ""]
    lines[-2] += f" Best of {a.passes} passes (engines interleaved); load average at start: {os.getloadavg()[0]:.2f}."
    lines += ["| model | engine | ms | vs torch | max abs err | build s |", "|---|---|---:|---:|---:|---:|"]
    best: dict[tuple[str, str], dict] = {}
    for _ in range(a.passes):
        for model in a.models:
            for engine in a.engines:
                r = _spawn(["model", model, str(a.size), engine])
                key = (model, engine)
                if key not in best or ("ms" in r and ("ms" not in best[key] or r["ms"] < best[key]["ms"])):
                    best[key] = r
    for model in a.models:
        torch_ms = None
        for engine in a.engines:
            r = best[(model, engine)]
            if "error" in r:
                lines.append(f"| {model} | {engine} | error: {r['error'][:80]} | | | |")
                print(model, engine, r["error"], flush=True)
                continue
            if engine == "torch":
                torch_ms = r["ms"]
            ratio = f"{r['ms'] / torch_ms:.2f}x" if torch_ms else ""
            err = f"{r['max_abs_err']:.1e}" if "max_abs_err" in r else ""
            bs = f"{r['build_s']:.1f}" if "build_s" in r else ""
            lines.append(f"| {model} | {engine} | {r['ms']:.2f} | {ratio} | {err} | {bs} |")
            print(model, engine, f"{r['ms']:.2f} ms", ratio, flush=True)
    r = _spawn(["int8", str(a.size), a.int8_algorithm])
    lines += ["", f"## int8 (x int8 -> int32) vs float32, resnet18 conv layers, algorithm `{a.int8_algorithm}`", ""]
    if "error" in r:
        lines.append(f"error: {r['error']}")
    else:
        lines += ["| layer | float32 ms | int8 ms | int8 speedup |", "|---|---:|---:|---:|"]
        tf = ti = 0.0
        for row in r["rows"]:
            tf, ti = tf + row["float32"], ti + row["int8"]
            lines.append(f"| {row['layer']} | {row['float32']:.3f} | {row['int8']:.3f} | {row['float32'] / row['int8']:.2f}x |")
        lines.append(f"| **sum of distinct layers** | {tf:.3f} | {ti:.3f} | {tf / ti:.2f}x |")
        print(f"int8 vs fp32 ({a.int8_algorithm}): {tf:.2f} ms vs {ti:.2f} ms = {tf / ti:.2f}x", flush=True)
    lines.append(f"\nLoad average at end: {os.getloadavg()[0]:.2f}.")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
