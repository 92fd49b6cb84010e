"""Per-layer profile: the artifact ``bench`` times, with each of its compiled functions timed on the agent.

The agent (``dlas_agent.profile``) times every call the VM makes during a run. Here its call sites are
aligned to the build manifest (each layer names the fused PrimFunc computing it; the k-th call of a
function is the k-th manifest layer naming that function), labelled with what was built, and given FLOPs
(from the layer's shapes and the call's output tensor) and, where the device's peak is estimable, a share
of that peak. Functions that compute no conv/dense layer are grouped by name; runtime builtins in one row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from dlas_agent.protocol import DeviceInfo, ProfileResult

from .devices import Device
from .errors import DlasError

BUILTINS = "(VM builtins)"

# fp32 FLOPs per cycle and core: SIMD lanes x 2 (an FMA is two FLOPs) x FMA units (2 assumed everywhere)
_FLOPS_PER_CYCLE = (
    ("avx512f", 64, "AVX-512: 16 fp32 lanes x 2 (FMA) x 2 FMA units"),
    ("avx2+fma", 32, "AVX2+FMA: 8 fp32 lanes x 2 (FMA) x 2 FMA units"),
    ("asimd", 16, "NEON: 4 fp32 lanes x 2 (FMA) x 2 FMA units"),
    ("neon", 16, "NEON: 4 fp32 lanes x 2 (FMA) x 2 FMA units"),
)


class ProfileError(DlasError, RuntimeError):
    """The profile could not be taken or does not fit the artifact's manifest."""


@dataclass
class Peak:
    """The device's estimated fp32 peak (``gflops`` None when it cannot be estimated) and how it was estimated."""

    gflops: float | None
    assumption: str


@dataclass
class ProfileRow:
    """One conv/dense layer (its call site), or one other function (all its calls), or the VM builtins."""

    index: int  # execution order of the (first) call
    function: str
    layer: str  # manifest layer ("" for functions computing none)
    op: str
    shape: str  # the layer's input * weight shapes, else the call's output shape
    algorithm: str
    layout: str
    format: str
    dtype: str
    ms_per_call: float  # median over the runs
    calls: int
    total_ms: float  # ms_per_call x calls
    mean_ms: float = 0.0  # per run, all calls: the mean over the runs keeps stalls a median leaves out
    percent: float = 0.0  # of the sum of all rows
    flops: int | None = None  # per call
    gflops_per_s: float | None = None
    peak_percent: float | None = None  # of the fp32 peak (float32 layers only)
    compare_ms: float | None = None  # the compared engine's kernel time for the same layer (``--compare``)


@dataclass
class Profile:
    device: str
    model: str
    dataset: str
    artifact_sha256: str
    built: str
    rows: list[ProfileRow]
    sum_ms: float  # all rows: the functions' medians added up
    sum_mean_ms: float  # all rows' means added up (stalls included): what a mean run spends in calls
    instrumented_ms: float  # median run with every call timed
    plain_ms: float  # median run without instrumentation
    repeat: int
    peak: Peak
    unmatched_layers: list[str] = field(default_factory=list)  # manifest layers no call computed
    warnings: list[str] = field(default_factory=list)
    compare: dict[str, Any] = field(default_factory=dict)  # engine, total_ms, layers_ms, other_ms, unmatched_nodes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.strip().split("x")]


def layer_flops(op: str, shape: str, out_shape: list[int] | None) -> int | None:
    """FLOPs of one conv/dense layer (a multiply-add is two): conv ``2*N*K*(C/groups)*R*S*P*Q`` with ``N*K*P*Q``
    the output's element count (any layout), dense ``2*N*K*C``; None when the shapes do not say."""
    try:
        data, weight = (_dims(part) for part in shape.split(" * "))
    except ValueError:
        return None
    if op == "dense":
        return 2 * data[0] * weight[0] * weight[1] if len(data) == 2 and len(weight) == 2 else None
    if len(weight) != 4 or not out_shape:
        return None
    n, k = data[0], weight[0]
    out_elems = math.prod(out_shape)
    if out_elems % (n * k):
        return None  # a padded output tile: P*Q cannot be told
    return 2 * out_elems * weight[1] * weight[2] * weight[3]


def estimate_peak(info: DeviceInfo, threads: int, runtime_device: str = "cpu") -> Peak:
    """fp32 peak = cores x GHz x FLOPs/cycle from the CPU flags (the clock is what the device reported)."""
    if runtime_device != "cpu":
        return Peak(None, f"no peak estimate for {runtime_device} devices")
    flags = set(info.cpu_flags)
    per_cycle = next(((n, why) for flag, n, why in _FLOPS_PER_CYCLE if set(flag.split("+")) <= flags), None)
    if per_cycle is None:
        return Peak(None, "no peak estimate: no AVX-512, AVX2+FMA or NEON among the CPU flags")
    cores = threads if threads > 0 else (info.cores_physical or info.cores_logical)
    if info.cores_physical:
        cores = min(cores, info.cores_physical)  # SMT siblings share the FMA units
    ghz = info.cpu_freq_mhz / 1e3
    if cores <= 0 or ghz <= 0:
        return Peak(None, "no peak estimate: the device reported no core count or clock")
    gflops = cores * ghz * per_cycle[0]
    return Peak(round(gflops, 1), f"fp32 peak {gflops:.0f} GFLOP/s = {cores} cores x {ghz:.2f} GHz (reported clock) "
                                  f"x {per_cycle[0]} FLOP/cycle ({per_cycle[1]}); % of peak for float32 layers only")


def _dtype(layer: Any) -> str:
    kinds = [layer.dtype_in, layer.dtype_weight, layer.dtype_acc]
    return kinds[0] if len(set(kinds)) == 1 else f"{layer.dtype_in}*{layer.dtype_weight}->{layer.dtype_acc}"


def _mean(call: dict[str, Any]) -> float:
    return float(call.get("mean_ms", call["median_ms"]))


def _out(call: dict[str, Any]) -> dict[str, Any]:
    args = call.get("args") or []
    return args[-1] if args else {"shape": [], "dtype": ""}  # destination passing: the output comes last


def _layer_row(call: dict[str, Any], index: int, layer: Any, peak: Peak) -> ProfileRow:
    ms = float(call["median_ms"])
    flops = layer_flops(layer.op, layer.shape, _out(call)["shape"])
    gflops = flops / ms / 1e6 if flops and ms > 0 else None
    fmt = layer.format + (f" {layer.block}" if layer.block else "")
    use_peak = gflops is not None and peak.gflops and layer.dtype_in == layer.dtype_weight == "float32"
    return ProfileRow(index=index, function=call["function"], layer=layer.layer, op=layer.op, shape=layer.shape,
                      algorithm=layer.algorithm, layout=layer.layout or layer.tile, format=fmt, dtype=_dtype(layer),
                      ms_per_call=ms, calls=1, total_ms=ms, mean_ms=_mean(call), flops=flops, gflops_per_s=gflops,
                      peak_percent=100 * gflops / peak.gflops if use_peak else None)


def build_rows(result: ProfileResult, layers: list[Any], peak: Peak) -> tuple[list[ProfileRow], list[str]]:
    """(rows in execution order, manifest layers no call computed) from the agent's call sites."""
    by_function: dict[str, list[Any]] = {}
    for layer in layers:
        by_function.setdefault(layer.function, []).append(layer)
    rows: list[ProfileRow] = []
    others: dict[str, ProfileRow] = {}
    done: set[str] = set()
    for index, call in enumerate(result.calls):
        owners = by_function.get(call["function"], [])
        occurrence = int(call.get("occurrence", 0))
        if occurrence < len(owners):
            rows.append(_layer_row(call, index, owners[occurrence], peak))
            done.add(owners[occurrence].layer)
            continue
        ms = float(call["median_ms"])
        row = others.get(call["function"])
        if row is None:
            out = _out(call)
            row = others[call["function"]] = ProfileRow(
                index=index, function=call["function"], layer="", op="", shape="x".join(map(str, out["shape"])),
                algorithm="-", layout="-", format="-", dtype=out["dtype"], ms_per_call=0.0, calls=0, total_ms=0.0)
            rows.append(row)
        row.calls += 1
        row.total_ms += ms
        row.mean_ms += _mean(call)
        row.ms_per_call = row.total_ms / row.calls
    if result.builtins:
        total = sum(float(b["median_ms"]) for b in result.builtins)
        calls = sum(int(b["calls"]) for b in result.builtins)
        rows.append(ProfileRow(index=len(result.calls), function=BUILTINS, layer="", op="", shape="-",
                               algorithm="-", layout="-", format="-", dtype="-", ms_per_call=total / max(calls, 1),
                               calls=calls, total_ms=total, mean_ms=sum(_mean(b) for b in result.builtins)))
    grand = sum(r.total_ms for r in rows)
    for row in rows:
        row.percent = 100 * row.total_ms / grand if grand > 0 else 0.0
    return rows, [layer.layer for layer in layers if layer.layer not in done]


# onnxruntime's conv and dense kernels (fused, NCHWc-blocked and quantized forms included)
ENGINE_CONV_OPS = {"Conv", "FusedConv", "NhwcFusedConv", "QLinearConv", "ConvInteger"}
ENGINE_DENSE_OPS = {"Gemm", "FusedGemm", "MatMul", "FusedMatMul", "QLinearMatMul"}


def _engine_signature(node: dict[str, Any]) -> tuple[str, int, int] | None:
    """What a node computes, blind to layout and blocking: a conv by (input, weight) elements, a dense layer
    by (input, output) elements (its prepacked weight is not in the trace)."""
    ins, outs = node.get("inputs") or [], node.get("outputs") or []
    if node.get("op") in ENGINE_CONV_OPS and len(ins) >= 2 and ins[0] and ins[1]:
        return "conv", math.prod(ins[0]), math.prod(ins[1])
    if node.get("op") in ENGINE_DENSE_OPS and ins and ins[0] and outs and outs[0]:
        return "dense", math.prod(ins[0]), math.prod(outs[0])
    return None


def _layer_signature(row: ProfileRow) -> tuple[str, int, int] | None:
    try:
        data, weight = (_dims(part) for part in row.shape.split(" * "))
    except ValueError:
        return None
    if row.op == "dense":
        return ("dense", math.prod(data), data[0] * weight[0]) if data and weight else None
    return "conv", math.prod(data), math.prod(weight)


def align_engine(rows: list[ProfileRow], nodes: list[dict[str, Any]], engine: str) -> dict[str, Any]:
    """Give each conv/dense row the engine's kernel time for the same layer, matched by what it computes
    (element counts no layout or channel blocking changes), in execution order among equal ones."""
    queue: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for node in nodes:
        sig = _engine_signature(node)
        if sig is not None:
            queue.setdefault(sig, []).append(node)
    layers_ms = tvm_ms = 0.0
    for row in sorted(rows, key=lambda r: r.index):
        sig = _layer_signature(row) if row.layer else None
        if sig is None:
            continue
        waiting = queue.get(sig)
        if waiting:
            row.compare_ms = float(waiting.pop(0)["ms"])
            layers_ms += row.compare_ms
            tvm_ms += row.total_ms
    total = sum(float(n.get("ms", 0.0)) for n in nodes)
    return {"engine": engine, "total_ms": total, "layers_ms": layers_ms, "other_ms": total - layers_ms,
            "tvm_same_layers_ms": tvm_ms, "unmatched_nodes": [n["node"] for q in queue.values() for n in q]}


def profile_on_device(spec: Any, device: Device, *, repeat: int = 10, warmup: int = 2, force: bool = False,
                      cache: Any = None, timeouts: Any = None, compare: str | None = None,
                      progress: Callable[[str], None] = lambda _msg: None) -> Profile:
    """Build (or reuse) the artifact exactly as ``bench`` does and profile it on ``device``'s agent;
    ``compare``: also profile that framework engine's own graph (local device) and align it layer by layer."""
    from .compile import CompileError, artifact_manifest, compile_artifact, example_inputs, with_stored_model
    from .fleet.health import job_session
    from .fleet.locks import device_lock, lock_wait_s
    from .lower import manifest as mf

    spec = with_stored_model(spec)
    if compare and device.connection.type != "local":
        raise ProfileError(f"--compare {compare}: framework engines run on the local device only "
                           f"({device.name} is {device.connection.type})")
    progress(f"compiling {spec.model}/{spec.dataset} for {device.name}")
    artifact = compile_artifact(spec, device, cache, force=force)
    layers = artifact_manifest(artifact)
    try:
        mf.check(layers, spec.policy, spec.quantize or "float32")
    except mf.ManifestError as exc:
        raise CompileError(str(exc)) from None
    progress(f"profiling on {device.name} ({'cached' if artifact.cached else 'new'} artifact)")
    with device_lock(device, lock_wait_s(), purpose=f"profiling {spec.model}/{spec.dataset}"), \
            job_session(device, timeouts) as client:
        info = client.device_info()
        result = client.profile(artifact.path, artifact.sha256, example_inputs(spec), repeat=repeat, warmup=warmup,
                                num_threads=device.threads)
    if not result.ok or result.total is None or result.plain is None:
        raise ProfileError(f"{device.name}: profile failed: {result.error or 'no timings came back'}")
    peak = estimate_peak(info, device.threads, device.runtime_device)
    rows, unmatched = build_rows(result, layers, peak)
    warnings = list(result.warnings)
    if unmatched:
        warnings.append(f"{len(unmatched)} manifest layer(s) matched no call: {', '.join(unmatched[:5])}")
    compared: dict[str, Any] = {}
    if compare:
        from .bench import engine_node_profile  # noqa: PLC0415

        progress(f"profiling {compare} on {device.name}")
        with device_lock(device, lock_wait_s(), purpose=f"profiling {compare} {spec.model}/{spec.dataset}"):
            try:
                nodes = engine_node_profile(compare, spec, device.threads, runs=repeat, warmup=warmup,
                                            device=device.runtime_device)
            except RuntimeError as exc:  # EngineSkipped too: the engine cannot profile here
                raise ProfileError(str(exc)) from None
        compared = align_engine(rows, nodes, compare)
        if spec.quantize not in (None, "float32"):
            warnings.append(f"{compare} runs the float32 model; the TVM build is {spec.quantize}")
    return Profile(device=device.name, model=spec.model, dataset=spec.dataset, artifact_sha256=artifact.sha256,
                   built=mf.summary(layers), rows=rows, sum_ms=sum(r.total_ms for r in rows),
                   sum_mean_ms=sum(r.mean_ms for r in rows),
                   instrumented_ms=result.total.median_ms, plain_ms=result.plain.median_ms, repeat=result.repeat,
                   peak=peak, unmatched_layers=unmatched, warnings=warnings, compare=compared)
