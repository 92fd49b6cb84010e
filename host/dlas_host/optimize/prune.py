"""Pruning entry point: ``prune(model, spec, ...)`` for unstructured, block and channel pruning.

Unstructured and block pruning zero weights in place and return the fixed keep-masks (fine-tuning keeps them
with ``masks.mask_keeper``); channel pruning removes filters physically (see ``structured``). An iterative
schedule (``spec.steps > 1``) raises sparsity in equal steps, calling ``finetune`` between rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from .masks import Masks, apply_masks, block_masks, mask_keeper, unstructured_masks
from .report import SparsityReport, sparsity_report
from .scores import prunable_layers, weight_scores
from .spec import PruneSpec
from .structured import channel_groups, channel_prune
from ..errors import DlasError

FineTune = Callable[[nn.Module, "Callable[[nn.Module], None] | None"], None]
"""finetune(model, after_step): train the model a little; ``after_step`` keeps masks fixed (or is None)."""


class PruneError(DlasError, ValueError):
    pass


@dataclass
class PruneResult:
    model: nn.Module
    masks: Masks  # empty for channel pruning (the model is smaller instead)
    report: SparsityReport
    channels: dict[str, int] | None = None  # channel pruning: kept channels per producer conv
    params_before: int = 0

    def summary(self) -> dict:
        out = self.report.summary()
        out["params_before"] = self.params_before
        out["param_reduction"] = round(1 - self.report.total_params / self.params_before, 6) if self.params_before else 0.0
        return out

    def after_step(self) -> Callable[[nn.Module], None] | None:
        return mask_keeper(self.masks) if self.masks else None


def prune(model: nn.Module, spec: PruneSpec, *, loader: Iterable | None = None,
          example_input: torch.Tensor | None = None, finetune: FineTune | None = None,
          exclude: Iterable[str] = ()) -> PruneResult:
    """Prune ``model`` in place to ``spec``; ``loader`` feeds grad/taylor scores, ``example_input`` the tracing
    of channel pruning, ``finetune`` is called after each round of an iterative schedule except the last
    (the caller fine-tunes after the last round, masks from ``PruneResult.after_step``)."""
    if spec.needs_data and loader is None:
        raise PruneError(f"score {spec.score!r} needs a data loader")
    excluded = set(exclude)
    params_before = sum(p.numel() for p in model.parameters())
    masks: Masks = {}
    channels = None
    groups = None
    original = None
    if spec.kind == "channel":
        if example_input is None:
            raise PruneError("channel pruning needs an example input to trace the model")
        groups = channel_groups(model, example_input)
        groups = [g for g in groups if g.producer not in excluded]
        if not groups:
            raise PruneError(f"{type(model).__name__} has no channel group that can be pruned independently")
        original = {g.producer: model.get_submodule(g.producer).out_channels for g in groups}
    for step in range(1, spec.steps + 1):
        amount = spec.amount * step / spec.steps
        if spec.kind == "channel":
            layers = {g.producer: model.get_submodule(g.producer) for g in groups}
            scores = weight_scores(model, spec.score, loader, spec.score_batches, layers)
            channels = channel_prune(model, scores, groups, amount, spec.scope, original)
        else:
            layers = {n: m for n, m in prunable_layers(model).items() if n not in excluded}
            scores = weight_scores(model, spec.score, loader, spec.score_batches, layers)
            if spec.kind == "unstructured":
                masks = unstructured_masks(scores, amount, spec.scope, masks or None)
            else:
                masks = block_masks(scores, amount, spec.scope, spec.block, masks or None)
            apply_masks(model, masks)
        if finetune is not None and step < spec.steps:
            finetune(model, mask_keeper(masks) if masks else None)
            if masks:
                apply_masks(model, masks)
    return PruneResult(model, masks, sparsity_report(model), channels, params_before)
