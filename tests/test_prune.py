"""Pruning: sparsity reached, global vs layer-wise, structured shrinking that still compiles, fine-tuning."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import tiny_mobilenet, tiny_resnet
from dlas_host import train, zoo
from dlas_host.optimize.prune import prune
from dlas_host.lower.policy import LoweringPolicy
from dlas_host.lower.sparse import conv_weight_matrix, sparse_conv_weight
from dlas_host.optimize.spec import PruneSpec, SpecError
from dlas_host.optimize.structured import channel_groups

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("text", ["unstructured:global:l1:0.8", "unstructured:layer:l1:0.6",
                                  "block:global:l1:0.7", "block:layer:l1:0.5:block=4x4"])
def test_requested_sparsity_reached(text: str) -> None:
    model = zoo.create("resnet18", "cifar10")
    res = prune(model, PruneSpec.parse(text))
    spec = PruneSpec.parse(text)
    assert res.report.sparsity == pytest.approx(spec.amount, abs=0.01)
    # the zeros are really in the weights, and the masks agree with them
    for name, mask in res.masks.items():
        w = model.get_submodule(name).weight
        assert torch.equal(w != 0, mask) or int((w[~mask] != 0).sum()) == 0


def test_global_vs_layerwise() -> None:
    layer = prune(zoo.create("resnet18", "cifar10"), PruneSpec.parse("unstructured:layer:l1:0.7")).report
    glob = prune(zoo.create("resnet18", "cifar10"), PruneSpec.parse("unstructured:global:l1:0.7")).report
    # layer-wise: every layer at the target; global: one threshold, so per-layer sparsities spread out
    assert all(abs(x.sparsity - 0.7) < 0.01 for x in layer.layers)
    spread = [x.sparsity for x in glob.layers]
    assert max(spread) - min(spread) > 0.2
    # with one global threshold, a layer's kept weights are all above every other layer's pruned weights
    assert glob.sparsity == pytest.approx(0.7, abs=0.01)


def test_block_masks_are_blocks() -> None:
    """Pruned blocks are blocks of the sparse kernels' weight matrix: BSR stores no zero-filled block."""
    model = zoo.create("resnet18", "cifar10")
    res = prune(model, PruneSpec.parse("block:layer:l1:0.5:block=1x8"))
    w = conv_weight_matrix(model.get_submodule("layer2.0.conv2").weight.detach().numpy())  # 128 x 1152
    nz_blocks = (w.reshape(128, -1, 8) != 0).any(-1)
    full_blocks = (w.reshape(128, -1, 8) != 0).all(-1)
    assert (nz_blocks == full_blocks).all()  # each 1x8 block is all zero or all kept
    assert res.report.sparsity == pytest.approx(0.5, abs=0.01)
    assert PruneSpec.parse("block:layer:l1:0.5").block == LoweringPolicy().bsr_block
    prune(model := zoo.create("resnet18", "cifar10"), PruneSpec.parse("block:global:l1:0.8"))
    for name in ("conv1", "layer3.1.conv1", "layer4.0.conv2"):
        wt = model.get_submodule(name).weight.detach().numpy()
        sw = sparse_conv_weight(wt, "bsr", (4, 1))
        assert sw.true_nnz == sw.nnz, name


def test_gradient_and_taylor_scores(digits_loaders) -> None:
    for score in ("grad", "taylor"):
        model = tiny_resnet()
        res = prune(model, PruneSpec.parse(f"unstructured:global:{score}:0.5:score_batches=2"),
                    loader=digits_loaders[0])
        assert res.report.sparsity == pytest.approx(0.5, abs=0.01)


def test_spec_errors() -> None:
    for bad, msg in [("unstructured:global:l1", "kind:scope:score:amount"), ("filter:global:l1:0.5", "pruning kind"),
                     ("channel:all:l1:0.5", "scope"), ("channel:global:hessian:0.5", "score"),
                     ("channel:global:l1:x", "not a number"), ("channel:global:l1:1.5", "amount"),
                     ("block:global:l1:0.5:block=8", "block"), ("block:global:l1:0.5:foo=1", "unknown prune option")]:
        with pytest.raises(SpecError, match=msg) as err:
            PruneSpec.parse(bad)
        assert "\n" not in str(err.value)
    assert PruneSpec.parse("unstructured:layerwise:taylor:80%").amount == pytest.approx(0.8)


def test_channel_groups_respect_skips() -> None:
    groups = {g.producer: g for g in channel_groups(zoo.create("resnet18", "cifar10"), X[:1])}
    # only block-internal convs: conv2 of a BasicBlock feeds the residual add
    assert sorted(groups) == sorted(f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2))
    mb = {g.producer: g for g in channel_groups(zoo.create("mobilenet_v2", "cifar10"), X[:1])}
    g = mb["features.2.conv.0.0"]  # expansion conv of the first expanding block
    assert g.depthwise == ["features.2.conv.1.0"] and g.consumers == ["features.2.conv.2"]
    assert g.bns == ["features.2.conv.0.1", "features.2.conv.1.1"]


def _relax_matches(model: torch.nn.Module) -> None:
    import tvm

    from dlas_host.optimize.relax_io import RelaxRunner, to_relax

    x = X[:1]
    mod = to_relax(model, x)
    assert isinstance(mod, tvm.IRModule)
    out = RelaxRunner(mod)(x)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("factory", [tiny_resnet, tiny_mobilenet])
def test_channel_pruning_shrinks_and_compiles(factory) -> None:
    model = factory().eval()
    before = sum(p.numel() for p in model.parameters())
    res = prune(model, PruneSpec.parse("channel:global:l1:0.5"), example_input=X[:1])
    after = sum(p.numel() for p in model.parameters())
    assert after < 0.8 * before and res.params_before == before
    assert res.channels and all(n >= 1 for n in res.channels.values())
    assert model(X).shape == (2, 10)
    _relax_matches(model)


def test_channel_layerwise_mobilenet_v2_runs() -> None:
    model = zoo.create("mobilenet_v2", "cifar10")
    res = prune(model, PruneSpec.parse("channel:layer:l1:0.5"), example_input=X[:1])
    dw = model.get_submodule("features.2.conv.1.0")
    assert dw.in_channels == dw.out_channels == dw.groups == model.get_submodule("features.2.conv.0.0").out_channels
    assert dw.weight.shape[0] == 48 and res.summary()["param_reduction"] > 0.3
    assert model(X).shape == (2, 10)


def test_unstructured_zeros_reach_relax() -> None:
    model = tiny_resnet().eval()
    prune(model, PruneSpec.parse("unstructured:global:l1:0.8"))
    from dlas_host.optimize.relax_io import to_relax
    import tvm

    mod = to_relax(model, X[:1])
    consts = []
    tvm.relax.analysis.post_order_visit(mod["main"].body, lambda e: consts.append(e.value.numpy())
                                        if isinstance(e, tvm.ir.expr.Constant) and hasattr(e.value, "numpy")
                                        and len(e.value.shape) == 4 else None)
    zeros = sum(int((c == 0).sum()) for c in consts)
    total = sum(c.size for c in consts)
    assert zeros / total > 0.7  # BN folding scales the filters but keeps exact zeros


def test_finetune_recovers_after_heavy_pruning(trained_tiny_resnet, digits_loaders) -> None:
    train_loader, test_loader = digits_loaders
    model = copy.deepcopy(trained_tiny_resnet)
    base, _ = train.evaluate(model, test_loader)
    res = prune(model, PruneSpec.parse("unstructured:global:l1:0.9"))
    pruned, _ = train.evaluate(model, test_loader)
    train.train(model, train_loader, train.TrainConfig(epochs=1, lr=0.02, after_step=res.after_step(), progress=False))
    tuned, _ = train.evaluate(model, test_loader)
    assert base > 0.85
    assert tuned > pruned + 0.2 and tuned > 0.8
    # masks stayed fixed: sparsity unchanged by fine-tuning
    from dlas_host.optimize.report import sparsity_report

    assert sparsity_report(model).sparsity == pytest.approx(0.9, abs=0.005)


def test_iterative_schedule_calls_finetune() -> None:
    model = tiny_resnet()
    calls = []
    res = prune(model, PruneSpec.parse("unstructured:layer:l1:0.75:steps=3"),
                finetune=lambda m, keep: calls.append(keep is not None))
    assert calls == [True, True] and res.report.sparsity == pytest.approx(0.75, abs=0.01)
