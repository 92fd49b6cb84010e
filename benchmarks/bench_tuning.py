"""Tuned vs untuned TVM against torch eager, torch.compile and onnxruntime, with a trials-vs-latency curve.

For each model: the framework baselines (each in a fresh process, same threads), TVM untuned (the
project's default schedules), then tuning on the local agent over RPC up to each trial budget in turn
(budgets are cumulative: the tuner resumes from its records), benchmarking the tuned build after each.
Records go to a fresh directory, so the run starts from zero.

    python benchmarks/bench_tuning.py [--cases resnet18:imagenet,resnet18:cifar10,mobilenet_v2:imagenet]
                                      [--budgets 24,64,128] [--repeat 10]

Writes benchmarks/results/tuning.md and tuning_curve.png with the command that produced them.
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
    parser.add_argument("--cases", default="resnet18:imagenet,resnet18:cifar10,mobilenet_v2:imagenet")
    parser.add_argument("--budgets", default="24,64,128")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--space", default="dlas")
    parser.add_argument("--rounds", type=int, default=3, help="alternating untuned/tuned re-timings at the end")
    parser.add_argument("--no-torch-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tuning.md")
    args = parser.parse_args()
    os.environ.setdefault("DLAS_DATA_DIR", tempfile.mkdtemp(prefix="dlas-bench-"))
    os.environ["DLAS_TUNING_DIR"] = tempfile.mkdtemp(prefix="dlas-bench-tuning-")

    from dlas_host.bench import RunOptions, bench_engine, bench_tvm
    from dlas_host.compile import BuildSpec
    from dlas_host.devices import load
    from dlas_host.store import ResultStore
    from dlas_host.tune.tuner import Tuner, TuneOptions

    device = load(ROOT / "devices.yaml").get("local")
    store = ResultStore(Path(os.environ["DLAS_DATA_DIR"]) / "bench.sqlite")
    opts = RunOptions(number=3, repeat=args.repeat)
    budgets = [int(b) for b in args.budgets.split(",")]
    engines = ["torch", "onnxruntime"] + ([] if args.no_torch_compile else ["torch_compile"])
    command = " ".join(["python benchmarks/bench_tuning.py"] + sys.argv[1:])
    sections, curves, bases = [], {}, {}

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    for case in args.cases.split(","):
        model, dataset = case.split(":")
        spec = BuildSpec(model, dataset)
        base = {}
        for engine in engines:
            row = bench_engine(engine, spec, device, store, opts)
            base[engine] = row
            log(f"{case} {engine}: {row.status} {row.median_ms} {row.error[:80]}")
        untuned = bench_tvm(spec, device, store, opts)
        log(f"{case} tvm untuned: {untuned.status} {untuned.median_ms}")
        curve = [(0, 0.0, untuned)]
        tuning_s = 0.0
        for budget in budgets:
            report = Tuner(BuildSpec(model, dataset, tuning="tuned"), [device],
                           TuneOptions(trials=budget, space=args.space)).run()
            tuning_s += report.elapsed_s
            row = bench_tvm(BuildSpec(model, dataset, tuning="tuned"), device, store, opts)
            trials = sum(t.done for t in report.tasks)
            log(f"{case} tuned @{budget} ({trials} trials, {tuning_s:.0f} s): {row.status} {row.median_ms} "
                f"{row.error[:80]}")
            curve.append((trials, tuning_s, row))
        curves[case] = curve
        bases[case] = base
        # Drift check: the machine's speed wanders over minutes; re-time untuned and the final tuned build
        # alternately (the cached artifacts, fresh agents) so their ratio is measured side by side.
        final = BuildSpec(model, dataset, tuning="tuned")
        pairs = []
        for _ in range(args.rounds):
            u = bench_tvm(spec, device, store, opts)
            t = bench_tvm(final, device, store, opts)
            if u.status == t.status == "ok":
                pairs.append((u.median_ms, t.median_ms))
        sections.append(_section(case, base, untuned, curve, pairs))
        log(f"{case} alternating untuned/tuned: {pairs}")
    lines = [f"# Tuning (MetaSchedule over the agent's RPC) vs framework baselines ({device.threads} threads, batch 1)",
             "", f"Command: `{command}`  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Every number from this one run: "
             "baselines in fresh processes with the same thread count, TVM builds timed by a freshly spawned "
             "local agent (VM time_evaluator, number=3, median of the samples). Tuning: design space "
             f"`{args.space}`, 8 candidates per round, records starting empty; budgets are cumulative "
             "(each row resumes from the records of the one above).", ""]
    for s in sections:
        lines += s
    png = args.out.with_name("tuning_curve.png")
    _plot(curves, bases, path=png)
    lines += [f"![trials vs latency]({png.name})", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _ms(row) -> str:
    return f"{row.median_ms:.2f}" if row.status == "ok" and row.median_ms is not None else f"{row.status}"


def _section(case: str, base: dict, untuned, curve: list, pairs: list) -> list[str]:
    torch_ms = base["torch"].median_ms if base["torch"].status == "ok" else None
    ort = base.get("onnxruntime")
    ort_ms = ort.median_ms if ort is not None and ort.status == "ok" else None
    lines = [f"## {case}", "", "| system | trials | tuning s | median ms | IQR ms | vs torch eager | vs onnxruntime | max abs err |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def ratio(ref, row) -> str:
        return f"{ref / row.median_ms:.2f}x" if ref and row.status == "ok" and row.median_ms else "-"

    for engine, row in base.items():
        if row.status != "ok":
            lines.append(f"| {engine} | | | {row.status}: {row.error[:60]} | | | | |")
            continue
        err = f"{row.max_abs_err:.1e}" if row.max_abs_err is not None else "-"
        lines.append(f"| {engine} | | | {_ms(row)} | {row.iqr_ms or 0:.2f} | {ratio(torch_ms, row)} | "
                     f"{ratio(ort_ms, row)} | {err} |")
    for trials, secs, row in curve:
        name = "TVM untuned (project schedules)" if trials == 0 else "TVM tuned"
        err = f"{row.max_abs_err:.1e}" if row.max_abs_err is not None else "-"
        lines.append(f"| {name} | {trials} | {secs:.0f} | {_ms(row)} | {row.iqr_ms or 0:.2f} | {ratio(torch_ms, row)} | "
                     f"{ratio(ort_ms, row)} | {err} |")
    best = min((r for _, _, r in curve if r.status == "ok"), key=lambda r: r.median_ms, default=None)
    if best is not None and untuned.status == "ok":
        lines += ["", f"Best TVM: {best.median_ms:.2f} ms ({untuned.median_ms / best.median_ms:.2f}x over untuned"
                  + (f", {torch_ms / best.median_ms:.2f}x over torch eager" if torch_ms else "")
                  + (f", {ort_ms / best.median_ms:.2f}x of onnxruntime's speed" if ort_ms else "") + ")."]
    if pairs:
        import statistics

        u = statistics.median(p[0] for p in pairs)
        t = statistics.median(p[1] for p in pairs)
        lines += ["", f"Re-timed alternately at the end ({len(pairs)} rounds of untuned then tuned, each a fresh "
                  f"agent): untuned {u:.2f} ms, tuned {t:.2f} ms, tuned/untuned speedup {u / t:.3f}x "
                  f"(per round: {', '.join(f'{a / b:.3f}x' for a, b in pairs)})."]
    return lines + [""]


COLORS = {"torch": "tab:red", "onnxruntime": "tab:green", "torch_compile": "tab:purple"}


def _plot(curves: dict, base_lines: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, (case, curve) in zip(axes[0], curves.items()):
        pts = [(t, r.median_ms) for t, _, r in curve if r.status == "ok"]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label="TVM (0 = untuned)")
        for engine, row in base_lines[case].items():
            if row.status == "ok" and row.median_ms:
                ax.axhline(row.median_ms, linestyle="--", linewidth=1, label=engine, color=COLORS.get(engine))
        ax.set_title(case)
        ax.set_xlabel("tuning trials")
        ax.set_ylabel("latency ms (median)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
