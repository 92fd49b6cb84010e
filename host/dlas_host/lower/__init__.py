"""Lowering of Relax models onto the project's own kernels (DLAS "Algorithms & Data Formats" layer).

``lower(mod, target, policy)`` returns a Relax module that ``tvm.compile(mod, target)`` turns into
scheduled code:

1. ``FoldConstant`` (weights become plain constants: ``permute_dims`` of linear weights folds away);
   NHWC policies convert conv layouts with ``ConvertLayout``.
2. ``LegalizeOps(customize_legalize_map=...)`` routes ``relax.nn.conv2d`` and ``relax.matmul`` to
   project TE kernels chosen per layer (``legalize.Dispatcher``): direct, im2col+GEMM, spatial pack
   (NCHWc), depthwise, dense, int8 VNNI/sdot; weights are packed offline into new constants.
   Everything else takes TVM's default legalization.
3. ``AnnotateTIROpPattern``, ``FoldConstant``, ``FuseOps``, ``FuseTIR``: kernels are marked
   out-elementwise-fusable, so the bias/residual/relu tail joins the kernel's function.
4. Every PrimFunc is scheduled here: CPU by ``schedule_cpu`` (kernel anchors found by block name and
   annotation, tails computed at the register tile; generic parallel+vector schedule for the rest);
   CUDA by ``schedule_cuda`` (thread-bound anchors + dlight default rules).

Decision on ``tvm.compile``: its default pipeline would legalize and fuse again. Because step 3 is done
here and every PrimFunc is then marked ``op_pattern = kOpaque`` and ``tirx.is_scheduled``, the default
pipeline's LegalizeOps/FuseOps/FuseTIR find nothing to do and dlight skips the functions, so the
schedules survive a plain ``tvm.compile(mod, target)``; no custom pipeline is needed.
(``compile_pipeline`` is provided anyway for callers that want to be explicit.) Pass ``tvm.compile`` a
``tvm.target.Target``, not a dict: its VM build reads ``target.keys``.

Algorithms x layouts (``PolicyError`` lists them for anything else):

=============  ==============  =====================================================================
algorithm      layouts         kernel
=============  ==============  =====================================================================
direct         NCHW, NHWC      sliding window; NCHW: ob channels x vw columns tile, NHWC: rb x SIMD
gemm           NCHW, NHWC      packed im2col matrix + register-tiled GEMM
spatial_pack   NCHW, NCHWc     NCHWc activations packed per layer, OIHW[i][o] weights packed offline
stock          any             TVM's own legalization (+ our generic schedule)
=============  ==============  =====================================================================

NCHWc means "activations in NCHW[c] inside each spatial-pack kernel"; between kernels the graph stays
NCHW (so ``NCHW`` and ``NCHWc`` give the same spatial-pack kernels, and other per-layer choices such
as the default direct depthwise are valid in NCHWc models). Depthwise: direct (NCHW/NHWC), spatial_pack
(NCHWc), gemm (grouped im2col). Dtypes: float32, float16, bfloat16 (accumulate in the output dtype, as
relax's conv2d does) and int8 x int8 -> int32; int8 spatial pack uses AVX512-VNNI on x86 and sdot on
Arm with dotprod (see ``int8``). Grouped non-depthwise convolutions under spatial_pack run the direct
kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax, tirx

from .legalize import Dispatcher, LayerPlan, inject_sparsity
from .manifest import LayerBuild, ManifestError, build_manifest
from .manifest import check as check_manifest
from .policy import LoweringPolicy, PolicyError, supported_text
from .targets import TargetInfo, target_info

__all__ = ["LayerBuild", "Lowered", "LoweringPolicy", "ManifestError", "PolicyError", "compile_pipeline",
           "inject_sparsity", "lower", "lower_with_manifest", "supported_text", "target_info"]

OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps never groups these again


def _as_target(target) -> tvm.target.Target:
    return target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)


def _check_policy(policy: LoweringPolicy) -> None:
    if not policy.is_stock:
        policy.validate()


def schedule_module(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Schedule every PrimFunc for ``target`` and freeze it (opaque + is_scheduled)."""
    from . import schedule_cpu, schedule_cuda  # noqa: PLC0415

    info = target_info(target)
    if info.is_gpu:
        mod = schedule_cuda.schedule_module_gpu(mod, target)
    else:
        updates = {}
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and not _scheduled(func):
                updates[gv] = schedule_cpu.schedule_func(func, info)
        for gv, func in updates.items():
            mod[gv] = func
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tirx.PrimFunc):
            mod[gv] = func.with_attr("op_pattern", OPAQUE).with_attr("tirx.is_scheduled", True)
    return mod


def _scheduled(func: tirx.PrimFunc) -> bool:
    return func.attrs is not None and "tirx.is_scheduled" in func.attrs and bool(func.attrs["tirx.is_scheduled"])


def lower(mod: tvm.IRModule, target, policy: LoweringPolicy, *, dispatcher_out: list | None = None,
          schedule: bool = True) -> tvm.IRModule:
    """Legalize, fuse and schedule ``mod`` for ``target`` following ``policy`` (see module docstring).

    ``schedule=False`` stops after fusion: the PrimFuncs are the tuning tasks MetaSchedule searches
    (``dlas_host.tune``), exactly as the untuned build would compile them.
    """
    lowered = lower_with_manifest(mod, target, policy, schedule=schedule)
    if dispatcher_out is not None:
        dispatcher_out.extend(lowered.log)
    return lowered.mod


@dataclass
class Lowered:
    mod: tvm.IRModule
    manifest: list[LayerBuild]  # what was emitted per layer (see ``lower.manifest``)
    log: list[tuple[str, str]]  # (layer, algorithm) as the dispatcher chose, in graph order
    plans: list[LayerPlan]


def lower_with_manifest(mod: tvm.IRModule, target, policy: LoweringPolicy, *, schedule: bool = True,
                        quantize: str | None = None, check: bool = True) -> Lowered:
    """``lower`` that also returns the build manifest read back from the fused module.

    With ``check`` (default) a manifest that contradicts ``policy`` / ``quantize`` raises ``ManifestError``.
    """
    target = _as_target(target)
    _check_policy(policy)
    info = target_info(target)
    dispatcher = Dispatcher(policy, info, target)
    with target:
        mod = relax.transform.FoldConstant()(mod)
        if policy.layout == "NHWC":
            mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
            mod = relax.transform.FoldConstant()(mod)
        try:
            mod = relax.transform.LegalizeOps(customize_legalize_map=dispatcher.legalize_map())(mod)
        except Exception:
            if dispatcher.error is not None:
                raise dispatcher.error from None
            raise
        mod = relax.transform.AnnotateTIROpPattern()(mod)
        mod = relax.transform.FoldConstant()(mod)
        mod = relax.transform.FuseOps()(mod)
        mod = relax.transform.FuseTIR()(mod)
        mod = relax.transform.DeadCodeElimination()(mod)
        layers = build_manifest(mod, dispatcher.layers)
        if check:
            check_manifest(layers, policy, quantize)
        if schedule:
            mod = schedule_module(mod, target)
    return Lowered(mod, layers, dispatcher.log, dispatcher.layers)


def compile_pipeline(target) -> tvm.transform.Pass:
    """The pipeline to pass as ``tvm.compile(..., relax_pipeline=...)`` for lowered modules (= default)."""
    return relax.get_default_pipeline(_as_target(target))
