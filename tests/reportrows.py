"""Result rows for the report tests, shaped exactly as ``ResultStore.query`` returns them (every column, JSON
fields decoded, an ``id``), with raw samples drawn around a chosen median so that the statistics have
something real to test."""

from __future__ import annotations

import itertools
import json
import zlib
from dataclasses import asdict
from typing import Any

import numpy as np

from dlas_host.store import ResultRow

X86_FLAGS = ["sse4_2", "avx2", "fma", "f16c", "avx512f", "avx512_vnni"]  # int8 native, no float16 arithmetic
ARM_FLAGS = ["fp", "asimd", "asimdhp", "fphp", "asimddp"]  # float16 and int8 native


def samples(ms: float, noise: float = 0.01, n: int = 10, seed: int = 0) -> list[float]:
    """``n`` timings around ``ms`` with a relative spread of ``noise`` (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    return [float(v) for v in ms * (1 + noise * rng.standard_normal(n))]


def device_env(flags: list[str], arch: str = "x86_64", gpus: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"arch": arch, "cpu_model": f"test {arch} CPU", "cpu_flags": flags, "cores_logical": 4,
            "tvm_version": "0.27.0", "agent_version": "0.1.0", "gpus": gpus or []}


def manifest(density: float, layers: int = 4, fmt: str = "dense", algorithm: str = "direct",
             dtype: str = "float32") -> list[dict[str, Any]]:
    """A build manifest of ``layers`` 64x64x3x3 convolutions storing ``density`` of their weights."""
    return [{"layer": f"conv2d_{i}", "op": "conv2d", "shape": "1x64x8x8 * 64x64x3x3",
             "algorithm": "sparse" if fmt != "dense" else algorithm, "layout": "NCHW", "tile": "NCHW", "format": fmt,
             "block": "", "density": density, "dtype_in": dtype, "dtype_weight": dtype, "dtype_acc": dtype,
             "kernel": f"{fmt}_conv" if fmt != "dense" else algorithm, "schedule": "default", "function": f"f{i}",
             "note": ""} for i in range(layers)]


_ids = itertools.count(1)


def row(ms: float | None = 10.0, noise: float = 0.01, n: int = 10, seed: int | None = None, rid: int | None = None,
        **fields: Any) -> dict[str, Any]:
    """One store row; ``ms`` (None: no timing) sets the median its ``n`` samples are drawn around."""
    base: dict[str, Any] = dict(dataset="cifar10", model="resnet18", system="tvm", device="local", algorithm="direct",
                                layout="NCHW", tuning="untuned", target=json.dumps({"kind": "llvm"}),
                                device_env=device_env(X86_FLAGS))
    if fields.get("system", "tvm") != "tvm":
        base.update(algorithm="n/a", layout="n/a", tuning="n/a")
    base.update(fields)
    rid = next(_ids) if rid is None else rid
    r = ResultRow(**base)
    if ms is not None and r.status == "ok":
        # the default seed follows the row's content, not the order tests make rows in
        seed = zlib.crc32(repr((ms, noise, n, sorted((k, repr(v)) for k, v in fields.items()))).encode()) \
            if seed is None else seed
        r.samples_ms = samples(ms, noise, n, seed)
        r.median_ms = float(np.median(r.samples_ms))
        r.n = n
        q1, q3 = np.percentile(r.samples_ms, [25, 75])
        r.iqr_ms = float(q3 - q1)
        if r.median_ms and r.iqr_ms / r.median_ms > 0.10:
            r.warnings = [*r.warnings, f"unstable: IQR is {100 * r.iqr_ms / r.median_ms:.0f}% of the median"]
    out = asdict(r)
    out["id"] = rid
    return out


def tvm(ms: float, **fields: Any) -> dict[str, Any]:
    """A TVM row whose ``extra.asked`` and ``built``/``manifest`` say what was built."""
    fields.setdefault("extra", {})
    fmt = fields.get("sparse_format", "dense")
    asked_algo = fields.pop("asked_algorithm", fields.get("algorithm", "direct"))
    fields["extra"].setdefault("asked", {"algorithm": asked_algo, "sparse_format": fmt,
                                         "quantization": fields.get("quantization", "float32")})
    density = fields.pop("density", None)
    if density is not None:
        fields.setdefault("manifest", manifest(density, fmt=fmt, algorithm=asked_algo,
                                               dtype=fields.get("quantization", "float32")))
        fields.setdefault("built", f"conv: 4 {'sparse' if fmt != 'dense' else asked_algo} "
                                   f"{fields.get('quantization', 'float32')}")
    return row(ms, **fields)


def quick_local_rows() -> list[dict[str, Any]]:
    """A realistic planted sweep on `local` shaped like a quick preset that crosses every layer once: resnet18/
    cifar10; direct and spatial_pack, untuned and tuned; float32, float16 and int8; a pruned model (80 %)
    dense and CSR; torch eager; models of three sizes with accuracy; the agent's transfer timing.

    Medians follow what this project measured on x86 (spatial pack ahead of direct, tuning reorders them,
    int8 faster with VNNI, float16 slower without native arithmetic, CSR ahead at 80 %)."""
    sid = "quick-like"
    out = []
    for algo, untuned, tuned in (("direct", 8.0, 6.6), ("spatial_pack", 9.0, 5.0)):
        for tuning, ms in (("untuned", untuned), ("tuned", tuned)):
            out.append(tvm(ms, algorithm=algo, tuning=tuning, sweep_id=sid, artifact_bytes=45_000_000,
                           top1=0.93, extra={"transfer_ms": 0.05, "compute_ms": ms}))
        out.append(tvm(untuned * 0.55, algorithm=algo, quantization="int8", sweep_id=sid, artifact_bytes=12_000_000,
                       top1=0.925))
        out.append(tvm(untuned * 1.8, algorithm=algo, quantization="float16", sweep_id=sid,
                       artifact_bytes=23_000_000, top1=0.93))
        out.append(tvm(untuned * 0.98, algorithm=algo, pruning="model:pr80", density=0.2, sweep_id=sid,
                       artifact_bytes=45_000_000, top1=0.91))
        out.append(tvm(untuned * 0.6, algorithm="sparse" if algo == "direct" else algo, asked_algorithm=algo,
                       sparse_format="csr", pruning="model:pr80", density=0.2, sweep_id=sid,
                       artifact_bytes=14_000_000, top1=0.91))
    out.append(row(20.0, system="torch", sweep_id=sid))
    for model, size, ms, top1 in (("mobilenet_v2", 9_000_000, 2.1, 0.92), ("vgg16", 60_000_000, 22.0, 0.90),
                                  ("resnet50", 95_000_000, 18.0, 0.95)):
        out.append(tvm(ms, model=model, algorithm="spatial_pack", sweep_id=sid, artifact_bytes=size, top1=top1))
    out.append(row(None, status="error", error="local: compile failed: out of memory", algorithm="gemm", sweep_id=sid))
    return out


def paper_like_rows(devices: tuple[str, ...] = ("local", "pi", "jetson"), seed: int = 0) -> list[dict[str, Any]]:
    """Thousands of rows crossing every dimension as the dlas-paper preset does (models x pruning x types x
    algorithms x formats x tunings x devices, framework baselines, failures), built without the store."""
    rng = np.random.default_rng(seed)
    envs = {"local": device_env(X86_FLAGS), "pi": device_env(ARM_FLAGS, "aarch64"),
            "jetson": device_env(ARM_FLAGS, "aarch64", [{"name": "Orin", "compute_capability": "8.7"}])}
    out = []
    rid = 0
    for sweep, dev, model, ds in itertools.product(("p1",), devices, ("resnet18", "mobilenet_v2", "vgg16"),
                                                   ("cifar10", "imagenet")):
        target = json.dumps({"kind": "cuda" if dev == "jetson" else "llvm"})
        env = envs.get(dev, device_env(X86_FLAGS))
        base_ms = float(rng.uniform(2, 60))
        for pruning, density in (("none", 1.0), ("model:u80", 0.2), ("model:c50", 1.0)):
            for quant, algo, fmt, tuning in itertools.product(("float32", "float16", "int8"),
                                                              ("direct", "gemm", "spatial_pack"), ("dense", "csr"),
                                                              ("untuned", "tuned")):
                if fmt == "csr" and (pruning != "model:u80" or quant == "float16"):
                    continue
                rid += 1
                ms = base_ms * float(rng.uniform(0.3, 2.5))
                status = "error" if rng.random() < 0.03 else "ok"
                out.append(tvm(ms if status == "ok" else None, rid=rid, noise=float(rng.choice([0.01, 0.02, 0.15])),
                               device=dev, model=model, dataset=ds, pruning=pruning, quantization=quant,
                               algorithm=algo, sparse_format=fmt, tuning=tuning, density=density, sweep_id=sweep,
                               target=target, device_env=env, status=status,
                               error="timeout" if status == "error" else "",
                               artifact_bytes=int(rng.uniform(5e6, 1e8)),
                               top1=float(rng.uniform(0.6, 0.95)) if rng.random() < 0.5 else None,
                               extra={"transfer_ms": float(rng.uniform(0.1, 3)), "compute_ms": ms}
                               if dev == "jetson" else {}))
            for system in ("torch", "onnxruntime"):
                rid += 1
                local = dev == "local"
                out.append(row(base_ms * float(rng.uniform(0.5, 3)) if local else None, rid=rid, system=system,
                               device=dev, model=model, dataset=ds, pruning=pruning, sweep_id=sweep, target=target,
                               status="ok" if local else "skipped",
                               error="" if local else f"{system} baseline runs on the local device only"))
    return out
