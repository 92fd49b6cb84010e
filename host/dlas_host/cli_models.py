"""``dlas-host train`` and ``dlas-host models ...``: base models you train or import once and reuse by id or name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .cli_common import JsonOpt, err, out, user_errors

models_app = typer.Typer(help="the model store: trained, imported and optimized models", no_args_is_help=True)


def _acc_text(meta: dict) -> str:
    acc = meta.get("accuracy") or {}
    if acc.get("top1") is None:
        return "-"
    return f"{100 * acc['top1']:.2f} % ({acc.get('samples', '?')} img)"


def train_cmd(
    model: str = typer.Option(..., help="zoo model (resnet18, mobilenet_v2, ...)"),
    dataset: str = typer.Option(..., help="cifar10 | imagenet | digits"),
    epochs: int = typer.Option(10, min=1),
    lr: float = typer.Option(0.05, help="peak learning rate (SGD, Nesterov momentum 0.9)"),
    batch_size: int = typer.Option(64, min=1),
    schedule: str = typer.Option("cosine", help="cosine | step | constant"),
    weight_decay: float = typer.Option(5e-4),
    seed: int = typer.Option(0),
    max_steps: Optional[int] = typer.Option(None, min=1, help="cap optimizer steps per epoch (smoke runs)"),
    name: Optional[str] = typer.Option(None, help="store name (default MODEL-DATASET-eEPOCHS)"),
    data_dir: Optional[Path] = typer.Option(None, help="dataset directory (else $DLAS_<DATASET>_DIR or config)"),
    device: Optional[str] = typer.Option(None, help="torch device (default: cuda when torch sees one, else cpu)"),
    force: bool = typer.Option(False, "--force", help="retrain even if this recipe is already stored"),
    as_json: bool = JsonOpt,
) -> None:
    """Train a base model (resumable: re-run the same command after a kill) and store it for reuse."""
    from .optimize.base_model import Recipe, train_base

    with user_errors():
        if schedule not in ("cosine", "step", "constant"):
            raise typer.BadParameter(f"unknown schedule {schedule!r}; known: cosine, step, constant")
        recipe = Recipe(model=model, dataset=dataset, epochs=epochs, lr=lr, batch_size=batch_size, schedule=schedule,
                        weight_decay=weight_decay, seed=seed, max_steps_per_epoch=max_steps)
        entry = train_base(recipe, name=name, data_dir=data_dir, device=device, progress=not as_json, force=force)
    meta = entry.meta
    if as_json:
        print(json.dumps({k: meta.get(k) for k in ("id", "name", "base_model", "dataset", "accuracy", "recipe",
                                                     "data_fingerprint", "trained_on")}))
        return
    out.print(f"stored [bold]{meta['name']}[/] (id {entry.id}): {model}/{dataset}, test top-1 {_acc_text(meta)}, "
              f"trained on {meta.get('trained_on', '?')}")
    err.print(f"use it with: dlas-host bench --model {model} --dataset {dataset} --model-id {meta['name']}")


@models_app.command("list")
def models_list(as_json: bool = JsonOpt) -> None:
    """Stored models, oldest first."""
    from .optimize import modelstore

    with user_errors():
        metas = modelstore.list_models()
    if as_json:
        print(json.dumps([{k: m.get(k) for k in ("id", "name", "source", "base_model", "dataset", "prune",
                                                  "quantize", "sparsity", "accuracy", "created")} for m in metas]))
        return
    table = Table(title=f"{len(metas)} stored model(s)")
    for col in ("id", "name", "source", "model", "dataset", "optimization", "top-1", "created"):
        table.add_column(col)
    for m in metas:
        opt = " + ".join(x for x in ((m.get("prune") or {}).get("text", "") if isinstance(m.get("prune"), dict) else "",
                                     (m.get("quantize") or {}).get("dtype", "") if isinstance(m.get("quantize"), dict)
                                     else "") if x) or "-"
        table.add_row(m.get("id", "?"), m.get("name") or "", m.get("source") or "", m.get("base_model", "?"),
                      m.get("dataset", "?"), opt, _acc_text(m), m.get("created", ""))
    out.print(table)


@models_app.command("show")
def models_show(ident: str = typer.Argument(..., help="id, id prefix or name")) -> None:
    """One stored model's metadata, as JSON."""
    from .optimize import modelstore

    with user_errors():
        entry = modelstore.load(ident)
    print(json.dumps(entry.meta, indent=2, default=str))


@models_app.command("import")
def models_import(
    checkpoint: Path = typer.Argument(..., help="a state_dict file (e.g. torchvision's published weights)"),
    model: str = typer.Option(..., help="zoo model the weights are for"),
    dataset: str = typer.Option(..., help="dataset the weights were trained on"),
    name: Optional[str] = typer.Option(None, help="store name (default: the file's stem)"),
    resize: Optional[int] = typer.Option(None, help="ImageNet evaluation resize of these weights (e.g. 232)"),
    crop: Optional[int] = typer.Option(None, min=1, help="ImageNet centre crop = the model's input side (e.g. 240); "
                                                  "builds and evaluations use it"),
    interpolation: Optional[str] = typer.Option(None, help="bilinear | bicubic (the weights' evaluation recipe)"),
    as_json: bool = JsonOpt,
) -> None:
    """Import user weights into the store (read as tensors only; checked against the architecture)."""
    from . import data, zoo
    from .data.recipe import resolve as check_recipe
    from .optimize import modelstore
    from dlas_agent.runner import sha256_file

    with user_errors():
        net = zoo.create(model, data.model_dataset(dataset), checkpoint=checkpoint)
        prep = data.preprocessing(dataset)
        if resize is not None:
            prep["resize"] = resize
        if interpolation is not None:
            if interpolation not in ("bilinear", "bicubic"):
                raise typer.BadParameter(f"unknown interpolation {interpolation!r}; known: bilinear, bicubic")
            prep["interpolation"] = interpolation
        if crop is not None:
            prep["crop"] = prep["image_size"] = crop
        check_recipe(dataset, prep)  # a recipe this code cannot honour is refused in one line
        entry = modelstore.save(net, {"base_model": model, "dataset": dataset, "prune": None, "quantize": None,
                                      "calibration": None, "source": "import", "name": name or checkpoint.stem,
                                      "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
                                      "preprocessing": prep, "sparsity": 0.0,
                                      "params": sum(p.numel() for p in net.parameters())})
    if as_json:
        print(json.dumps({"id": entry.id, "name": entry.meta["name"]}))
    else:
        out.print(f"imported [bold]{entry.meta['name']}[/] (id {entry.id}): {model}/{dataset}")
