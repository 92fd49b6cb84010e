"""Model store round trip, the optimize pipeline's accuracy dict, and the CLI's one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_resnet
from dlas_host.optimize import modelstore
from dlas_host.optimize.calibrate import calibrate
from dlas_host.optimize.quantize import op_dtypes
from dlas_host.optimize.spec import QuantSpec


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path / "state"))


def test_store_roundtrip_and_relax_module() -> None:
    model = tiny_resnet().eval()
    x = torch.randn(4, 3, 32, 32)
    cal = calibrate(model, [x], samples=4)
    meta = {"base_model": "tiny_resnet", "dataset": "digits", "prune": None,
            "quantize": QuantSpec("int8").as_dict(), "calibration": cal.as_dict(), "accuracy": {"top1": 0.5}}
    a = modelstore.save(model, meta)
    b = modelstore.save(model, meta)
    assert a.id == b.id and (a.path / "model.pt").is_file()
    entry = modelstore.load(a.id[:6])
    assert entry.meta["accuracy"]["top1"] == 0.5
    torch.testing.assert_close(entry.load_model()(x), model(x))
    assert [m["id"] for m in modelstore.list()] == [a.id]
    mod = modelstore.relax_module(a.id)
    assert op_dtypes(mod)[0] == ("relax.nn.conv2d", "int8", "int8")
    with pytest.raises(modelstore.ModelStoreError, match="no stored model"):
        modelstore.load("ffff")


def test_pipeline_channel_prune_reports_accuracy() -> None:
    from dlas_host.optimize.pipeline import OptimizeRequest, run
    from dlas_host.optimize.spec import PruneSpec

    res = run(OptimizeRequest("resnet18", "digits", PruneSpec.parse("channel:layer:l1:0.5"), finetune_epochs=1,
                              max_steps_per_epoch=1, eval_samples=32, batch_size=16, progress=False))
    assert set(res["accuracy"]) >= {"top1", "top5", "samples", "dataset"} and res["accuracy"]["samples"] == 32
    assert res["prune"]["param_reduction"] > 0.1
    stored = modelstore.load(res["id"])
    assert stored.meta["prune"]["kind"] == "channel" and stored.meta["accuracy"] == res["accuracy"]


def test_cli_errors_are_one_line() -> None:
    from dlas_host.cli_optimize import app

    runner = CliRunner()
    for args, text in [(["--model", "resnet18", "--prune", "unstructured:global:l1"], "kind:scope:score:amount"),
                       (["--model", "resnet18", "--quantize", "int4"], "unknown quantization"),
                       (["--model", "resnet9"], "unknown model"),
                       (["--model", "resnet18", "--dataset", "cifar10", "--data-dir", "/nonexistent"],
                        "does not exist")]:
        out = runner.invoke(app, args)
        assert out.exit_code == 2, out.output
        assert text in out.output and "Traceback" not in out.output


def test_bsr_block_option() -> None:
    """--bsr-block reaches the lowering policy; a malformed block is a one-line error."""
    from dlas_host.cli import app, build_spec

    spec = build_spec("resnet18", "cifar10", 1, "spatial_pack", "NCHW", "bsr", 0.9, None, "untuned", None, None,
                      bsr_block="8x1")
    assert spec.policy.bsr_block == (8, 1)
    out = CliRunner().invoke(app, ["compile", "--sparse-format", "bsr", "--bsr-block", "8by1",
                                   "--devices", str(Path(__file__).parents[1] / "devices.yaml")])
    assert out.exit_code != 0
    assert "bad BSR block" in out.output and "Traceback" not in out.output
