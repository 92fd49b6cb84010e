"""``dlas-host optimize``: prune and/or quantize a zoo model, measure accuracy, store it (DLAS layers 1-3).

The lead registers it with ``app.command("optimize")(optimize)``; ``app`` below runs it standalone:
``python -m dlas_host.cli_optimize --model resnet18 --dataset digits --train-epochs 2 --prune channel:global:l1:0.5``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table


def _fail(console: Console, msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}", soft_wrap=True)
    raise typer.Exit(2)


def optimize(
    model: str = typer.Option(..., help="zoo model: resnet18, resnet50, mobilenet_v2, ..."),
    dataset: str = typer.Option("cifar10", help="cifar10 | imagenet | digits"),
    prune: Optional[str] = typer.Option(None, help="kind:scope:score:amount[:block=RxC][:steps=N], kind in "
                                        "unstructured|channel|block, scope global|layer, score l1|grad|taylor"),
    quantize: Optional[str] = typer.Option(None, help="fp16 | bf16 | int8"),
    calib_samples: int = typer.Option(256, help="int8: calibration images"),
    calib_method: str = typer.Option("percentile", help="int8: minmax | percentile | entropy | mse"),
    percentile: float = typer.Option(99.99, help="int8 percentile calibration: percentile of |x|"),
    finetune_epochs: int = typer.Option(0, help="fine-tuning epochs after pruning (masks kept fixed)"),
    finetune_lr: float = typer.Option(0.01),
    qat_epochs: int = typer.Option(0, help="int8: quantization-aware fine-tuning epochs (fake quant, STE)"),
    train_epochs: int = typer.Option(0, help="train the base model first (when there is no checkpoint)"),
    lr: float = typer.Option(0.05),
    checkpoint: Optional[Path] = typer.Option(None, help="base model weights (state dict)"),
    base: Optional[str] = typer.Option(None, help="stored base model (id or name, e.g. from `dlas-host train`)"),
    data_dir: Optional[Path] = typer.Option(None, help="dataset directory (else $DLAS_<DATASET>_DIR or config)"),
    batch_size: int = typer.Option(64),
    eval_samples: Optional[int] = typer.Option(None, help="cap the test images evaluated"),
    max_steps: Optional[int] = typer.Option(None, help="cap optimizer steps per epoch (smoke runs)"),
    seed: int = typer.Option(0),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the full result as JSON"),
) -> dict:
    """Prune and/or quantize MODEL, report sparsity, size and accuracy, and store the optimized model."""
    import json

    from dlas_host import zoo
    from dlas_host.data import DatasetError
    from dlas_host.optimize.modelstore import ModelStoreError
    from dlas_host.optimize.pipeline import OptimizeRequest, run
    from dlas_host.optimize.spec import PruneSpec, QuantSpec, SpecError

    console = Console()
    try:
        pspec = PruneSpec.parse(prune) if prune else None
        qspec = (QuantSpec.parse(quantize, calib_method=calib_method, calib_samples=calib_samples,
                                 percentile=percentile) if quantize else None)
        zoo.spec(model)
    except (SpecError, zoo.ZooError) as exc:
        _fail(console, str(exc))
    req = OptimizeRequest(model, dataset, pspec, qspec, checkpoint=checkpoint, base=base, data_dir=data_dir,
                          train_epochs=train_epochs, finetune_epochs=finetune_epochs, qat_epochs=qat_epochs, lr=lr, finetune_lr=finetune_lr,
                          batch_size=batch_size, eval_samples=eval_samples, max_steps_per_epoch=max_steps, seed=seed)
    try:
        result = run(req)
    except (DatasetError, zoo.ZooError, SpecError, ModelStoreError) as exc:
        _fail(console, str(exc))
    console.print(result_table(result))
    if json_out:
        json_out.write_text(json.dumps(result, indent=2, default=str))
    return result


def result_table(result: dict) -> Table:
    t = Table(title=f"{result['model']} on {result['dataset']}" + (f"  (id {result['id']})" if "id" in result else ""))
    t.add_column("stage")
    t.add_column("top-1", justify="right")
    t.add_column("top-5", justify="right")
    t.add_column("engine")
    for key, label in (("base_accuracy", "base"), ("pruned_accuracy", "pruned"), ("accuracy_float", "pruned+tuned"),
                       ("accuracy", "final")):
        if key in result:
            a = result[key]
            t.add_row(label, f"{100 * a['top1']:.2f} %", f"{100 * a['top5']:.2f} %", a.get("engine", ""))
    p = result.get("prune")
    size = result["size"]
    t.caption = (f"params {size['params']:,}  size {size['dense_bytes'] / 1e6:.2f} MB dense"
                 + (f", {p['csr_bytes'] / 1e6:.2f} MB as CSR" if p and p["sparsity"] > 0.01 else "")
                 + (f"  sparsity {100 * p['sparsity']:.1f} %  param reduction {100 * p['param_reduction']:.1f} %"
                    if p else "")
                 + (f"  int8/float max|err| {result['accuracy'].get('max_abs_err_vs_float', 0):.4f}"
                    f"  top-1 agreement {100 * result['accuracy'].get('top1_agreement_vs_float', 1):.1f} %"
                    if "accuracy_float" in result else ""))
    return t


app = typer.Typer(add_completion=False)
app.command("optimize")(optimize)

if __name__ == "__main__":
    app()
