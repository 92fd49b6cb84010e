"""Post-training calibration: per-tensor activation ranges at the inputs of every conv/linear call.

Forward pre-hooks record the inputs of ``nn.Conv2d`` / ``nn.Linear`` modules in call order; that order is the
order of ``conv2d`` / ``matmul`` bindings in the imported Relax ``main`` (``quantize.quantize_relax`` checks the
counts and fails loudly if they differ). Observers keep the exact max |x| plus a bounded random subsample of
|x|, from which the clipping threshold is chosen:

- ``minmax``: max |x|
- ``percentile``: the given percentile of |x|
- ``mse``: the threshold minimising the mean squared int8 quantization error of the samples
- ``entropy``: TensorRT's KL-divergence calibration on a 2048-bin histogram of |x|
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import nn
from ..errors import DlasError

QMAX = 127
SAMPLES_PER_CALL = 1 << 15
MAX_SAMPLES = 1 << 20


class CalibrationError(DlasError, RuntimeError):
    pass


@dataclass
class Observer:
    name: str
    absmax: float = 0.0
    samples: list[np.ndarray] = field(default_factory=list)
    count: int = 0
    nonnegative: bool = True

    def observe(self, x: torch.Tensor, gen: torch.Generator) -> None:
        x = x.detach().float().flatten()
        self.absmax = max(self.absmax, float(x.abs().max()))
        self.nonnegative = self.nonnegative and bool((x >= 0).all())
        if self.count < MAX_SAMPLES:
            if x.numel() > SAMPLES_PER_CALL:
                x = x[torch.randint(0, x.numel(), (SAMPLES_PER_CALL,), generator=gen)]
            self.samples.append(x.abs().cpu().numpy())
            self.count += x.numel()

    def threshold(self, method: str, percentile: float = 99.99) -> float:
        if self.absmax == 0.0:
            return 1.0  # an all-zero tensor: any scale works
        a = np.concatenate(self.samples)
        if method == "minmax":
            t = self.absmax
        elif method == "percentile":
            t = float(np.percentile(a, percentile))
        elif method == "mse":
            t = _mse_threshold(a, self.absmax)
        elif method == "entropy":
            t = _entropy_threshold(a, self.absmax)
        else:
            raise CalibrationError(f"unknown calibration method {method!r}")
        return max(t, self.absmax * 1e-3, 1e-8)

    def scale(self, method: str, percentile: float = 99.99) -> float:
        return self.threshold(method, percentile) / QMAX


def _mse_threshold(a: np.ndarray, absmax: float, steps: int = 100) -> float:
    best, best_t = np.inf, absmax
    for t in np.linspace(absmax / steps, absmax, steps):
        s = t / QMAX
        err = float(np.mean((np.clip(np.round(a / s), 0, QMAX) * s - a) ** 2))
        if err < best:
            best, best_t = err, float(t)
    return best_t


def _entropy_threshold(a: np.ndarray, absmax: float, bins: int = 2048, levels: int = QMAX + 1) -> float:
    # Exact zeros (half of every post-ReLU tensor) quantize exactly at any scale; left in, their spike in the
    # first bin dominates the KL of every candidate and drags the threshold far too low.
    a = a[a > 0]
    if a.size == 0:
        return absmax
    hist, edges = np.histogram(a, bins=bins, range=(0.0, absmax))
    hist = hist.astype(np.float64)
    best, best_i = np.inf, bins
    for i in range(levels, bins + 1, 16):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nz = p > 0
        # Q: the unclipped reference bins merged into `levels` quantized bins and spread back over the
        # non-empty bins (TensorRT); P carries the clipped outliers in its last bin, so clipping costs KL.
        q = np.zeros(i)
        ref = hist[:i]
        for c in np.array_split(np.arange(i), levels):
            m = nz[c]
            if m.any():
                q[c[m]] = ref[c].sum() / m.sum()
        if p.sum() == 0 or q.sum() == 0:
            continue
        p_n, q_n = p / p.sum(), q / q.sum()
        q_n = np.where(nz, np.maximum(q_n, 1e-4 / max(int(nz.sum()), 1)), 0.0)  # smooth empty Q bins
        kl = float(np.sum(p_n[nz] * np.log(p_n[nz] / q_n[nz])))
        if kl < best:
            best, best_i = kl, i
    return float(edges[min(best_i, bins)])


@dataclass
class Calibration:
    """Activation scales (one per conv/linear call, in execution order) and the observers behind them."""

    names: list[str]
    scales: list[float]
    method: str
    samples: int
    observers: list[Observer] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return {"method": self.method, "samples": self.samples,
                "layers": [{"name": n, "scale": s} for n, s in zip(self.names, self.scales)]}


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, *, samples: int = 256, method: str = "percentile",
              percentile: float = 99.99, seed: int = 0) -> Calibration:
    """Run up to ``samples`` inputs of ``batches`` (tensors or (input, label) pairs) through ``model``."""
    model.eval()
    observers: list[Observer] = []
    call = [0]
    gen = torch.Generator().manual_seed(seed)

    def hook(mod: nn.Module, args: tuple, name: str) -> None:
        i = call[0]
        if i == len(observers):
            observers.append(Observer(name))
        elif observers[i].name != name:
            raise CalibrationError(f"conv/linear call order changed between batches at call {i}: "
                                   f"{observers[i].name} vs {name}")
        observers[i].observe(args[0], gen)
        call[0] += 1

    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: hook(mod, args, n))
               for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    device = next(model.parameters()).device
    seen = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x[: samples - seen]
            call[0] = 0
            model(x.to(device))
            seen += len(x)
            if seen >= samples:
                break
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise CalibrationError("no calibration data")
    return Calibration([o.name for o in observers], [o.scale(method, percentile) for o in observers], method, seen,
                       observers)
