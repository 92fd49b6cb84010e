"""Structured channel (filter) pruning that physically shrinks the model.

Dependencies are found by tracing the model with torch.fx: a convolution's output channels can be removed
when every path from it reaches, through channel-preserving ops only (BatchNorm, activations, pooling,
dropout, depthwise convolutions), a consumer whose input channels can be cut (a dense convolution, or a
Linear after a 1x1 spatial flatten). Anything else on a path (a residual ``add``, a ``cat``, a multiply by
squeeze-excitation weights, the output) couples the channels to other tensors and makes the conv
unprunable. For ResNets this leaves exactly the block-internal convs (BasicBlock conv1, Bottleneck conv1 and
conv2); for MobileNetV2 the expansion conv together with its depthwise conv and both BatchNorms.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

PASS_MODULES = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Sigmoid,
                nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity)
PASS_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.nn.functional.hardswish,
                  torch.nn.functional.silu, torch.nn.functional.dropout, torch.nn.functional.adaptive_avg_pool2d,
                  torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d, torch.sigmoid}
FLATTEN_FUNCTIONS = {torch.flatten}


@dataclass
class ChannelGroup:
    """One prunable set of channels: the producer conv's filters and everything sized by them."""

    producer: str
    bns: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)  # dense convs / linears whose inputs shrink

    @property
    def modules(self) -> list[str]:
        return [self.producer, *self.bns, *self.depthwise, *self.consumers]


class _Unprunable(Exception):
    pass


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """The prunable channel groups of ``model`` (see module docstring)."""
    gm = fx.symbolic_trace(model)
    with torch.no_grad():
        ShapeProp(gm).propagate(example_input)
    mods = dict(gm.named_modules())
    groups = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        m = mods[node.target]
        if not isinstance(m, nn.Conv2d) or m.groups != 1:
            continue
        group = ChannelGroup(node.target)
        try:
            for user in node.users:
                _follow(user, node, group, mods, flattened=False)
        except _Unprunable:
            continue
        if group.consumers:
            groups.append(group)
    return groups


def _spatial_is_one(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return meta is not None and len(meta.shape) == 4 and tuple(meta.shape[2:]) == (1, 1)


def _follow(node: fx.Node, src: fx.Node, group: ChannelGroup, mods: dict[str, nn.Module], flattened: bool) -> None:
    """Walk one use of the channel-carrying tensor; raise _Unprunable on any coupling."""
    if node.op == "call_module":
        m = mods[node.target]
        if isinstance(m, nn.Linear):
            if not flattened:
                raise _Unprunable
            group.consumers.append(node.target)
            return
        if isinstance(m, nn.Conv2d) and not flattened:
            if m.groups == 1:
                group.consumers.append(node.target)
                return
            if _is_depthwise(m):
                group.depthwise.append(node.target)
            else:
                raise _Unprunable
        elif isinstance(m, nn.BatchNorm2d) and not flattened:
            group.bns.append(node.target)
        elif isinstance(m, nn.Flatten) and not flattened:
            if not _spatial_is_one(src):
                raise _Unprunable
            flattened = True
        elif not isinstance(m, PASS_MODULES):
            raise _Unprunable
    elif node.op == "call_function" and node.target in PASS_FUNCTIONS and node.args and node.args[0] is src:
        pass
    elif node.op == "call_function" and node.target in FLATTEN_FUNCTIONS and not flattened:
        if not _spatial_is_one(src):
            raise _Unprunable
        flattened = True
    elif node.op == "call_method" and node.target in ("relu", "relu_", "sigmoid") and node.args[0] is src:
        pass
    elif node.op == "call_method" and node.target == "flatten" and not flattened:
        if not _spatial_is_one(src):
            raise _Unprunable
        flattened = True
    else:
        raise _Unprunable
    for user in node.users:
        _follow(user, node, group, mods, flattened)


@torch.no_grad()
def shrink_group(model: nn.Module, group: ChannelGroup, keep: torch.Tensor) -> None:
    """Keep only channels ``keep`` (sorted indices) of ``group``: edits the modules in place."""
    keep = keep.sort().values
    n = len(keep)
    get = model.get_submodule
    conv = get(group.producer)
    conv.weight = nn.Parameter(conv.weight[keep].clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias[keep].clone())
    conv.out_channels = n
    for name in group.bns:
        bn = get(name)
        if bn.affine:
            bn.weight = nn.Parameter(bn.weight[keep].clone())
            bn.bias = nn.Parameter(bn.bias[keep].clone())
        if bn.track_running_stats:
            bn.running_mean = bn.running_mean[keep].clone()
            bn.running_var = bn.running_var[keep].clone()
        bn.num_features = n
    for name in group.depthwise:
        dw = get(name)
        dw.weight = nn.Parameter(dw.weight[keep].clone())
        if dw.bias is not None:
            dw.bias = nn.Parameter(dw.bias[keep].clone())
        dw.in_channels = dw.out_channels = dw.groups = n
    for name in group.consumers:
        c = get(name)
        if isinstance(c, nn.Linear):
            c.weight = nn.Parameter(c.weight[:, keep].clone())
            c.in_features = n
        else:
            c.weight = nn.Parameter(c.weight[:, keep].clone())
            c.in_channels = n


def filter_scores(group: ChannelGroup, scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean element score of each producer filter (mean, not sum, so global ranking is fan-in neutral)."""
    s = scores[group.producer]
    return s.reshape(s.shape[0], -1).mean(1)


def channel_prune(model: nn.Module, scores: dict[str, torch.Tensor], groups: list[ChannelGroup], amount: float,
                  scope: str, original: dict[str, int] | None = None, min_keep: int = 1) -> dict[str, int]:
    """Remove channels so that ``amount`` of each group's (layer) or all groups' (global) original channels are
    gone. ``original`` holds the channel counts before the first round of an iterative schedule.
    Returns the new channel count per group producer."""
    original = original or {g.producer: model.get_submodule(g.producer).out_channels for g in groups}
    per_group = {g.producer: filter_scores(g, scores) for g in groups}
    keep_n: dict[str, int] = {}
    if scope == "layer":
        for g in groups:
            keep_n[g.producer] = max(min_keep, original[g.producer] - int(round(amount * original[g.producer])))
    else:
        # Global: every group's scores normalised by its mean so layers of different weight scale compete fairly.
        allv = torch.cat([s / (s.mean() + 1e-12) for s in per_group.values()])
        total_orig = sum(original.values())
        drop_total = int(round(amount * total_orig)) - (total_orig - len(allv))
        order = torch.argsort(allv, stable=True)
        owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(per_group.values())])
        dropped = torch.zeros(len(groups), dtype=torch.long)
        sizes = torch.tensor([len(s) for s in per_group.values()])
        for idx in order.tolist():
            if drop_total <= 0:
                break
            o = owner[idx]
            if sizes[o] - dropped[o] > min_keep:
                dropped[o] += 1
                drop_total -= 1
        keep_n = {g.producer: int(sizes[i] - dropped[i]) for i, g in enumerate(groups)}
    for g in groups:
        s = per_group[g.producer]
        k = min(len(s), keep_n[g.producer])
        if k < len(s):
            shrink_group(model, g, torch.argsort(s, descending=True, stable=True)[:k])
    return {g.producer: model.get_submodule(g.producer).out_channels for g in groups}
