"""`dlas-host train` / `models ...`: base models trained or imported once, reused by id or name."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from dlas_host.cli import _register_subcommands, app

_register_subcommands()


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_train_stores_a_reusable_base_and_does_not_retrain_a_stored_recipe(tmp_path, monkeypatch):
    from dlas_host.optimize import modelstore
    from dlas_host.optimize.base_model import Recipe, checkpoint_path

    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path))
    args = ("train", "--model", "resnet18", "--dataset", "digits", "--epochs", "1", "--max-steps", "2",
            "--batch-size", "16", "--name", "tiny-base", "--json")
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    first = json.loads(result.output.strip().splitlines()[-1])
    assert first["name"] == "tiny-base" and first["base_model"] == "resnet18" and first["dataset"] == "digits"
    assert 0.0 <= first["accuracy"]["top1"] <= 1.0 and first["accuracy"]["samples"] == 359
    assert set(first["data_fingerprint"]) == {"train", "test"}
    entry = modelstore.load("tiny-base")  # by name
    assert entry.id == first["id"]
    assert entry.meta["recipe"]["epochs"] == 1 and entry.meta["preprocessing"]["image_size"] == 32
    net = entry.load_model()  # tensors only, no unpickling
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    recipe = Recipe(model="resnet18", dataset="digits", epochs=1, batch_size=16, max_steps_per_epoch=2)
    assert not checkpoint_path(recipe).exists()  # the stored entry is the result
    again = json.loads(_invoke(*args).output.strip().splitlines()[-1])
    assert again["id"] == first["id"]
    listed = json.loads(_invoke("models", "list", "--json").output)
    assert [m["id"] for m in listed] == [first["id"]]


def test_train_resumes_from_its_checkpoint_and_sets_a_torn_one_aside(tmp_path, monkeypatch):
    from dlas_host import train as trainmod
    from dlas_host.optimize.base_model import Recipe, checkpoint_path, train_base

    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path))
    recipe = Recipe(model="resnet18", dataset="digits", epochs=2, batch_size=16, max_steps_per_epoch=1)
    ckpt = checkpoint_path(recipe)
    ckpt.write_bytes(b"torn")
    seen: list[int] = []
    real_train = trainmod.train

    def spy(model, loader, cfg, test_loader=None):
        history = real_train(model, loader, cfg, test_loader)
        seen.append(len(history))
        return history

    monkeypatch.setattr(trainmod, "train", spy)
    entry = train_base(recipe, progress=False)
    assert seen == [2] and len(entry.meta["history"]) == 2
    assert ckpt.with_name(ckpt.name + ".unreadable").read_bytes() == b"torn"


def test_bad_model_inputs_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path))
    result = _invoke("models", "show", "no-such-model")
    assert result.exit_code == 1 and "no stored model 'no-such-model'" in result.output
    assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1
    bad = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    result = _invoke("models", "import", str(bad), "--model", "resnet18", "--dataset", "digits")
    assert result.exit_code == 1 and "does not fit" in result.output and "Traceback" not in result.output
    result = _invoke("train", "--model", "no-such-net", "--dataset", "digits", "--epochs", "1")
    assert result.exit_code == 1 and "unknown model" in result.output


def test_import_user_weights_keeps_their_preprocessing(tmp_path, monkeypatch):
    from dlas_host import zoo
    from dlas_host.optimize import modelstore

    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path))
    net = zoo.create("resnet18", "cifar10", seed=3)
    path = tmp_path / "weights.pth"
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, path)  # a DataParallel checkpoint
    result = _invoke("models", "import", str(path), "--model", "resnet18", "--dataset", "digits", "--json")
    assert result.exit_code == 0, result.output
    entry = modelstore.load(json.loads(result.output)["id"])
    assert entry.meta["source"] == "import" and entry.meta["name"] == "weights"
    got = entry.load_model().state_dict()
    assert all(torch.equal(got[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("base", ["tiny"])
def test_optimize_refuses_a_base_of_another_model(tmp_path, monkeypatch, base):
    from dlas_host.optimize.base_model import Recipe, train_base

    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path))
    train_base(Recipe(model="resnet18", dataset="digits", epochs=1, batch_size=16, max_steps_per_epoch=1),
               name=base, progress=False)
    result = _invoke("optimize", "--model", "mobilenet_v2", "--dataset", "digits", "--base", base)
    assert result.exit_code != 0 and "not mobilenet_v2/digits" in result.output


def test_a_sweep_waits_for_a_missing_named_base_and_resumes_once_it_is_imported(registry, tmp_path, monkeypatch):
    """A base named in `bases:` but not stored: its jobs are skipped as retryable with the command that fixes
    it; once imported under that name, `sweep resume` runs them (nothing is lost, nothing is re-run twice)."""
    from rich.console import Console

    from dlas_host import zoo
    from dlas_host.store import ResultStore
    from dlas_host.sweep.runner import run_sweep, start_sweep
    from dlas_host.sweep.spec import parse_spec

    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path))
    spec = parse_spec("name: b\nbases: {resnet18/digits: my-digits-net}\n"
                      "grid: {devices: [local], datasets: [digits], models: [resnet18], systems: [torch]}\n"
                      "run: {number: 1, repeat: 3, warmup: 0, eval_images: 20}\n")
    store = ResultStore(tmp_path / "r.sqlite")
    sweep_id = start_sweep(spec, registry, store)
    counts = run_sweep(sweep_id, registry, store, console=Console(stderr=True), show_progress=False)
    [row] = store.query({"sweep_id": sweep_id})
    assert counts == {"retryable": 1} and row["status"] == "skipped" and row["extra"]["retryable"] is True
    assert "no base 'my-digits-net' for resnet18/digits" in row["error"] and "--name my-digits-net" in row["error"]

    path = tmp_path / "w.pth"
    torch.save(zoo.create("resnet18", "cifar10", seed=1).state_dict(), path)
    result = _invoke("models", "import", str(path), "--model", "resnet18", "--dataset", "digits",
                     "--name", "my-digits-net")
    assert result.exit_code == 0, result.output
    counts = run_sweep(sweep_id, registry, store, console=Console(stderr=True), show_progress=False)
    [row] = store.query({"sweep_id": sweep_id}, current=True)
    assert counts.get("ok") == 1 and row["status"] == "ok" and row["eval_images"] == 20
    assert row["extra"]["model"]["name"] == "my-digits-net"


def test_a_stored_model_benched_for_another_dataset_is_one_error_row(local_device, tmp_path, monkeypatch):
    from dlas_host import zoo
    from dlas_host.bench import bench_engine, bench_tvm
    from dlas_host.compile import BuildSpec
    from dlas_host.store import ResultStore

    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path))
    path = tmp_path / "d.pth"
    torch.save(zoo.create("resnet18", "cifar10", seed=1).state_dict(), path)
    assert _invoke("models", "import", str(path), "--model", "resnet18", "--dataset", "digits").exit_code == 0
    store = ResultStore(tmp_path / "r.sqlite")
    spec = BuildSpec(model="resnet18", dataset="cifar10", optimized_model="d")  # stored as resnet18/digits
    rows = [bench_tvm(spec, local_device, store), bench_engine("torch", spec, local_device, store)]
    for row in rows:
        assert row.status == "error" and "\n" not in row.error
        assert row.error == ("stored model d is resnet18/digits, not resnet18/cifar10: give --model resnet18 "
                             "--dataset digits"), row.error
    unknown = BuildSpec(model="resnet18", dataset="digits", optimized_model="nope")
    for row in (bench_tvm(unknown, local_device, store), bench_engine("onnxruntime", unknown, local_device, store)):
        assert row.status == "error" and row.error.startswith("no stored model 'nope'"), row.error
    assert [r["status"] for r in store.query({})] == ["error"] * 4
