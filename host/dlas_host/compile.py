"""Compile path: torch model -> torch.export -> Relax -> (optimize, lower) -> TVM build -> shared library.

Artifacts are cached by everything that determines them: model and weights, optimizations, lowering
policy, the device's target, the TVM version and a fingerprint of the project's own lowering code.
"""

from __future__ import annotations

import hashlib
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, zoo
from .cache import ArtifactCache, Entry, key_of
from .devices import Device
from .lower.policy import LoweringPolicy
from .errors import DlasError
from .fleet.locks import cpu_use

HOST_DIR = Path(__file__).resolve().parent


class CompileError(DlasError, RuntimeError):
    """The model could not be exported, lowered or built for the target."""


class CapabilityMissing(CompileError):
    """The build asks for a layer this installation does not have: the job is skipped, not failed."""


@dataclass(frozen=True)
class BuildSpec:
    """What to build, independent of where it runs."""

    model: str
    dataset: str
    batch: int = 1
    seed: int = 0
    checkpoint: str | None = None
    policy: LoweringPolicy = field(default_factory=LoweringPolicy)
    quantize: str | None = None  # None | "float16" | "bfloat16" | "int8"
    optimized_model: str | None = None  # id of a stored optimized (pruned/quantized) model
    tuning: str = "untuned"  # "untuned" | "tuned" (apply the tuning-records database)
    calib_samples: int = 8  # int8: seeded inputs the activation scales are calibrated on
    image_size: int | None = None  # input side when a stored model's recipe differs from its dataset's (crop 240)

    def describe(self) -> dict[str, Any]:
        data = asdict(self)
        data["policy"] = self.policy.canonical()
        if self.quantize != "int8":
            data.pop("calib_samples")  # shapes nothing else: equal builds keep equal keys
        if self.image_size is None:
            data.pop("image_size")  # the dataset's own size: keys of earlier builds stay valid
        return data

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BuildSpec":
        data = dict(data)
        policy = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                  for k, v in data.pop("policy").items()}
        return cls(policy=LoweringPolicy(**policy), **data)


@dataclass
class Artifact:
    spec: BuildSpec
    device: str
    key: str
    sha256: str
    path: Path
    size: int
    cached: bool
    compile_s: float
    meta: dict[str, Any]


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the host code that shapes generated code, so a kernel change invalidates old artifacts."""
    digest = hashlib.sha256()
    files = sorted((HOST_DIR / "lower").rglob("*.py")) + [HOST_DIR / "compile.py"]
    files += sorted((HOST_DIR / "optimize").rglob("*.py")) if (HOST_DIR / "optimize").is_dir() else []
    files += sorted((HOST_DIR / "tune").rglob("*.py")) if (HOST_DIR / "tune").is_dir() else []
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_torch_model(spec: BuildSpec) -> Any:
    """The float torch model the artifact is built from (also the correctness reference)."""
    if spec.optimized_model:
        from .optimize import modelstore  # noqa: PLC0415 - optional layer

        return modelstore.load(spec.optimized_model).load_model()
    return zoo.create(spec.model, spec.dataset, checkpoint=spec.checkpoint, seed=spec.seed)


def quantize_for_build(model: Any, mod: Any, spec: BuildSpec) -> Any:
    """Quantize an imported model for ``spec.quantize``.

    int8 calibrates per-tensor activation scales (percentile observer) on ``spec.calib_samples`` seeded inputs
    drawn like the benchmark's; for a calibration on real images, make the model with ``dlas-host optimize``
    and bench its id.
    """
    import torch  # noqa: PLC0415

    from .optimize.calibrate import calibrate  # noqa: PLC0415
    from .optimize.quantize import quantize_relax  # noqa: PLC0415
    from .optimize.spec import QuantSpec  # noqa: PLC0415

    qspec = QuantSpec.parse(spec.quantize)
    calibration = None
    if qspec.dtype == "int8":
        n_batches = -(-spec.calib_samples // spec.batch)
        batches = calibration_images(spec, n_batches)
        if batches is None:
            gen = torch.Generator().manual_seed(spec.seed + 1)
            shape = zoo.input_shape(spec.dataset, spec.batch, spec.image_size)
            batches = [torch.randn(*shape, generator=gen) for _ in range(n_batches)]
        calibration = calibrate(zoo.fold_batchnorm(model), batches, samples=n_batches * spec.batch,
                                method=qspec.calib_method, seed=spec.seed)
    return quantize_relax(mod, qspec, calibration)


def calibration_images(spec: BuildSpec, n_batches: int) -> list[Any] | None:
    """Real training images for a stored model's int8 calibration (its accuracy is measured, so random inputs
    would mis-scale it), preprocessed with its recipe; None for zoo models or when the data is not at hand."""
    if not spec.optimized_model:
        return None
    import torch  # noqa: PLC0415

    from . import data  # noqa: PLC0415
    from .optimize import modelstore  # noqa: PLC0415

    meta = modelstore.load(spec.optimized_model).meta
    try:
        train = data.load(meta.get("dataset", spec.dataset), "train", augment=False,
                          preprocessing=meta.get("preprocessing"))
    except data.DatasetError:
        return None
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(spec.seed + 1))  # type: ignore[arg-type]
    picks = order[:n_batches * spec.batch].tolist()
    images = torch.stack([train[i][0] for i in picks])
    return [images[i:i + spec.batch] for i in range(0, len(images), spec.batch)]


def example_inputs(spec: BuildSpec) -> list[np.ndarray]:
    return [zoo.example_input(spec.dataset, spec.batch, seed=spec.seed, image_size=spec.image_size).numpy()]


def import_relax(model: Any, inputs: list[np.ndarray]) -> Any:
    """torch.export the model (BatchNorm folded first) and import it into Relax with constant weights."""
    import torch  # noqa: PLC0415
    from tvm.relax.frontend.torch import from_exported_program  # noqa: PLC0415

    folded = zoo.fold_batchnorm(model)
    args = tuple(torch.from_numpy(a) for a in inputs)
    try:
        with torch.no_grad():
            exported = torch.export.export(folded, args)
        return from_exported_program(exported, keep_params_as_input=False)
    except Exception as exc:  # noqa: BLE001 - export/import failures are many types; one clear error
        raise CompileError(f"cannot import model into TVM Relax: {type(exc).__name__}: {_first_line(exc)}") from exc


def relax_module_for(spec: BuildSpec) -> tuple[Any, Any]:
    """(torch model, Relax module) of a spec: imported from the zoo, or a stored optimized model's own."""
    try:
        model = build_torch_model(spec)
        if spec.optimized_model:
            from .optimize import modelstore  # noqa: PLC0415 - a stored model carries its own quantization

            return model, modelstore.relax_module(spec.optimized_model, spec.batch)
        return model, import_relax(model, example_inputs(spec))
    except LookupError as exc:  # an unknown or unreadable stored model
        raise CompileError(str(exc).strip("'\"")) from None


def tuning_digest(device: Device) -> str | None:
    """Hash of the device target's tuning records (a tuned artifact is rebuilt when they change)."""
    try:
        from .tune import tuning_target  # noqa: PLC0415 - optional layer
        from .tune.records import TuningRecords  # noqa: PLC0415
    except ImportError:
        return None
    return TuningRecords(tuning_target(device.tvm_target(), device.threads)).digest()


def build_key(spec: BuildSpec, device: Device) -> str:
    import tvm  # noqa: PLC0415

    checkpoint_hash = None
    if spec.checkpoint:
        from dlas_agent.runner import sha256_file  # noqa: PLC0415

        checkpoint_hash = sha256_file(Path(spec.checkpoint))
    return key_of({
        "spec": spec.describe(),
        "checkpoint_sha256": checkpoint_hash,
        "target": str(device.tvm_target()),
        "arch": device.arch,
        "tvm": tvm.__version__,
        "dlas": __version__,
        "code": code_fingerprint(),
        "tuning_records": tuning_digest(device) if spec.tuning == "tuned" else None,
    })


def stored_quantization(spec: BuildSpec) -> str | None:
    """The quantization a stored optimized model already carries (float16 / bfloat16 / int8), or None."""
    if not spec.optimized_model:
        return None
    from .optimize import modelstore  # noqa: PLC0415 - optional layer

    q = modelstore.load(spec.optimized_model).meta.get("quantize")
    return {"fp16": "float16", "bf16": "bfloat16"}.get(q["dtype"], q["dtype"]) if q else None


def with_stored_model(spec: BuildSpec) -> BuildSpec:
    """``spec`` as its stored model dictates: labelled with the quantization the model carries when none was
    asked (a stored int8 model builds as int8, and its row must say so: the manifest check holds the build to
    it), and built for the input size of the model's preprocessing recipe (published weights evaluated at
    crop 240 take 240x240 inputs; evaluation images are made with the same recipe)."""
    if not spec.optimized_model:
        return spec
    from .optimize import modelstore  # noqa: PLC0415 - optional layer

    meta = modelstore.load(spec.optimized_model).meta
    stored = (meta.get("base_model"), meta.get("dataset"))
    if None not in stored and stored != (spec.model, spec.dataset):
        raise CompileError(f"stored model {spec.optimized_model} is {stored[0]}/{stored[1]}, not "
                           f"{spec.model}/{spec.dataset}: give --model {stored[0]} --dataset {stored[1]}")
    if spec.quantize in (None, "float32"):
        stored = stored_quantization(spec)
        if stored:
            spec = replace(spec, quantize=stored)
    prep = meta.get("preprocessing") or {}
    side = prep.get("image_size") if isinstance(prep, dict) else None
    if isinstance(side, int) and side > 0 and side != zoo.dataset(spec.dataset).image_size:
        spec = replace(spec, image_size=side)
    return spec


def quantize_if_asked(mod: Any, spec: BuildSpec, model: Any = None) -> Any:
    """Quantize ``mod`` for ``spec.quantize`` unless its stored model already is; a conflict is an error."""
    if not spec.quantize or spec.quantize == "float32":
        return mod
    stored = stored_quantization(spec)
    if stored == spec.quantize:
        return mod
    if stored is not None:
        raise CompileError(f"stored model {spec.optimized_model} is already quantized to {stored}; "
                           f"it cannot be built as {spec.quantize}")
    return quantize_for_build(model if model is not None else build_torch_model(spec), mod, spec)


def lower_and_build(mod: Any, spec: BuildSpec, device: Device,
                    model: Any = None) -> tuple[Any, list[dict[str, Any]], list[str]]:
    """Apply quantization, the lowering policy and (if asked) tuning records.

    Returns the TVM Executable, its build manifest (``lower.manifest``: what each layer was built as, read
    back from the lowered module and checked against the request; a contradiction is a CompileError) and
    the best-effort schedule steps that failed (a block left serial or unvectorized), for the result row.
    """
    import tvm  # noqa: PLC0415

    from . import lower  # noqa: PLC0415
    from .lower.schedule_cpu import collect_warnings  # noqa: PLC0415

    target = device.tvm_target()
    mod = quantize_if_asked(mod, spec, model)
    quantize = spec.quantize or "float32"
    with collect_warnings() as warnings:
        executable, layers = _lower_and_compile(mod, spec, device, target, quantize)
    return executable, lower.manifest.to_dicts(layers), list(warnings)


def _lower_and_compile(mod: Any, spec: BuildSpec, device: Device, target: Any, quantize: str) -> tuple[Any, list]:
    import tvm  # noqa: PLC0415

    from . import lower  # noqa: PLC0415

    try:
        if spec.tuning == "tuned":
            try:
                from .tune import apply as tune_apply  # noqa: PLC0415 - optional layer
            except ImportError:
                raise CapabilityMissing("tuned builds need the tuning layer (dlas_host.tune), which is not "
                                        "installed here; use --tuning untuned") from None
            try:
                executable, layers = tune_apply.build_tuned(mod, device, spec.policy, quantize=quantize)
            except tune_apply.NoTuningRecords as exc:
                raise CapabilityMissing(str(exc)) from None
        elif spec.policy.is_stock:  # TVM's own pipeline builds it; the manifest reads its legalization
            layers = lower.lower_with_manifest(mod, target, spec.policy, schedule=False, quantize=quantize).manifest
            executable = tvm.compile(mod, target=target)
        else:
            lowered = lower.lower_with_manifest(mod, target, spec.policy, quantize=quantize)
            layers = lowered.manifest
            executable = tvm.compile(lowered.mod, target=target, relax_pipeline=lower.compile_pipeline(target))
    except lower.ManifestError as exc:
        raise CompileError(f"{spec.model}/{spec.dataset} on {device.name}: {exc}") from None
    return executable, layers


def compile_artifact(spec: BuildSpec, device: Device, cache: ArtifactCache | None = None,
                     force: bool = False) -> Artifact:
    cache = cache or ArtifactCache()
    spec = with_stored_model(spec)
    key = build_key(spec, device)
    if not force:
        hit = cache.get(key)
        if hit is not None:
            return _artifact(spec, device, hit, cached=True)
    # A build burns this machine's CPU: it waits for a timing on this machine to end, and holds off the next
    with cpu_use(f"compile {spec.model}/{spec.dataset} for {device.name}"):
        return _build(spec, device, cache, key)


def _build(spec: BuildSpec, device: Device, cache: ArtifactCache, key: str) -> Artifact:
    from .toolchain import build_context, export_library  # noqa: PLC0415

    t0 = time.perf_counter()
    inputs = example_inputs(spec)
    model, mod = relax_module_for(spec)
    try:
        with build_context(device):  # CUDA: nvcc device code for the target's sm_XX
            executable, manifest, schedule_warnings = lower_and_build(mod, spec, device, model)
    except CompileError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CompileError(f"TVM build for {device.name} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    with cache.scratch_dir() as scratch:  # removed on error too (a failed export leaves no litter)
        lib_path = scratch / "model.so"
        export_library(executable, lib_path, device)
        compile_s = time.perf_counter() - t0
        meta = {
            "model": spec.model, "dataset": spec.dataset, "device": device.name, "target": str(device.tvm_target()),
            "policy": spec.policy.canonical(), "quantize": spec.quantize, "tuning": spec.tuning,
            "inputs": [{"shape": list(a.shape), "dtype": str(a.dtype)} for a in inputs],
            "compile_s": compile_s, "built_on": platform.node(), "code": code_fingerprint(), "manifest": manifest,
            "schedule_warnings": schedule_warnings,
        }
        entry = cache.put(key, lib_path, meta)
    return _artifact(spec, device, entry, cached=False)


def _artifact(spec: BuildSpec, device: Device, entry: Entry, cached: bool) -> Artifact:
    return Artifact(spec=spec, device=device.name, key=entry.key, sha256=entry.sha256, path=entry.path,
                    size=entry.size, cached=cached, compile_s=float(entry.meta.get("compile_s", 0.0)),
                    meta=entry.meta)


def artifact_manifest(artifact: Artifact) -> list[Any]:
    """The artifact's build manifest (``lower.manifest.LayerBuild`` per layer); a CompileError if it has none."""
    from .lower import manifest  # noqa: PLC0415

    rows = artifact.meta.get("manifest")
    if not isinstance(rows, list):
        raise CompileError(f"artifact {artifact.key[:12]} has no build manifest; rebuild it with --force")
    return manifest.from_dicts(rows)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""
