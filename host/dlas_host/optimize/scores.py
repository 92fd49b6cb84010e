"""Importance scores for conv/linear weights: L1 magnitude, gradient magnitude, first-order Taylor."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv2d and Linear modules by qualified name (their ``weight`` is what pruning zeroes)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def weight_scores(model: nn.Module, score: str, loader: Iterable | None = None, batches: int = 4,
                  layers: dict[str, nn.Module] | None = None) -> dict[str, torch.Tensor]:
    """Element-wise importance of every prunable weight (same shape as the weight).

    ``grad``: mean |dL/dw| over ``batches``; ``taylor``: mean |w * dL/dw| (first-order Taylor estimate of the
    loss change when w is removed), both accumulated per batch so signs do not cancel across batches.
    """
    layers = prunable_layers(model) if layers is None else layers
    if score == "l1":
        return {n: m.weight.detach().abs().clone() for n, m in layers.items()}
    if loader is None:
        raise ValueError(f"score {score!r} needs data: pass a loader of (input, label) batches")
    acc = {n: torch.zeros_like(m.weight) for n, m in layers.items()}
    was_training = model.training
    model.eval()  # keep BatchNorm statistics fixed while measuring
    device = next(model.parameters()).device
    seen = 0
    loss_fn = nn.CrossEntropyLoss()
    for i, (x, y) in enumerate(loader):
        if i >= batches:
            break
        model.zero_grad(set_to_none=True)
        loss_fn(model(x.to(device)), y.to(device)).backward()
        for n, m in layers.items():
            g = m.weight.grad
            if g is None:
                continue
            acc[n] += (g * m.weight).abs().detach() if score == "taylor" else g.abs().detach()
        seen += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if seen == 0:
        raise ValueError("the scoring loader yielded no batches")
    return {n: a / seen for n, a in acc.items()}
