"""``dlas-host profile``: time each fused function of the artifact ``bench`` would time, on the device's agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from .cli_common import DevicesOpt, JsonOpt, build_spec, dim_option, emit_json, err, out, status, to_json, user_errors
from .cli_common import registry_of


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_profile(profile: Any, order: str = "time") -> None:
    """The profile as a table (slowest first, or in execution order), then the totals and the peak's assumption."""
    rows = sorted(profile.rows, key=lambda r: -r.total_ms if order == "time" else r.index)
    table = Table(title=f"profile: {profile.model}/{profile.dataset} on {profile.device} ({profile.built})")
    left = ("function / layer", "shape", "algo/layout/fmt", "dtype")
    engine = profile.compare.get("engine", "")
    extra = (f"{engine} ms", f"{engine}/tvm") if engine else ()
    for col in ("#", *left, "ms/call", "calls", "% total", "GFLOP/s", "% peak", *extra):
        table.add_column(col, justify="left" if col in left else "right", no_wrap=True, overflow="ellipsis",
                         max_width=28 if col == "function / layer" else None)
    for r in rows:  # a layer by its manifest name (--json has its function), other functions by theirs
        fmt = "" if r.format == "dense" else f"/{r.format}"
        algo = f"{r.algorithm}/{r.layout or '-'}{fmt}" if r.layer else "-"
        cells = [str(r.index), r.layer or r.function, r.shape, algo, r.dtype, f"{r.ms_per_call:.3f}",
                 str(r.calls), f"{r.percent:.1f}", _num(r.gflops_per_s, ".1f"), _num(r.peak_percent, ".1f")]
        if engine:  # below 1: the engine's kernel for this layer is faster than TVM's
            ratio = r.compare_ms / r.total_ms if r.compare_ms is not None and r.total_ms > 0 else None
            cells += [_num(r.compare_ms, ".3f"), _num(ratio, ".2f")]
        table.add_row(*cells)
    out.print(table)
    if engine:
        c = profile.compare
        out.print(f"{engine}: kernels {c['total_ms']:.3f} ms in all; the conv/dense layers matched above "
                  f"{c['layers_ms']:.3f} ms (TVM {c['tvm_same_layers_ms']:.3f} ms for the same layers), other nodes "
                  f"{c['other_ms']:.3f} ms (medians of its profiler)", highlight=False)
        if c["unmatched_nodes"]:
            err.print(f"[yellow]warning:[/] {len(c['unmatched_nodes'])} {engine} conv/dense node(s) matched no layer: "
                      f"{', '.join(c['unmatched_nodes'][:5])}", highlight=False)
    out.print(f"sum of functions {profile.sum_ms:.3f} ms (their means: {profile.sum_mean_ms:.3f} ms); run "
              f"{profile.instrumented_ms:.3f} ms instrumented, {profile.plain_ms:.3f} ms plain (medians of "
              f"{profile.repeat} runs)", highlight=False)
    if profile.sum_mean_ms > 1.2 * profile.sum_ms:
        out.print("means well above medians: stalls (a competing process preempting a kernel's threads) hit "
                  "some call in most runs; ms/call are medians, without them", highlight=False)
    out.print(profile.peak.assumption, highlight=False)
    for warning in profile.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)


def profile_cmd(
    device: str = typer.Option("local", help="device from devices.yaml"),
    model: str = dim_option("model"),
    dataset: str = dim_option("dataset"),
    batch: int = typer.Option(1, min=1),
    algorithm: str = dim_option("algorithm"),
    layout: str = dim_option("layout"),
    sparse_format: str = dim_option("sparse_format"),
    bsr_block: str = dim_option("bsr_block"),
    sparsity: float = typer.Option(0.0, help="random unstructured weight sparsity for speed studies"),
    quantize: str = dim_option("quantization", "--quantize"),
    tuning: str = dim_option("tuning"),
    checkpoint: Optional[Path] = typer.Option(None, help="local torch checkpoint (state_dict)"),
    optimized_model: Optional[str] = typer.Option(None, "--model-id", help="stored optimized model id"),
    repeat: int = typer.Option(10, min=1, help="instrumented runs (medians over them)"),
    warmup: int = typer.Option(2, min=0, help="untimed runs first"),
    order: str = typer.Option("time", help="table order: time (slowest first) | graph (execution order)"),
    compare: Optional[str] = typer.Option(None, help="also profile this framework engine's graph (onnxruntime) "
                                                     "on the local device and align its kernels layer by layer"),
    force: bool = typer.Option(False, help="rebuild even if cached"),
    out_file: Optional[Path] = typer.Option(None, "--out", help="also write the profile as JSON to this file"),
    as_json: bool = JsonOpt,
    devices_file: Optional[Path] = DevicesOpt,
) -> None:
    """Time each fused function (layer) of the artifact on the device; FLOP rates and share of peak."""
    from .profile import profile_on_device

    with user_errors():
        if order not in ("time", "graph"):
            raise typer.BadParameter(f"unknown order {order!r}; known: time, graph")
        dev = registry_of(devices_file).get(device)
        spec = build_spec(model, dataset, batch, algorithm, layout, sparse_format, sparsity, quantize, tuning,
                          checkpoint, optimized_model, bsr_block=bsr_block)
        with status(f"profile: {model}/{dataset} on {device}") as progress:
            profile = profile_on_device(spec, dev, repeat=repeat, warmup=warmup, force=force, compare=compare,
                                        progress=progress)
        if out_file:
            out_file.write_text(to_json(profile.to_dict()) + "\n")
    if as_json:
        emit_json(profile.to_dict())
    else:
        print_profile(profile, order)
        if out_file:
            err.print(f"wrote {out_file}")
