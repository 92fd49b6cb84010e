"""Dispatcher: relax.nn.conv2d / relax.matmul -> project kernels, chosen per layer from the policy.

Used as ``LegalizeOps(customize_legalize_map=...)``. Each conv2d gets an index in graph order
(``conv2d_0``, ``conv2d_1``...) for ``policy.overrides``; depthwise layers use
``policy.depthwise_algorithm`` (when set). Weights must be relax Constants to be packed offline;
anything the kernels do not cover (non-constant weights, dynamic shapes, odd layouts) falls back
to TVM's own legalization, which the generic scheduler then schedules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from . import registry
from .common import ConvGeom
from .manifest import call_constants, fingerprint, weight_of
from .policy import LoweringPolicy, PolicyError, check_combination
from .registry import KernelLookupError, KernelRequest
from .targets import TargetInfo


@dataclass
class LayerPlan:
    """One conv/dense layer as the dispatcher saw it; the manifest finds its kernel call by its constants."""

    name: str  # conv2d_N / dense_N in graph order
    op: str  # registry.OPS
    in_shape: list[int]
    weight_shape: list[int]  # OIHW for convolutions, (out, in) for dense layers
    weight: str = ""  # fingerprint of the weight constant its kernel call takes
    note: str = ""  # why the layer departs from the policy's main choice (shown in the manifest)


def inject_sparsity(weight: np.ndarray, sparsity: float, seed: int = 0) -> np.ndarray:
    """Zero a seeded random ``sparsity`` fraction of the elements (unstructured); shared by dense and sparse paths."""
    if sparsity <= 0:
        return weight
    rng = np.random.default_rng(seed)
    flat = weight.reshape(-1).copy()
    k = int(round(sparsity * flat.size))
    flat[rng.permutation(flat.size)[:k]] = 0
    return flat.reshape(weight.shape)


def _ints(shape) -> list[int] | None:
    try:
        return [int(s) for s in shape]
    except Exception:  # noqa: BLE001 - symbolic dimension
        return None


def _to_oihw(w: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(w.transpose([layout.index(ch) for ch in "OIHW"]))


def _default_legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    return call.op.get_attr("FLegalize")(bb, call)


def _sparse_module():
    try:
        from . import sparse  # noqa: PLC0415 - written in parallel; optional
    except ImportError:
        raise PolicyError("sparse formats need dlas_host.lower.sparse") from None
    return sparse


class Dispatcher:
    def __init__(self, policy: LoweringPolicy, info: TargetInfo, target: tvm.target.Target) -> None:
        self.policy, self.info, self.target = policy, info, target
        self.conv_index = 0
        self.dense_index = 0
        self.log: list[tuple[str, str]] = []  # (layer, algorithm) in graph order, for reports and tests
        self.layers: list[LayerPlan] = []  # every conv/dense layer, for the build manifest
        self.error: Exception | None = None  # a PolicyError raised inside the pass (FFI turns it into RuntimeError)

    def legalize_map(self) -> dict[str, Callable]:
        return {"relax.nn.conv2d": self._keep_error(self.conv2d), "relax.matmul": self._keep_error(self.matmul)}

    def _keep_error(self, fn: Callable) -> Callable:
        def wrapped(bb, call):
            try:
                return fn(bb, call)
            except PolicyError as exc:
                self.error = exc
                raise

        return wrapped

    def _planned(self, plan: LayerPlan, expr: relax.Expr) -> relax.Expr:
        """Record the layer with the constants its kernel call takes (how the manifest finds it again)."""
        weight = weight_of(call_constants(expr))
        plan.weight = fingerprint(weight) if weight is not None else ""
        self.layers.append(plan)
        return expr

    # ---------------------------------------------------------------- conv2d
    def conv2d(self, bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        name = f"conv2d_{self.conv_index}"
        self.conv_index += 1
        data, weight = call.args
        a = call.attrs
        dshape = _ints(data.ty.shape)
        layout, klayout = str(a.data_layout), str(a.kernel_layout)
        out_layout = str(a.out_layout) or layout
        out_dtype = str(a.out_dtype) if a.out_dtype is not None and str(a.out_dtype) not in ("", "void") else str(data.ty.dtype)
        usable = (
            isinstance(weight, Constant)
            and dshape is not None
            and layout in ("NCHW", "NHWC")
            and out_layout == layout
            and sorted(klayout) == sorted("OIHW")
        )
        if not usable:
            self.log.append((name, "stock"))
            return _default_legalize(bb, call)
        w = _to_oihw(weight.value.numpy(), klayout)
        w = inject_sparsity(w, self.policy.sparsity)
        if layout == "NCHW":
            n, c, h, wd = dshape
        else:
            n, h, wd, c = dshape
        pad = [int(p) for p in a.padding]
        g = ConvGeom(n, c, h, wd, w.shape[0], w.shape[2], w.shape[3], tuple(int(s) for s in a.strides),
                     (pad[0], pad[1], pad[2], pad[3]), tuple(int(d) for d in a.dilation), int(a.groups))
        op = "depthwise_conv2d" if g.is_depthwise else "grouped_conv2d" if g.groups > 1 else "conv2d"
        plan = LayerPlan(name, op, list(dshape), list(w.shape))
        if self._sparse_pays(w):
            out = _sparse_module().emit_sparse_conv2d(
                bb, data, w, strides=g.stride, padding=g.pad, dilation=g.dilation, groups=g.groups,
                data_layout=layout, out_dtype=out_dtype, fmt=self.policy.sparse_format,
                block=self.policy.bsr_block, target=self.target)
            if out is not None:  # None: the sparse kernels do not cover this layer (e.g. depthwise)
                self.log.append((name, self.policy.sparse_format))
                return self._planned(plan, out)
            plan.note = f"no {self.policy.sparse_format} kernel for this layer"
        asked, algo = self.policy.layer_algorithm(name, op)
        # per layer, the graph between kernels is NCHW (NCHW/NCHWc policies) or NHWC; any kernel that
        # reads that layout may run (e.g. direct depthwise layers inside a spatial-pack NCHWc model)
        check_combination(asked, layout, f"layer {name}: algorithm")
        if algo != asked:
            plan.note = f"grouped conv: {algo} (no {asked} kernel)"
        self.log.append((name, algo))
        if algo == registry.STOCK:
            new_call = relax.Call(call.op, [data, relax.const(_from_oihw(w, klayout))], call.attrs)
            return self._planned(plan, _default_legalize(bb, bb.normalize(new_call)))
        req = KernelRequest(bb, data, w, g, str(data.ty.dtype), out_dtype, self.info)
        try:
            kernel = registry.select(op, algo, layout, req)
        except KernelLookupError as exc:
            raise PolicyError(f"layer {name}: {exc}") from None
        return self._planned(plan, kernel.emit(req))

    def _sparse_pays(self, weight: np.ndarray) -> bool:
        """Sparse kernels only where the layer is sparse enough to beat dense ones (per-layer choice)."""
        if self.policy.sparse_format == "dense":
            return False
        return float(np.mean(weight == 0)) >= self.policy.sparse_min_sparsity

    # ---------------------------------------------------------------- matmul / linear
    def matmul(self, bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        x, wt = call.args
        xshape, wshape = _ints(x.ty.shape), _ints(wt.ty.shape)
        out_dtype = str(call.attrs.out_dtype) if call.attrs.out_dtype is not None and str(call.attrs.out_dtype) not in ("", "void") else str(x.ty.dtype)
        if not (isinstance(wt, Constant) and xshape is not None and wshape is not None and len(wshape) == 2
                and len(xshape) >= 1):
            return _default_legalize(bb, call)
        name = f"dense_{self.dense_index}"
        self.dense_index += 1
        w_kn = inject_sparsity(wt.value.numpy(), self.policy.sparsity)
        plan = LayerPlan(name, "dense", list(xshape), [int(w_kn.shape[1]), int(w_kn.shape[0])])
        if self._sparse_pays(w_kn):
            out = _sparse_module().emit_sparse_dense(
                bb, x, np.ascontiguousarray(w_kn.T), fmt=self.policy.sparse_format, block=self.policy.bsr_block,
                out_dtype=out_dtype, target=self.target)
            if out is not None:
                self.log.append((name, self.policy.sparse_format))
                return self._planned(plan, out)
            plan.note = f"no {self.policy.sparse_format} kernel for this layer"
        if self.policy.is_stock:
            self.log.append((name, registry.STOCK))
            new_call = relax.Call(call.op, [x, relax.const(w_kn)], call.attrs)
            return self._planned(plan, _default_legalize(bb, bb.normalize(new_call)))
        req = KernelRequest(bb, x, w_kn, None, str(x.ty.dtype), out_dtype, self.info)
        kernel = registry.select("dense", "gemm", "", req)
        self.log.append((name, kernel.algorithm))
        return self._planned(plan, kernel.emit(req))


def _from_oihw(w: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(["OIHW".index(ch) for ch in layout]))
