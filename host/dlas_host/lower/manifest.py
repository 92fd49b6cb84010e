"""Build manifest: what lowering really emitted, layer by layer, read back from the lowered module.

Every conv/dense layer the dispatcher legalized is found again in the fused module by the constants its
kernel call takes (fingerprints of the packed weights), and described from that call's PrimFunc: the
kernel named by the anchor block's ``dlas_sched`` annotation (or a sparse kernel's ``dlas_kernel``
attribute, or TVM's own reduction block), the dtypes of the buffers the kernel reads and accumulates
into, the stored weights' dtype and density. Nothing is copied from the request, so ``check`` can compare
the two and a result row's labels can be computed from what was built (``labels``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable

import numpy as np

from . import registry
from ..errors import DlasError

DTYPE_OF_QUANT = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "int8": "int8"}


class ManifestError(DlasError, ValueError):
    """The built module contradicts the request, or a layer's kernel cannot be found in it."""


@dataclass(frozen=True)
class LayerBuild:
    layer: str  # conv2d_N / dense_N, in graph order
    op: str  # conv2d | grouped_conv2d | depthwise_conv2d | dense
    shape: str  # input shape * weight shape (OIHW / out x in)
    algorithm: str  # registered algorithm, "sparse" or "stock"
    layout: str  # graph layout the kernel reads (NCHW / NHWC; "" for dense layers)
    tile: str  # layout of the register tile (NCHWc for packed kernels)
    format: str  # dense | csr | bsr | coo
    block: str  # stored block of a sparse weight ("4x1"), "" when dense
    density: float  # nonzero weights actually stored / weights of the layer
    dtype_in: str  # what the kernel reads (uint8 for x86 VNNI's shifted int8)
    dtype_weight: str
    dtype_acc: str
    kernel: str  # registry name, sparse kernel or TVM block name
    schedule: str  # default | tuned | generic (TVM's) | fixed (pre-scheduled sparse kernels)
    function: str = ""  # the fused PrimFunc that computes it
    note: str = ""  # why a layer differs from the policy's main choice

    @property
    def is_conv(self) -> bool:
        return self.op != "dense"


def fingerprint(const: Any) -> str:
    arr = const.value.numpy()
    digest = hashlib.sha1(np.ascontiguousarray(arr).view(np.uint8).tobytes()).hexdigest()[:16]
    return f"{arr.dtype}{list(arr.shape)}:{digest}"


def call_constants(expr: Any) -> list[Any]:
    """The constant arguments of a ``call_tir`` (empty for anything else)."""
    from tvm import relax  # noqa: PLC0415
    from tvm.ir.expr import Constant  # noqa: PLC0415

    if not isinstance(expr, relax.Call) or getattr(expr.op, "name", "") != "relax.call_tir":
        return []
    return [a for a in expr.args[1].fields if isinstance(a, Constant)]


def _calls(mod: Any) -> Iterable[Any]:
    from tvm import relax  # noqa: PLC0415

    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.call_tir":
                yield value


def _root_blocks(func: Any) -> list[Any]:
    from tvm import s_tir  # noqa: PLC0415

    try:
        sch = s_tir.Schedule(func)
        return [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
    except Exception:  # noqa: BLE001 - a hand-written kernel has no root block
        return []


def _attr(func: Any, key: str) -> str:
    return str(func.attrs[key]) if func.attrs is not None and key in func.attrs else ""


def _describe(func: Any, call: Any, plan: Any, consts: list[Any], function: str) -> LayerBuild:
    weight = weight_of(consts).value.numpy()
    size = int(np.prod(plan.weight_shape))
    common = dict(layer=plan.name, op=plan.op,
                  shape="x".join(map(str, plan.in_shape)) + " * " + "x".join(map(str, plan.weight_shape)),
                  density=round(float(np.count_nonzero(weight)) / size, 4), dtype_weight=str(weight.dtype),
                  note=plan.note, function=function)
    kernel_attr = _attr(func, "dlas_kernel")
    if kernel_attr:  # a pre-scheduled sparse kernel
        fmt = _attr(func, "dlas_format")
        block = _attr(func, "dlas_block")
        return LayerBuild(**common, algorithm="sparse", layout=_attr(func, "dlas_layout"),
                          tile=_attr(func, "dlas_layout"), format=fmt, block=block if fmt == "bsr" else "",
                          dtype_in=str(call.args[1].fields[0].ty.dtype), dtype_acc=_attr(func, "dlas_acc"),
                          kernel=kernel_attr, schedule="fixed")
    blocks = _root_blocks(func)
    anchors = [b for b in blocks if "dlas_sched" in b.annotations]
    if anchors:
        anchor = anchors[0]
        kernel = registry.get(str(anchor.annotations["dlas_sched"]))
        return LayerBuild(**common, algorithm=kernel.algorithm, layout=kernel.layout, tile=kernel.tile_layout,
                          format="dense", block="", dtype_in=str(anchor.reads[0].source.dtype),
                          dtype_acc=str(anchor.writes[0].source.dtype), kernel=kernel.name,
                          schedule="default")
    reductions = [b for b in blocks if any(int(iv.iter_type) != 0 for iv in b.iter_vars)]
    data = [a for a in call.args[1].fields if a not in consts]
    return LayerBuild(**common, algorithm=registry.STOCK, layout="", tile="", format="dense", block="",
                      dtype_in=str(data[0].ty.dtype) if data else "",
                      dtype_acc=str(reductions[0].writes[0].source.dtype) if reductions else "",
                      kernel=reductions[0].name_hint if reductions else "", schedule="generic")


def weight_of(consts: list[Any]) -> Any | None:
    """The weight among a kernel call's constants: the largest (others are indices, offsets, compensations)."""
    return max(consts, key=lambda c: int(np.prod(c.value.shape)), default=None)


def build_manifest(mod: Any, plans: list[Any]) -> list[LayerBuild]:
    """Describe each planned layer from the kernel call in ``mod`` (fused, not yet scheduled) taking its weight."""
    by_fp: dict[str, list[Any]] = {}
    for plan in plans:  # layers with byte-identical weights (tied, all zero) are matched in graph order
        by_fp.setdefault(plan.weight, []).append(plan)
    found: dict[str, LayerBuild] = {}
    for call in _calls(mod):
        consts = call_constants(call)
        weight = weight_of(consts)
        gv = call.args[0]
        func = mod[gv]
        owners = [p for p in by_fp.get(fingerprint(weight), []) if p.name not in found] if weight is not None else []
        if not owners:
            if _attr(func, "dlas_kernel") or any("dlas_sched" in b.annotations for b in _root_blocks(func)):
                raise ManifestError(f"kernel call {gv.name_hint} matches no planned layer")
            continue
        plan = owners[0]
        found[plan.name] = _describe(func, call, plan, consts, gv.name_hint)
    missing = [p.name for p in plans if p.name not in found]
    if missing:
        raise ManifestError(f"no kernel call in the built module computes layer(s) {', '.join(missing[:5])}")
    return [found[p.name] for p in plans]


# ------------------------------------------------------------------------------------------------ reading it
def _label(layer: LayerBuild) -> str:
    if layer.format != "dense":
        return layer.format + (f" {layer.block}" if layer.block else "")
    return layer.algorithm + ("(dw)" if layer.op == "depthwise_conv2d" else "")


def summary(layers: list[LayerBuild]) -> str:
    """One line: ``conv: 17 spatial_pack int8, 3 csr float32; dense: 1 gemm float32``."""
    parts = []
    for group, members in (("conv", [l for l in layers if l.is_conv]), ("dense", [l for l in layers if not l.is_conv])):
        if members:
            counts = Counter(f"{_label(l)} {l.dtype_weight}" for l in members)
            parts.append(f"{group}: " + ", ".join(f"{n} {what}" for what, n in counts.most_common()))
    return "; ".join(parts) or "no conv/dense layers"


def stored_sparsity(layers: list[LayerBuild]) -> float:
    """Zeros among all conv/dense weights as stored (each layer's density weighted by its weight count)."""
    total = zeros = 0.0
    for l in layers:
        count = float(np.prod([int(d) for d in l.shape.split(" * ")[-1].split("x")]))
        total += count
        zeros += count * (1.0 - l.density)
    return round(zeros / total, 4) if total else 0.0


def labels(layers: list[LayerBuild], layout: str) -> dict[str, Any]:
    """A result row's layer labels, computed from what was built (``layout``: the policy's, checked by ``check``)."""
    weights = sorted({l.dtype_weight for l in layers})
    sparse = [l for l in layers if l.format != "dense"]
    convs = Counter(l.algorithm for l in layers if l.op == "conv2d" and l.format == "dense")
    return {
        "quantization": weights[0] if len(weights) == 1 else ("mixed:" + "+".join(weights) if weights else "float32"),
        "algorithm": convs.most_common(1)[0][0] if convs else ("sparse" if sparse else "n/a"),
        "layout": layout,
        "sparse_format": sparse[0].format if sparse else "dense",
        "sparse_block": sparse[0].block if sparse else "",
        "sparsity": stored_sparsity(layers),
    }


def check(layers: list[LayerBuild], policy: Any, quantize: str | None) -> None:
    """Raise ManifestError (one line) where the built layers contradict the policy and the quantization asked
    (``quantize``: float32 / float16 / bfloat16 / int8, or None to accept any weight dtype)."""
    problems: list[str] = []

    def bad(what: str, names: list[str]) -> None:
        if names:
            more = f" (+{len(names) - 4} more)" if len(names) > 4 else ""
            problems.append(f"{what}: {', '.join(names[:4])}{more}")

    if quantize is not None:  # None: the caller asked no particular dtype (a module lowered as it is)
        bad(f"asked {quantize}, weights built in another dtype",
            [f"{l.layer} ({l.dtype_weight})" for l in layers if l.dtype_weight != DTYPE_OF_QUANT[quantize]])
    graph = "NHWC" if policy.layout == "NHWC" else "NCHW"
    wrong_algo, wrong_layout, wrong_fmt, left_dense = [], [], [], []
    for l in layers:
        if l.format != "dense":
            if l.format != policy.sparse_format:
                wrong_fmt.append(f"{l.layer} ({l.format})")
            elif l.format == "bsr" and l.block != f"{policy.bsr_block[0]}x{policy.bsr_block[1]}":
                wrong_fmt.append(f"{l.layer} (block {l.block})")
            continue
        if (policy.sparse_format != "dense" and not l.note and l.op != "depthwise_conv2d"
                and 1.0 - l.density >= policy.sparse_min_sparsity):
            left_dense.append(f"{l.layer} ({1 - l.density:.0%} zeros)")
        if not l.is_conv:
            continue
        _, want = policy.layer_algorithm(l.layer, l.op)
        if l.algorithm != want:
            wrong_algo.append(f"{l.layer} ({l.algorithm}, asked {want})")
        if l.algorithm != registry.STOCK and l.layout != graph:
            wrong_layout.append(f"{l.layer} ({l.layout})")
    bad("algorithm differs from the policy", wrong_algo)
    bad(f"layout is not {graph}", wrong_layout)
    bad(f"sparse format is not {policy.sparse_format}", wrong_fmt)
    bad(f"sparse enough for {policy.sparse_format} but built dense", left_dense)
    if problems:
        raise ManifestError("build manifest contradicts the request: " + "; ".join(problems))


def mark_tuned(layers: list[LayerBuild], functions: set[str]) -> list[LayerBuild]:
    """The manifest of a tuned build: layers whose function took a tuning record say so."""
    return [replace(l, schedule="tuned") if l.function in functions else l for l in layers]


def to_dicts(layers: list[LayerBuild]) -> list[dict[str, Any]]:
    return [asdict(l) for l in layers]


def from_dicts(rows: list[dict[str, Any]]) -> list[LayerBuild]:
    return [LayerBuild(**r) for r in rows]
