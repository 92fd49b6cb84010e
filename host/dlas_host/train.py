"""DLAS layer 2: training / fine-tuning and accuracy.

SGD with momentum and weight decay, cosine or step learning-rate schedule, resumable checkpoints
(model + optimizer + scheduler + epoch, written atomically after every epoch), rich progress.
Pruning keeps its masks fixed during fine-tuning through ``TrainConfig``'s ``after_step`` hook.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader


@dataclass
class TrainConfig:
    epochs: int = 1
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: str = "cosine"  # cosine | step | constant
    step_size: int = 30  # epochs between decays (step schedule)
    gamma: float = 0.1
    label_smoothing: float = 0.0
    max_steps_per_epoch: int | None = None  # cap for smoke runs
    checkpoint: Path | None = None  # resume from / save to this file
    device: str | None = None  # default: cuda when available, else cpu
    progress: bool = True
    # Called after every optimizer step (pruning re-applies its masks here).
    after_step: Callable[[nn.Module], None] | None = field(default=None, repr=False)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Per-step scheduler so short fine-tunes (one or two epochs) still anneal."""
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        fn = lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))  # noqa: E731
    elif cfg.schedule == "step":
        fn = lambda s: cfg.gamma ** ((s // steps_per_epoch) // cfg.step_size)  # noqa: E731
    elif cfg.schedule == "constant":
        fn = lambda s: 1.0  # noqa: E731
    else:
        raise ValueError(f"unknown LR schedule {cfg.schedule!r}; known: cosine, step, constant")
    return torch.optim.lr_scheduler.LambdaLR(opt, fn)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[info]}"), disable=not enabled, transient=True)


def _save_atomic(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(model: nn.Module, train_loader: DataLoader, cfg: TrainConfig,
          test_loader: DataLoader | None = None) -> list[dict]:
    """Train ``model`` in place; returns one history row per epoch run (loss, train acc, test top-1/top-5).

    If ``cfg.checkpoint`` exists, training resumes after its last completed epoch.
    """
    device = torch.device(cfg.device) if cfg.device else default_device()
    home = next(model.parameters()).device  # handed back there: callers keep working on the CPU
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.nesterov and cfg.momentum > 0)
    steps = len(train_loader) if cfg.max_steps_per_epoch is None else min(len(train_loader), cfg.max_steps_per_epoch)
    sched = make_scheduler(opt, cfg, steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    start, history = 0, []
    if cfg.checkpoint and Path(cfg.checkpoint).is_file():
        try:  # tensors and plain values only: a planted checkpoint cannot run code
            state = torch.load(cfg.checkpoint, map_location=device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a torn or foreign file: set it aside and start over
            aside = Path(f"{cfg.checkpoint}.unreadable")
            os.replace(cfg.checkpoint, aside)
            print(f"warning: checkpoint {cfg.checkpoint} is unreadable ({str(exc).splitlines()[0][:120]}); "
                  f"moved to {aside.name}, training from the start", file=sys.stderr)
            state = None
    else:
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = state["epoch"], state.get("history", [])
    with _progress(cfg.progress) as prog:
        for epoch in range(start, cfg.epochs):
            model.train()
            task = prog.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps, info="")
            seen = correct = 0
            loss_sum = 0.0
            for i, (x, y) in enumerate(train_loader):
                if i >= steps:
                    break
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                out = model(x)
                loss = loss_fn(out, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if cfg.after_step is not None:
                    cfg.after_step(model)
                seen += len(y)
                correct += int((out.argmax(1) == y).sum())
                loss_sum += loss.item() * len(y)
                prog.update(task, advance=1, info=f"loss {loss_sum / seen:.3f} acc {correct / seen:.3f}")
            prog.remove_task(task)
            row = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_top1": correct / max(seen, 1),
                   "lr": opt.param_groups[0]["lr"]}
            if test_loader is not None:
                row["top1"], row["top5"] = evaluate(model, test_loader, device=device)
            history.append(row)
            if cfg.checkpoint:
                _save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict(), "epoch": epoch + 1, "history": history,
                              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()
                                         if k != "after_step"}},
                             Path(cfg.checkpoint))
    model.to(home).eval()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device | str | None = None,
             max_batches: int | None = None) -> tuple[float, float]:
    """(top-1, top-5) accuracy in [0, 1] over ``loader`` (top-5 = top-1 when there are fewer than 5 classes)."""
    device = torch.device(device) if device else next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = c1 = c5 = 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        out = model(x)
        k = min(5, out.shape[1])
        top = out.topk(k, dim=1).indices
        hit = top == y.unsqueeze(1)
        c1 += int(hit[:, 0].sum())
        c5 += int(hit.any(1).sum())
        n += len(y)
    model.train(was_training)
    return (c1 / n, c5 / n) if n else (0.0, 0.0)


def accuracy_record(top1: float, top5: float, *, dataset: str, samples: int | None = None) -> dict:
    """The dict the results store records next to latency."""
    return {"top1": round(top1, 6), "top5": round(top5, 6), "dataset": dataset, "samples": samples}
