"""Torch -> Relax import exactly as the host compile path does it, plus a small runner for accuracy checks.

The host path is: fold BatchNorm, ``torch.export``, ``from_exported_program(keep_params_as_input=False)``,
(here: ``quantize_relax``), ``lower``, ``tvm.compile``. Accuracy of a quantized model is measured by running
its Relax module, so int8 numbers are those of the int8 graph, not of a fake-quantized torch model.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn


def to_relax(model: nn.Module, example_input: torch.Tensor):
    """IRModule of ``model`` (BatchNorm folded) for inputs shaped like ``example_input``."""
    import tvm.relax.frontend.torch  # noqa: F401 - registers the frontend submodule
    from tvm import relax

    from dlas_host import zoo

    folded = zoo.fold_batchnorm(model.eval())
    with torch.no_grad():
        ep = torch.export.export(folded, (example_input,))
    return relax.frontend.torch.from_exported_program(ep, keep_params_as_input=False)


class RelaxRunner:
    """Compile an IRModule for the host CPU with the stock pipeline and call ``main`` on numpy batches."""

    def __init__(self, mod, target: str | dict = "llvm") -> None:
        import tvm
        from tvm import relax

        self.exe = tvm.compile(mod, target=tvm.target.Target(target) if isinstance(target, dict) else target)
        self.dev = tvm.cpu()
        self.vm = relax.VirtualMachine(self.exe, self.dev)
        sinfo = mod["main"].params[0].ty
        self.shape = tuple(int(d) for d in sinfo.shape)
        self.dtype = str(sinfo.dtype)

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        import tvm

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        n = x.shape[0]
        if n < self.shape[0]:  # static batch: pad the ragged last batch
            x = np.concatenate([x, np.zeros((self.shape[0] - n, *x.shape[1:]), x.dtype)])
        out = self.vm["main"](tvm.runtime.tensor(x.astype(self.dtype), self.dev))
        if not isinstance(out, tvm.runtime.Tensor):
            out = out[0]
        return out.numpy().astype(np.float32)[:n]


def evaluate_relax(runner: RelaxRunner, loader: Iterable, max_batches: int | None = None,
                   reference: nn.Module | None = None) -> dict:
    """Top-1/top-5 of a compiled module; with ``reference`` also the max abs error and top-1 agreement."""
    n = c1 = c5 = agree = 0
    max_err = 0.0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        for s in range(0, len(y), runner.shape[0]):
            xb, yb = x[s:s + runner.shape[0]], y[s:s + runner.shape[0]]
            out = torch.from_numpy(runner(xb))
            top = out.topk(min(5, out.shape[1]), 1).indices
            c1 += int((top[:, 0] == yb).sum())
            c5 += int((top == yb[:, None]).any(1).sum())
            n += len(yb)
            if reference is not None:
                with torch.no_grad():
                    ref = reference(xb)
                max_err = max(max_err, float((ref - out).abs().max()))
                agree += int((ref.argmax(1) == out.argmax(1)).sum())
    res = {"top1": c1 / n if n else 0.0, "top5": c5 / n if n else 0.0, "samples": n}
    if reference is not None:
        res["max_abs_err"] = max_err
        res["top1_agreement"] = agree / n if n else 0.0
    return res
