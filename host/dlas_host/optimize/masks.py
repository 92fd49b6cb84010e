"""Unstructured and block pruning as fixed weight masks (shapes stay; zeros reach TVM's sparse kernels)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Masks = dict[str, torch.Tensor]


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k lowest entries of a 1-D tensor (exact count even with ties)."""
    drop = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        drop[torch.argsort(scores, stable=True)[:k]] = True
    return drop


def unstructured_masks(scores: dict[str, torch.Tensor], amount: float, scope: str,
                       previous: Masks | None = None) -> Masks:
    """Keep-masks removing ``amount`` of the weights: over all layers at once (global) or per layer.

    Already-pruned weights (``previous``) score -inf so an iterative schedule only ever adds zeros.
    """
    scores = {n: s.float().where(previous[n], torch.tensor(-1.0)) if previous else s.float()
              for n, s in scores.items()}
    if scope == "layer":
        return {n: ~_lowest(s.flatten(), int(round(amount * s.numel()))).view_as(s) for n, s in scores.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    drop = _lowest(flat, int(round(amount * flat.numel())))
    out, i = {}, 0
    for n, s in scores.items():
        out[n] = ~drop[i:i + s.numel()].view_as(s)
        i += s.numel()
    return out


def _as_2d(t: torch.Tensor) -> torch.Tensor:
    """The sparse kernels' weight matrix: [out, kh*kw*in] for convs (columns ordered kh, kw, ic, as
    ``lower.sparse.conv_weight_matrix``), so a pruned block is exactly one stored BSR block."""
    if t.dim() == 4:
        return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1)
    return t.reshape(t.shape[0], -1)


def _from_2d(m: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) == 4:
        o, i, kh, kw = shape
        return m.reshape(o, kh, kw, i).permute(0, 3, 1, 2).contiguous()
    return m.reshape(shape)


def block_masks(scores: dict[str, torch.Tensor], amount: float, scope: str, block: tuple[int, int],
                previous: Masks | None = None) -> Masks:
    """Keep-masks removing ``amount`` of the (r x c) blocks of each weight viewed as [out, kh*kw*in].

    Block importance is the mean element score, so the zero padding of ragged edges does not bias it and
    layers of different sizes compare fairly in the global scope.
    """
    r, c = block
    pooled: dict[str, torch.Tensor] = {}
    for n, s in scores.items():
        s2 = _as_2d(s.float())
        if previous:
            s2 = s2 * _as_2d(previous[n]).float()
        rows, cols = s2.shape
        pr, pc = (-rows) % r, (-cols) % c
        ones = F.pad(torch.ones_like(s2), (0, pc, 0, pr))
        summed = F.avg_pool2d(F.pad(s2, (0, pc, 0, pr))[None, None], (r, c), (r, c), divisor_override=1)[0, 0]
        count = F.avg_pool2d(ones[None, None], (r, c), (r, c), divisor_override=1)[0, 0]
        pooled[n] = summed / count
    keep_blocks = unstructured_masks(pooled, amount, scope)
    out = {}
    for n, s in scores.items():
        rows, cols = _as_2d(s).shape
        kb = keep_blocks[n].repeat_interleave(r, 0).repeat_interleave(c, 1)[:rows, :cols]
        out[n] = _from_2d(kb, s.shape)
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    mods = dict(model.named_modules())
    for n, m in masks.items():
        w = mods[n].weight
        w.mul_(m.to(w.device, w.dtype))


def mask_keeper(masks: Masks) -> Callable[[nn.Module], None]:
    """An ``after_step`` hook for training that keeps pruned weights at exactly zero."""
    return lambda model: apply_masks(model, masks)
