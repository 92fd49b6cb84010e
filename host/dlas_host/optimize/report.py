"""Sparsity and size report of a (pruned) model: per layer and overall, dense and CSR bytes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .scores import prunable_layers

INDEX_BYTES = 4  # int32 column indices and row pointers, as TVM's CSR kernels take them


@dataclass
class LayerSparsity:
    name: str
    shape: tuple[int, ...]
    params: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.params if self.params else 0.0


@dataclass
class SparsityReport:
    layers: list[LayerSparsity]
    total_params: int  # every parameter of the model, pruned weights included
    nonzero_params: int
    prunable_params: int
    prunable_nonzero: int
    dense_bytes: int  # float32 storage of all parameters
    csr_bytes: int  # prunable weights as CSR over [out, in*kh*kw], the rest dense

    @property
    def sparsity(self) -> float:
        """Sparsity of the prunable (conv/linear) weights."""
        return 1.0 - self.prunable_nonzero / self.prunable_params if self.prunable_params else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["sparsity"] = self.sparsity
        for row, layer in zip(d["layers"], self.layers):
            row["sparsity"] = layer.sparsity
        return d

    def summary(self) -> dict:
        return {"sparsity": round(self.sparsity, 6), "params": self.total_params,
                "nonzero_params": self.nonzero_params, "dense_bytes": self.dense_bytes, "csr_bytes": self.csr_bytes}


@torch.no_grad()
def sparsity_report(model: nn.Module, bytes_per_value: int = 4) -> SparsityReport:
    layers = []
    csr = 0
    prunable_ids = set()
    for name, mod in prunable_layers(model).items():
        w = mod.weight
        prunable_ids.add(id(w))
        nnz = int(torch.count_nonzero(w))
        layers.append(LayerSparsity(name, tuple(w.shape), w.numel(), nnz))
        csr += nnz * (bytes_per_value + INDEX_BYTES) + (w.shape[0] + 1) * INDEX_BYTES
    total = nonzero = other = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p))
        if id(p) not in prunable_ids:
            other += p.numel()
    return SparsityReport(layers, total, nonzero, sum(x.params for x in layers), sum(x.nonzero for x in layers),
                          total * bytes_per_value, csr + other * bytes_per_value)
