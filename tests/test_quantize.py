"""Quantization: int8 Relax modules with real int8 conv2d/matmul that compile and match float; fp16/bf16."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import tiny_mobilenet, tiny_resnet
from dlas_host import zoo
from dlas_host.optimize.calibrate import CalibrationError, calibrate
from dlas_host.optimize.quantize import QuantizeError, op_dtypes, quantizable_ops, quantize_relax
from dlas_host.optimize.relax_io import RelaxRunner, evaluate_relax, to_relax
from dlas_host.optimize.spec import QuantSpec, SpecError


@pytest.fixture(scope="module")
def calib_batch(digits_loaders) -> torch.Tensor:
    return next(iter(digits_loaders[0]))[0][:16]


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_int8_resnet_close_to_float(trained_tiny_resnet, calib_batch, method: str) -> None:
    model = copy.deepcopy(trained_tiny_resnet).eval()
    cal = calibrate(model, [calib_batch], samples=16, method=method)
    mod = quantize_relax(to_relax(model, calib_batch), QuantSpec("int8", calib_method=method), cal)
    dtypes = op_dtypes(mod)
    assert dtypes and all(d == ("relax.nn.conv2d", "int8", "int8") for d in dtypes[:-1])
    assert dtypes[-1] == ("relax.matmul", "int8", "int8")
    assert "out_dtype=\"int32\"" in mod.script()
    out = RelaxRunner(mod)(calib_batch)
    with torch.no_grad():
        ref = model(calib_batch).numpy()
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert err < 0.1, f"{method}: relative max error {err:.3f}"
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_int8_depthwise_and_accuracy(digits_loaders) -> None:
    model = tiny_mobilenet().eval()
    x = next(iter(digits_loaders[1]))[0][:8]
    cal = calibrate(model, digits_loaders[0], samples=32, method="percentile")
    mod = quantize_relax(to_relax(model, x), QuantSpec("int8"), cal)
    assert any(d == ("relax.nn.conv2d", "int8", "int8") for d in op_dtypes(mod))
    res = evaluate_relax(RelaxRunner(mod), digits_loaders[1], max_batches=1, reference=model)
    assert res["samples"] == 32 and res["top1_agreement"] >= 0.8 and "max_abs_err" in res


def test_skip_first_last_and_counts_checked(trained_tiny_resnet, calib_batch) -> None:
    model = trained_tiny_resnet
    mod = to_relax(model, calib_batch[:1])
    cal = calibrate(model, [calib_batch], samples=4)
    q = quantize_relax(mod, QuantSpec("int8", skip_first=True, skip_last=True), cal)
    d = op_dtypes(q)
    assert d[0][1] == "float32" and d[-1][1] == "float32" and d[1][1] == "int8"
    cal.scales.pop()
    with pytest.raises(QuantizeError, match="calibration saw"):
        quantize_relax(mod, QuantSpec("int8"), cal)
    with pytest.raises(QuantizeError, match="needs a calibration"):
        quantize_relax(mod, "int8")
    with pytest.raises(CalibrationError):
        calibrate(model, [], samples=4)


def test_resnet18_call_order_matches_relax() -> None:
    model = zoo.create("resnet18", "cifar10")
    x = zoo.example_input("cifar10")
    cal = calibrate(model, [x], samples=1)
    ops = quantizable_ops(to_relax(model, x))
    assert len(ops) == len(cal.names) == 21  # 20 convs (3 downsample) + fc
    assert cal.names[0] == "conv1" and cal.names[-1] == "fc"


@pytest.mark.parametrize("dtype,tvm_dtype,tol", [("fp16", "float16", 5e-3), ("bf16", "bfloat16", 5e-2)])
def test_low_precision_compiles_and_runs(trained_tiny_resnet, calib_batch, dtype: str, tvm_dtype: str,
                                         tol: float) -> None:
    model = trained_tiny_resnet.eval()
    mod = quantize_relax(to_relax(model, calib_batch[:4]), dtype)
    assert all(d[1] == d[2] == tvm_dtype for d in op_dtypes(mod))
    text = mod.script()
    assert "R.mean(" in text  # reductions kept in float32 ...
    out = RelaxRunner(mod)(calib_batch[:4])  # ... and the signature too: float32 in and out
    with torch.no_grad():
        ref = model(calib_batch[:4]).numpy()
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() / np.abs(ref).max() < tol


def test_quant_spec_errors() -> None:
    with pytest.raises(SpecError, match="unknown quantization 'int4'"):
        QuantSpec.parse("int4")
    with pytest.raises(SpecError, match="calibration method"):
        QuantSpec.parse("int8", calib_method="kl")
    assert QuantSpec.parse("bfloat16").dtype == "bf16"


def test_qat_finetune_then_same_export(trained_tiny_resnet, digits_loaders, calib_batch) -> None:
    from dlas_host import train
    from dlas_host.optimize.qat import fake_quantized, qat_finetune

    model = copy.deepcopy(trained_tiny_resnet).eval()
    cal = calibrate(model, [calib_batch], samples=16, method="minmax")
    folded, hist = qat_finetune(model, cal, digits_loaders[0],
                                train.TrainConfig(epochs=1, lr=0.005, max_steps_per_epoch=3, progress=False))
    assert len(hist) == 1
    assert not any("parametrizations" in n for n, _ in folded.named_parameters())  # fake quant removed
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    cal2 = calibrate(folded, [calib_batch], samples=16, method="minmax")
    mod = quantize_relax(to_relax(folded, calib_batch), QuantSpec("int8"), cal2)
    out = RelaxRunner(mod)(calib_batch)
    with torch.no_grad(), fake_quantized(folded, cal2):
        fq = folded(calib_batch).numpy()  # the torch fake-quant model predicts the int8 graph
    assert np.abs(out - fq).max() / np.abs(fq).max() < 0.05
