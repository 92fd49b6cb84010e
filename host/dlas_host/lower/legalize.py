"""Dispatcher: relax.nn.conv2d / relax.matmul -> project kernels, chosen per layer from the policy.

Used as ``LegalizeOps(customize_legalize_map=...)``. Each conv2d gets an index in graph order
(``conv2d_0``, ``conv2d_1``...) for ``policy.overrides``; depthwise layers use
``policy.depthwise_algorithm`` (when set). Weights must be relax Constants to be packed offline;
anything the kernels do not cover (non-constant weights, dynamic shapes, odd layouts) falls back
to TVM's own legalization, which the generic scheduler then schedules.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from . import conv_direct, conv_gemm, conv_spatial_pack, dense, depthwise, int8
from .common import ConvGeom
from .policy import LoweringPolicy, PolicyError
from .targets import TargetInfo

KERNEL_PATTERN = 4  # kOutEWiseFusable: FuseOps may append the elementwise tail (bias, residual, relu)

SUPPORTED = {
    "direct": ("NCHW", "NHWC"),
    "gemm": ("NCHW", "NHWC"),
    "spatial_pack": ("NCHW", "NCHWc"),
    "stock": ("NCHW", "NHWC", "NCHWc"),
}


def supported_text() -> str:
    return "; ".join(f"{a}: {', '.join(ls)}" for a, ls in SUPPORTED.items())


def check_combination(algorithm: str, layout: str, what: str = "algorithm") -> None:
    if layout not in SUPPORTED[algorithm]:
        raise PolicyError(
            f"{what} {algorithm!r} does not support layout {layout!r}; supported combinations: {supported_text()}"
        )


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


def np_dtype(dtype: str):
    """numpy dtype for a TVM dtype name (bfloat16 through ml_dtypes)."""
    if dtype == "bfloat16":
        import ml_dtypes  # noqa: PLC0415

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


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
        self.overrides = dict(policy.overrides)
        self.log: list[tuple[str, str]] = []  # (layer, algorithm) in graph order, for reports and tests

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

    # ---------------------------------------------------------------- conv2d
    def _algorithm(self, name: str, depthwise_layer: bool) -> str:
        if name in self.overrides:
            return self.overrides[name]
        if depthwise_layer and self.policy.depthwise_algorithm is not None:
            return self.policy.depthwise_algorithm
        return self.policy.algorithm

    def conv2d(self, bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        name = f"conv2d_{self.conv_index}"
        self.conv_index += 1
        data, weight = call.args
        a = call.attrs
        dshape, wshape = _ints(data.ty.shape), _ints(weight.ty.shape)
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
        if self._sparse_pays(w):
            out = _sparse_module().emit_sparse_conv2d(
                bb, data, w, strides=g.stride, padding=g.pad, dilation=g.dilation, groups=g.groups,
                data_layout=layout, out_dtype=out_dtype, fmt=self.policy.sparse_format,
                block=self.policy.bsr_block, target=self.target)
            if out is not None:  # None: the sparse kernels do not cover this layer (e.g. depthwise)
                self.log.append((name, self.policy.sparse_format))
                return out
        algo = self._algorithm(name, g.is_depthwise)
        # per layer, the graph between kernels is NCHW (NCHW/NCHWc policies) or NHWC; any kernel that
        # reads that layout may run (e.g. direct depthwise layers inside a spatial-pack NCHWc model)
        check_combination(algo, layout, f"layer {name}: algorithm")
        self.log.append((name, algo))
        if algo == "stock":
            new_call = relax.Call(call.op, [data, relax.const(_from_oihw(w, klayout))], call.attrs)
            return _default_legalize(bb, bb.normalize(new_call))
        return self._emit_conv(bb, data, w, g, layout, algo, out_dtype)

    def _call(self, bb, fn, *args, hint: str):
        """call_te with the relax tensors first; geometry/config objects are closed over."""
        exprs = [a for a in args if isinstance(a, relax.Expr)]
        rest = args[len(exprs):]
        return bb.call_te(lambda *ts: fn(*ts, *rest), *exprs, primfunc_name_hint=hint,
                          primfunc_attrs={"op_pattern": KERNEL_PATTERN})

    def _emit_conv(self, bb, data, w: np.ndarray, g: ConvGeom, layout: str, algo: str, out_dtype: str):
        info, dt = self.info, str(data.ty.dtype)
        wdt = dt
        int8_in = dt == "int8" and w.dtype == np.int8  # VNNI shift trick assumes signed int8
        if g.is_depthwise and algo in ("direct", "spatial_pack"):
            if algo == "spatial_pack" and layout == "NCHW":
                cb = depthwise.channel_block_for(g, info, out_dtype)
                wp = relax.const(depthwise.weight_nchwc(w, cb).astype(np_dtype(wdt)))
                return self._call(bb, depthwise.dw_nchwc, data, wp, g, out_dtype, info, cb, hint="dlas_dw_nchwc")
            if layout == "NCHW":
                wp = relax.const(depthwise.weight_nchw(w).astype(np_dtype(wdt)))
                return self._call(bb, depthwise.dw_nchw, data, wp, g, out_dtype, info, hint="dlas_dw_nchw")
            wp = relax.const(depthwise.weight_nhwc(w).astype(np_dtype(wdt)))
            return self._call(bb, depthwise.dw_nhwc, data, wp, g, out_dtype, info, hint="dlas_dw_nhwc")
        if algo == "direct":
            if layout == "NCHW":
                wp = relax.const(conv_direct.weight_nchw(w).astype(np_dtype(wdt)))
                return self._call(bb, conv_direct.direct_nchw, data, wp, g, out_dtype, info, hint="dlas_conv_direct_nchw")
            wp = relax.const(conv_direct.weight_nhwc(w).astype(np_dtype(wdt)))
            return self._call(bb, conv_direct.direct_nhwc, data, wp, g, out_dtype, info, hint="dlas_conv_direct_nhwc")
        if algo == "gemm":
            if layout == "NCHW":
                wp = relax.const(conv_gemm.weight_nchw(w, g).astype(np_dtype(wdt)))
                return self._call(bb, conv_gemm.gemm_nchw, data, wp, g, out_dtype, info, hint="dlas_conv_gemm_nchw")
            wp = relax.const(conv_gemm.weight_nhwc(w, g).astype(np_dtype(wdt)))
            return self._call(bb, conv_gemm.gemm_nhwc, data, wp, g, out_dtype, info, hint="dlas_conv_gemm_nhwc")
        # spatial pack (NCHW graph, NCHWc inside the kernel)
        if g.groups != 1:
            # grouped (non-depthwise) convolutions have no packed kernel: direct is the closest
            wp = relax.const(conv_direct.weight_nchw(w).astype(np_dtype(wdt)))
            return self._call(bb, conv_direct.direct_nchw, data, wp, g, out_dtype, info, hint="dlas_conv_direct_nchw")
        if int8_in and int8.int8_dot_usable(g, info, out_dtype):
            ib, ob = 4, int8.lanes_for(info)
            wp, comp = int8.pack_weight(w, ib, ob, info)
            return self._call(bb, int8.conv_int8_nchwc, data, relax.const(wp), relax.const(comp), g, info, ib, ob,
                              hint="dlas_conv_sp_int8")
        ib, ob = conv_spatial_pack.blocks_for(g, info, out_dtype)
        wp = relax.const(conv_spatial_pack.pack_weight(w, ib, ob).astype(np_dtype(wdt)))
        return self._call(bb, conv_spatial_pack.spatial_pack_nchw, data, wp, g, out_dtype, info, ib, ob,
                          hint="dlas_conv_sp_nchwc")

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
        w_kn = inject_sparsity(wt.value.numpy(), self.policy.sparsity)
        if self._sparse_pays(w_kn):
            out = _sparse_module().emit_sparse_dense(
                bb, x, np.ascontiguousarray(w_kn.T), fmt=self.policy.sparse_format, block=self.policy.bsr_block,
                out_dtype=out_dtype, target=self.target)
            if out is not None:
                return out
        if self.policy.is_stock:
            new_call = relax.Call(call.op, [x, relax.const(w_kn)], call.attrs)
            return _default_legalize(bb, bb.normalize(new_call))
        dt = str(x.ty.dtype)
        if dt == "int8" and w_kn.dtype == np.int8 and int8.dense_int8_usable(w_kn.shape, self.info, out_dtype):
            wp, comp = int8.pack_dense(w_kn, self.info)
            return self._call(bb, int8.dense_int8, x, relax.const(wp), relax.const(comp), w_kn.shape[1], self.info,
                              hint="dlas_dense_int8")
        nb = dense.block_for(w_kn.shape[1], self.info, out_dtype)
        wp = relax.const(dense.pack_weight(w_kn, nb).astype(np_dtype(dt)))
        return self._call(bb, dense.dense, x, wp, w_kn.shape[1], out_dtype, self.info, hint="dlas_dense")


def _from_oihw(w: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(["OIHW".index(ch) for ch in layout]))
