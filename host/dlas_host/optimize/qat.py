"""Quantization-aware fine-tuning: fake-quant in torch with a straight-through estimator.

QAT runs on the BatchNorm-folded model (``zoo.fold_batchnorm``), so the weights being fake-quantized are
exactly the constants the Relax import will see; afterwards the fake quantization is removed, the model is
recalibrated and goes through the same ``quantize_relax`` export as post-training quantization.
Activation scales are the calibration's (fixed); weight scales are per output channel, recomputed each step.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from .calibrate import QMAX, Calibration


def _fake_quant(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    q = torch.clamp(torch.round(x / scale), -QMAX, QMAX) * scale
    return x + (q - x).detach()  # straight-through: identity gradient


class _WeightFakeQuant(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = w.detach().abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-12) / QMAX
        return _fake_quant(w, scale.view(-1, *([1] * (w.dim() - 1))))


@contextmanager
def fake_quantized(model: nn.Module, calibration: Calibration) -> Iterator[nn.Module]:
    """Within the context, conv/linear inputs and weights of ``model`` are fake-quantized like the int8 graph."""
    scales: dict[str, float] = {}
    for name, s in zip(calibration.names, calibration.scales):
        scales.setdefault(name, s)
    handles, wrapped = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and name in scales:
            handles.append(mod.register_forward_pre_hook(
                lambda m, args, s=scales[name]: (_fake_quant(args[0], s),) + tuple(args[1:])))
            parametrize.register_parametrization(mod, "weight", _WeightFakeQuant())
            wrapped.append(mod)
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        for mod in wrapped:
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)


def qat_finetune(model: nn.Module, calibration: Calibration, train_loader, cfg) -> tuple[nn.Module, list[dict]]:
    """Fold BatchNorm, fine-tune with fake quantization (``cfg``: a ``train.TrainConfig``); returns the folded,
    fine-tuned float model (to be recalibrated and exported) and the training history."""
    from dlas_host import train, zoo

    folded = zoo.fold_batchnorm(model)
    if len(set(calibration.names)) and not any(n in dict(folded.named_modules()) for n in calibration.names):
        raise ValueError("calibration layer names do not match the folded model")
    with fake_quantized(folded, calibration):
        history = train.train(folded, train_loader, cfg)
    return folded.eval(), history
