"""Whole-model effect of model optimizations through TVM: float32 dense vs int8 vs 90 % pruned (CSR, BSR).

Every TVM variant is compiled by the project's compile path and timed by a freshly spawned local agent
(same thread count), torch eager in a fresh process in the same run; ratios are against float32 dense TVM.

    python benchmarks/bench_optimizations.py [--model resnet18] [--dataset imagenet] [--repeat 10]

Writes benchmarks/results/optimizations.md with the command that produced it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--dataset", default="imagenet")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "optimizations.md")
    args = parser.parse_args()
    os.environ.setdefault("DLAS_DATA_DIR", tempfile.mkdtemp(prefix="dlas-bench-"))

    from dlas_host.bench import RunOptions, bench_engine, bench_tvm
    from dlas_host.compile import BuildSpec
    from dlas_host.devices import load
    from dlas_host.lower.policy import LoweringPolicy
    from dlas_host.store import ResultStore
    from dlas_host.sweep.runner import make_pruned_model

    device = load(ROOT / "devices.yaml").get("local")
    store = ResultStore(Path(os.environ["DLAS_DATA_DIR"]) / "bench.sqlite")
    opts = RunOptions(number=3, repeat=args.repeat)
    dense = LoweringPolicy(algorithm="spatial_pack")
    variants = [
        ("float32 dense (spatial_pack)", BuildSpec(args.model, args.dataset, policy=dense)),
        ("int8 dense (spatial_pack, VNNI)", BuildSpec(args.model, args.dataset, policy=dense, quantize="int8")),
    ]
    # Global L1 pruning of a seeded (untrained) model spreads the zeros unevenly (fan-in decides the weight
    # scale: layer1 keeps ~half its weights, layer4 ~5 %); layer-wise pruning gives every layer the target.
    # Block pruning (4x1 blocks, the policy's BSR block) zeroes whole blocks: BSR stores no zeros.
    prunings = [(f"unstructured:{scope}:l1:{args.sparsity}", f"{args.sparsity:.0%} pruned ({scope})",
                 (("dense kernels", "dense"), ("CSR", "csr"), ("BSR 4x1", "bsr"))) for scope in ("global", "layer")]
    prunings.append((f"block:layer:l1:{args.sparsity}:block=4x1", f"{args.sparsity:.0%} 4x1-block pruned (layer)",
                     (("dense kernels", "dense"), ("BSR 4x1", "bsr"))))
    for prune_spec, tag, kernel_choices in prunings:
        pruned = make_pruned_model(args.model, args.dataset, prune_spec)
        for kernels, fmt in kernel_choices:
            policy = LoweringPolicy(algorithm="spatial_pack", sparse_format=fmt)
            variants.append((f"{tag}, {kernels}", BuildSpec(args.model, args.dataset, policy=policy,
                                                            optimized_model=pruned)))
    rows = []
    torch_row = bench_engine("torch", variants[0][1], device, store, opts)
    for name, spec in variants:
        t0 = time.time()
        row = bench_tvm(spec, device, store, opts)
        print(f"{name}: {row.status} {row.median_ms} ms (err {row.max_abs_err}) in {time.time() - t0:.0f} s",
              file=sys.stderr)
        rows.append((name, row))
    base = rows[0][1].median_ms
    lines = [f"# Model optimizations through TVM: {args.model} @ {args.dataset} (batch 1, {device.threads} threads)", "",
             f"Command: `python benchmarks/bench_optimizations.py --model {args.model} --dataset {args.dataset} "
             f"--repeat {args.repeat} --sparsity {args.sparsity}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             "each TVM variant timed by a fresh local agent (VM time_evaluator number=3, median); torch eager in a "
             "fresh process in the same run. int8 calibrated on seeded inputs (latency study; accuracy needs "
             "`dlas-host optimize` with data). Error: max |out - torch(float model)|.", "",
             "| variant | median ms | IQR ms | vs float32 dense | vs torch eager | max abs err |", "|---|---:|---:|---:|---:|---:|"]
    lines.append(f"| torch eager (float32) | {torch_row.median_ms:.2f} | {torch_row.iqr_ms:.2f} | "
                 f"{base / torch_row.median_ms:.2f}x | 1.00x | 0 |")
    for name, row in rows:
        if row.status != "ok":
            lines.append(f"| {name} | error: {row.error[:80]} | | | | |")
            continue
        lines.append(f"| {name} | {row.median_ms:.2f} | {row.iqr_ms:.2f} | {base / row.median_ms:.2f}x | "
                     f"{torch_row.median_ms / row.median_ms:.2f}x | {row.max_abs_err:.1e} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
