"""The optimize pipeline behind ``dlas-host optimize``: base model -> (train) -> prune -> fine-tune ->
quantize -> measure -> store. Returns a JSON-able dict whose ``accuracy`` the results store records.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dlas_host import data, train, zoo

from . import modelstore
from .prune import prune
from .spec import PruneSpec, QuantSpec


@dataclass
class OptimizeRequest:
    model: str
    dataset: str
    prune: PruneSpec | None = None
    quantize: QuantSpec | None = None
    checkpoint: Path | None = None
    base: str | None = None  # a stored model (id or name, e.g. from `dlas-host train`) to start from
    data_dir: Path | None = None
    train_epochs: int = 0  # train the base model first (no pretrained weights can be downloaded here)
    finetune_epochs: int = 0
    qat_epochs: int = 0  # int8: quantization-aware fine-tuning epochs after calibration
    lr: float = 0.05
    finetune_lr: float = 0.01
    batch_size: int = 64
    eval_samples: int | None = None  # cap the test set (TVM-run int8/fp16 evaluation is slow untuned)
    train_limit: int | None = None
    max_steps_per_epoch: int | None = None
    seed: int = 0
    progress: bool = True
    store: bool = True
    extra_meta: dict = field(default_factory=dict)


def _acc(top1: float, top5: float, samples: int, dataset: str, engine: str) -> dict:
    return {"top1": round(top1, 6), "top5": round(top5, 6), "samples": samples, "dataset": dataset, "engine": engine}


def run(req: OptimizeRequest) -> dict:
    """Run the pipeline; see the module docstring. ``result["accuracy"]`` is the final model's accuracy."""
    torch.manual_seed(req.seed)
    if req.base:
        entry = modelstore.load(req.base)
        if (entry.meta.get("base_model"), entry.meta.get("dataset")) != (req.model, req.dataset):
            raise modelstore.ModelStoreError(
                f"stored model {entry.id} is {entry.meta.get('base_model')}/{entry.meta.get('dataset')}, "
                f"not {req.model}/{req.dataset}")
        if entry.meta.get("prune") or entry.meta.get("quantize"):
            raise modelstore.ModelStoreError(f"stored model {entry.id} is already optimized; start from its base")
        model = entry.load_model()
    else:
        model = zoo.create(req.model, data.model_dataset(req.dataset), checkpoint=req.checkpoint, seed=req.seed)
    if data.info(req.dataset).num_classes != zoo.dataset(data.model_dataset(req.dataset)).num_classes:
        raise ValueError(f"dataset {req.dataset} does not match the class count of the model form")
    train_loader, test_loader = data.loaders(req.dataset, req.batch_size, req.data_dir, test_limit=req.eval_samples,
                                             train_limit=req.train_limit, seed=req.seed)
    history: dict[str, list] = {}
    # training and fine-tuning run on the host's GPU when torch sees one (train.default_device)
    cfg = dict(max_steps_per_epoch=req.max_steps_per_epoch, progress=req.progress)
    if req.train_epochs:
        history["train"] = train.train(model, train_loader, train.TrainConfig(epochs=req.train_epochs, lr=req.lr,
                                                                              **cfg))
    model = model.cpu().eval()
    base = _acc(*train.evaluate(model, test_loader), len(test_loader.dataset), req.dataset, "torch")
    result: dict = {"model": req.model, "dataset": req.dataset, "base_accuracy": base}
    ds = data.info(req.dataset)
    example = torch.zeros(1, 3, ds.image_size, ds.image_size)

    if req.prune is not None:
        spec = req.prune

        def finetune(m: nn.Module, keep) -> None:
            if req.finetune_epochs:
                train.train(m, train_loader, train.TrainConfig(epochs=req.finetune_epochs, lr=req.finetune_lr,
                                                               after_step=keep, **cfg))

        pres = prune(model, spec, loader=train_loader if spec.needs_data else None, example_input=example,
                     finetune=finetune)
        result["pruned_accuracy"] = _acc(*train.evaluate(model.eval(), test_loader), base["samples"], req.dataset,
                                         "torch")
        if req.finetune_epochs:
            history["finetune"] = train.train(model, train_loader, train.TrainConfig(
                epochs=req.finetune_epochs, lr=req.finetune_lr, after_step=pres.after_step(), **cfg))
            model = model.cpu().eval()
        result["prune"] = {"spec": spec.text(), **pres.summary(),
                           "layers": [{"name": x.name, "shape": x.shape, "params": x.params,
                                       "sparsity": round(x.sparsity, 6)} for x in pres.report.layers]}
        from .report import sparsity_report

        final_report = sparsity_report(model)
        result["prune"].update(final_report.summary())
    torch_acc = _acc(*train.evaluate(model, test_loader), base["samples"], req.dataset, "torch")
    result["accuracy"] = torch_acc
    calibration = None
    if req.quantize is not None:
        keep = pres.after_step() if req.prune is not None else None
        result["accuracy"], calibration, model, qat_hist = _quantized_accuracy(model, req, test_loader, train_loader,
                                                                               keep)
        result["accuracy_float"] = torch_acc
        if qat_hist:
            history["qat"] = qat_hist
    result["history"] = history
    if req.store:
        meta = {"base_model": req.model, "dataset": req.dataset,
                "checkpoint": str(req.checkpoint) if req.checkpoint else None, "base_id": entry.id if req.base else None,
                "prune": req.prune.as_dict() if req.prune else None,
                "quantize": req.quantize.as_dict() if req.quantize else None,
                "calibration": calibration.as_dict() if calibration else None,
                "sparsity": result.get("prune", {}).get("sparsity", 0.0),
                "params": sum(p.numel() for p in model.parameters()),
                "size": _size(model, req.quantize, result.get("prune")),
                "accuracy": result["accuracy"], "base_accuracy": base, **req.extra_meta}
        entry = modelstore.save(model, meta)
        result["id"] = entry.id
        result["path"] = str(entry.path)
    result["size"] = _size(model, req.quantize, result.get("prune"))
    return result


def _size(model: nn.Module, q: QuantSpec | None, prune_info: dict | None) -> dict:
    params = sum(p.numel() for p in model.parameters())
    bytes_per = {"fp16": 2, "bf16": 2, "int8": 1}.get(q.dtype, 4) if q else 4
    out = {"params": params, "dense_bytes": params * bytes_per}
    if prune_info:
        out["csr_bytes_fp32"] = prune_info.get("csr_bytes")
    return out


def _quantized_accuracy(model: nn.Module, req: OptimizeRequest, test_loader, train_loader, keep=None):
    """Accuracy of the quantized Relax module run by TVM (stock pipeline, llvm), compared with float torch.

    Returns (accuracy, calibration, model, qat history); with QAT the model is the BN-folded fine-tuned one."""
    from .calibrate import calibrate
    from .quantize import quantize_relax
    from .relax_io import RelaxRunner, evaluate_relax, to_relax

    q = req.quantize
    ds = data.info(req.dataset)
    calibration = None
    qat_hist: list[dict] = []
    if q.dtype == "int8":
        calib_loader = torch.utils.data.DataLoader(data.load(req.dataset, "train", req.data_dir, augment=False),
                                                   batch_size=req.batch_size, shuffle=True,
                                                   generator=torch.Generator().manual_seed(req.seed))
        calibration = calibrate(copy.deepcopy(model), calib_loader, samples=q.calib_samples, method=q.calib_method,
                                percentile=q.percentile)
        if req.qat_epochs:
            from .qat import qat_finetune

            cfg = train.TrainConfig(epochs=req.qat_epochs, lr=req.finetune_lr, after_step=keep, device="cpu",
                                    max_steps_per_epoch=req.max_steps_per_epoch, progress=req.progress)
            model, qat_hist = qat_finetune(model, calibration, train_loader, cfg)
            calibration = calibrate(copy.deepcopy(model), calib_loader, samples=q.calib_samples,
                                    method=q.calib_method, percentile=q.percentile)
    eval_batch = 16
    mod = quantize_relax(to_relax(model, torch.zeros(eval_batch, 3, ds.image_size, ds.image_size)), q, calibration)
    res = evaluate_relax(RelaxRunner(mod), test_loader, reference=model.eval())
    acc = _acc(res["top1"], res["top5"], res["samples"], req.dataset, f"tvm-{q.dtype}")
    acc["max_abs_err_vs_float"] = res["max_abs_err"]
    acc["top1_agreement_vs_float"] = res["top1_agreement"]
    return acc, calibration, model, qat_hist
