"""On-device evaluation throughput against what the timed latency predicts (issue #15 target: >= 0.8x).

For each model, one real `bench_tvm` job on the `local` device with ``eval_images=0`` (the whole digits test
split, 359 images): the agent times the artifact, then runs the same artifact over the images. The ratio is
(images x timed median latency) / evaluation time, inside the model calls (``compute``) and end to end on
the host (uploads, calls, downloads: ``end-to-end``). 1.0 means evaluation costs exactly what timing
predicts. Writes ``benchmarks/results/accuracy.md``.

    PYTHONPATH=host:agent python benchmarks/bench_accuracy.py [--models resnet18 mobilenet_v2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    args = parser.parse_args()
    os.environ.setdefault("DLAS_DATA_DIR", tempfile.mkdtemp(prefix="dlas-bench-acc-"))

    from dlas_host import zoo
    from dlas_host.bench import RunOptions, bench_tvm
    from dlas_host.compile import BuildSpec
    from dlas_host.devices import load
    from dlas_host.optimize import modelstore
    from dlas_host.store import ResultStore

    device = load(ROOT / "devices.yaml").get("local")
    store = ResultStore(Path(os.environ["DLAS_DATA_DIR"]) / "bench.sqlite")
    lines = ["| model | images | timed median ms | eval compute s | eval end-to-end s | compute ratio | "
             "end-to-end ratio | top-1 |", "|---|---|---|---|---|---|---|---|"]
    for name in args.models:
        entry = modelstore.save(zoo.create(name, "cifar10", seed=0), {"base_model": name, "dataset": "digits",
                                                                       "prune": None, "quantize": None})
        row = bench_tvm(BuildSpec(model=name, dataset="digits", optimized_model=entry.id), device, store,
                        RunOptions(number=3, repeat=10, eval_images=0))
        if row.status != "ok":
            print(f"{name}: {row.status}: {row.error}")
            continue
        ev = row.extra["eval"]
        line = (f"| {name} | {ev['images']} | {row.median_ms:.2f} | {ev['compute_s']:.2f} | {ev['wall_s']:.2f} | "
                f"{ev['vs_timed_latency']:.2f}x | {ev['vs_timed_latency_end_to_end']:.2f}x | {row.top1:.3f} |")
        print(line, "(load warning)" if any("inflated" in w for w in row.warnings) else "")
        lines.append(line)
    out = ROOT / "benchmarks" / "results" / "accuracy.md"
    out.write_text("# On-device evaluation vs timed latency\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
