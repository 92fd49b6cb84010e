"""Quantization as Relax rewrites of ``main``, slotted between import and lowering:

    mod = from_exported_program(...); mod = quantize_relax(mod, spec, calibration); lower(mod, ...)

- ``int8``: each ``conv2d`` / ``matmul`` with a constant weight becomes
  ``astype(clip(round(x / s_x), -127, 127), int8)`` -> ``conv2d(int8, int8, out_dtype=int32)`` (or ``matmul``)
  -> ``astype(float32) * (s_x * s_w[c])``. Weights are per-output-channel symmetric int8 (constants in the
  module), activations per-tensor symmetric with scales from ``calibrate``. Accumulation is int32 and the
  requantization to the next layer's scale goes through float (multiply, bias, activation, then the next
  layer's quantize), so every op other than conv/matmul (softmax, pooling, residual adds) stays float32.
- ``fp16`` / ``bf16``: a dtype-rewriting pass (``ToMixedPrecision`` fails for bfloat16): float32 constants are
  converted, conv2d/matmul take low-precision operands and accumulate in float32, elementwise ops run in
  low precision, and reductions / softmax / normalisations are kept in float32. The function signature stays
  float32 in and out.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..errors import DlasError
from ..lower.registry import np_dtype
from .calibrate import QMAX, Calibration
from .spec import QuantSpec

QUANT_OPS = ("relax.nn.conv2d", "relax.matmul")
KEEP_FLOAT32 = {"relax.nn.softmax", "relax.nn.log_softmax", "relax.mean", "relax.sum", "relax.variance",
                "relax.std", "relax.nn.layer_norm", "relax.nn.group_norm", "relax.nn.batch_norm",
                "relax.nn.rms_norm", "relax.exp", "relax.log", "relax.erf", "relax.power", "relax.sqrt",
                "relax.rsqrt", "relax.cumsum", "relax.prod", "relax.nn.cross_entropy_with_logits"}


class QuantizeError(DlasError, RuntimeError):
    pass


def _const_array(e) -> np.ndarray | None:
    if isinstance(e, tvm.ir.expr.Constant) and hasattr(e.value, "numpy"):
        return e.value.numpy()
    return None


def _dtype(e) -> str | None:
    ty = getattr(e, "ty", None)
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else None


# ----------------------------------------------------------------------------------------------- int8


def quantizable_ops(mod: tvm.IRModule, func: str = "main") -> list[tuple[str, str]]:
    """(op name, binding var name) of every conv2d/matmul with a constant weight in binding order."""
    out: list[tuple[str, str]] = []
    f = mod[func]
    consts: dict = {}
    for block in f.body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op):
                if v.op.name == "relax.permute_dims" and _const_array(v.args[0]) is not None:
                    consts[b.var] = True
                if v.op.name in QUANT_OPS:
                    w = v.args[1]
                    if _const_array(w) is not None or consts.get(w, False):
                        out.append((v.op.name, str(b.var.name)))
    return out


@mutator
class _Int8Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, scales: list[float], skip: set[int], quantize_depthwise: bool) -> None:
        super().__init__(mod)
        self.scales, self.skip, self.quantize_depthwise = scales, skip, quantize_depthwise
        self.index = 0
        self.quantized = 0

    def _weight(self, call: relax.Call, orig: relax.Call) -> np.ndarray | None:
        """Float weight in the op's own layout (matmul: [in, out]), or None when it is not constant."""
        w = _const_array(orig.args[1])
        if w is not None:
            return w
        bound = self.lookup_binding(orig.args[1]) if isinstance(orig.args[1], relax.Var) else None
        if isinstance(bound, relax.Call) and bound.op.name == "relax.permute_dims":
            src = _const_array(bound.args[0])
            if src is not None:
                axes = [int(a) for a in bound.attrs.axes] if bound.attrs.axes is not None else None
                return np.transpose(src, axes)
        return None

    def _quantize_input(self, x, scale: float):
        bb = self.builder_
        xs = bb.emit(relax.op.multiply(x, relax.const(np.float32(1.0 / scale))))
        xr = bb.emit(relax.op.clip(relax.op.round(xs), relax.prim_value(-QMAX), relax.prim_value(QMAX)))
        return bb.emit(relax.op.astype(xr, "int8"))

    def visit_call_(self, call: relax.Call):
        new = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name not in QUANT_OPS:
            return new
        w = self._weight(new, call)
        if w is None or _dtype(new.args[0]) != "float32":
            return new
        idx = self.index
        self.index += 1
        if idx >= len(self.scales):
            raise QuantizeError(f"Relax main has more conv2d/matmul ops than calibrated layers ({len(self.scales)})")
        if idx in self.skip:
            return new
        bb = self.builder_
        if call.op.name == "relax.nn.conv2d":
            a = call.attrs
            if a.groups > 1 and not self.quantize_depthwise:
                return new
            if str(a.kernel_layout) != "OIHW" or str(a.data_layout) != "NCHW":
                raise QuantizeError("int8 rewrite expects NCHW/OIHW conv2d (quantize before layout conversion)")
            w_scale = np.abs(w).reshape(w.shape[0], -1).max(1) / QMAX
            w_scale = np.where(w_scale > 0, w_scale, 1.0).astype(np.float32)
            wq = np.clip(np.round(w / w_scale[:, None, None, None]), -QMAX, QMAX).astype(np.int8)
            xq = self._quantize_input(new.args[0], self.scales[idx])
            acc = bb.emit(relax.op.nn.conv2d(xq, relax.const(wq), strides=a.strides, padding=a.padding,
                                             dilation=a.dilation, groups=a.groups, data_layout="NCHW",
                                             kernel_layout="OIHW", out_layout=a.out_layout, out_dtype="int32"))
            deq = (self.scales[idx] * w_scale).astype(np.float32).reshape(1, -1, 1, 1)
        else:
            if w.ndim != 2:
                return new
            w_scale = np.abs(w).max(0) / QMAX  # per output column of [in, out]
            w_scale = np.where(w_scale > 0, w_scale, 1.0).astype(np.float32)
            wq = np.clip(np.round(w / w_scale[None, :]), -QMAX, QMAX).astype(np.int8)
            xq = self._quantize_input(new.args[0], self.scales[idx])
            acc = bb.emit(relax.op.matmul(xq, relax.const(wq), out_dtype="int32"))
            deq = (self.scales[idx] * w_scale).astype(np.float32)
        self.quantized += 1
        return relax.op.multiply(bb.emit(relax.op.astype(acc, "float32")), relax.const(deq))


def _rewrite(mod: tvm.IRModule, rewriter: PyExprMutator, func: str = "main") -> tvm.IRModule:
    gv = mod.get_global_var(func)
    new_func = rewriter.visit_expr(mod[func])
    rewriter.builder_.update_func(gv, new_func)
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get())


def quantize_int8(mod: tvm.IRModule, calibration: Calibration, spec: QuantSpec) -> tvm.IRModule:
    ops = quantizable_ops(mod)
    if len(ops) != len(calibration.scales):
        raise QuantizeError(f"Relax main has {len(ops)} conv2d/matmul ops with constant weights but calibration "
                            f"saw {len(calibration.scales)} conv/linear calls; the torch model and the module differ")
    skip = set()
    if spec.skip_first:
        skip.add(0)
    if spec.skip_last:
        skip.add(len(ops) - 1)
    rw = _Int8Rewriter(mod, calibration.scales, skip, spec.quantize_depthwise)
    out = _rewrite(mod, rw)
    if rw.index != len(ops):
        raise QuantizeError(f"rewrote {rw.index} ops, expected {len(ops)}")
    return out


# ------------------------------------------------------------------------------------------ fp16 / bf16


@mutator
class _LowPrecisionRewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, dtype: str) -> None:
        super().__init__(mod)
        self.dtype = dtype

    def _to(self, e, dtype: str):
        """``e`` as ``dtype`` when it is a float tensor of another float dtype (constants converted in place)."""
        cur = _dtype(e)
        if cur not in ("float32", "float16", "bfloat16") or cur == dtype:
            return e
        arr = _const_array(e)
        if arr is not None:
            return relax.const(arr.astype(np.float32).astype(np_dtype(dtype)), dtype)
        return self.builder_.emit(relax.op.astype(e, dtype))

    def visit_call_(self, call: relax.Call):
        if not isinstance(call.op, tvm.ir.Op):
            return super().visit_call_(call)
        # visit the arguments ourselves: the base visitor would re-infer types on the mixed-dtype call
        new = relax.Call(call.op, [self.visit_expr(a) for a in call.args], call.attrs, call.ty_args)
        name = call.op.name
        if name in KEEP_FLOAT32:
            return relax.Call(new.op, [self._to(a, "float32") for a in new.args], new.attrs, new.ty_args)
        if name == "relax.astype":
            return new
        if name == "relax.nn.conv2d":
            a = new.attrs
            conv = relax.op.nn.conv2d(self._to(new.args[0], self.dtype), self._to(new.args[1], self.dtype),
                                      strides=a.strides, padding=a.padding, dilation=a.dilation, groups=a.groups,
                                      data_layout=a.data_layout, kernel_layout=a.kernel_layout,
                                      out_layout=a.out_layout, out_dtype="float32")
            return relax.op.astype(self.builder_.emit(conv), self.dtype)
        if name == "relax.matmul":
            mm = relax.op.matmul(self._to(new.args[0], self.dtype), self._to(new.args[1], self.dtype),
                                 out_dtype="float32")
            return relax.op.astype(self.builder_.emit(mm), self.dtype)
        args = [self._to(a, self.dtype) if isinstance(a, relax.Expr) else a for a in new.args]
        return relax.Call(new.op, args, new.attrs, new.ty_args)

    def visit_tuple_(self, tup: relax.Tuple):
        new = super().visit_tuple_(tup)
        return relax.Tuple([self._to(f, "float32") for f in new.fields])


def to_low_precision(mod: tvm.IRModule, dtype: str) -> tvm.IRModule:
    """Rewrite ``main`` to compute in ``float16`` or ``bfloat16`` (see module docstring)."""
    if dtype not in ("float16", "bfloat16"):
        raise QuantizeError(f"unsupported low-precision dtype {dtype!r}")
    return _rewrite(mod, _LowPrecisionRewriter(mod, dtype))


# ---------------------------------------------------------------------------------------------- entry


def quantize_relax(mod: tvm.IRModule, spec: QuantSpec | str, calibration: Calibration | None = None) -> tvm.IRModule:
    """The host's hook between import and lowering (``spec`` as a QuantSpec or ``"fp16"|"bf16"|"int8"``)."""
    spec = QuantSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.dtype == "fp16":
        return to_low_precision(mod, "float16")
    if spec.dtype == "bf16":
        return to_low_precision(mod, "bfloat16")
    if calibration is None:
        raise QuantizeError("int8 quantization needs a calibration (dlas_host.optimize.calibrate.calibrate)")
    return quantize_int8(mod, calibration, spec)


def op_dtypes(mod: tvm.IRModule, func: str = "main") -> list[tuple[str, str, str]]:
    """(op, data dtype, weight dtype) of every conv2d/matmul: what tests and reports check."""
    out = []
    for block in mod[func].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name in QUANT_OPS:
                out.append((v.op.name, _dtype(v.args[0]), _dtype(v.args[1])))
    return out
