"""Accuracy next to latency: the artifact that was timed, evaluated on the device (issue #15 targets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlas_host.evaluate import EvalSet, eval_set, score


def test_chunks_fill_whole_batches_and_scoring_drops_the_padding():
    images = np.arange(7 * 3 * 2 * 2, dtype=np.float32).reshape(7, 3, 2, 2)
    evals = EvalSet("digits", images, np.arange(7), "fp")
    pieces = list(evals.chunks(batch=3, max_bytes=2 * images[0].nbytes))  # 2 images per chunk -> one batch of 3
    assert [start for start, _ in pieces] == [0, 3, 6]
    assert all(len(part) == 3 for _, part in pieces)
    assert np.array_equal(pieces[-1][1][1], images[6])  # padded with the last real image
    topk = np.array([[0, 1], [9, 1], [2, 0], [3, 3], [1, 4], [5, 0], [0, 6]])
    top1, top5, c1, c5 = score(topk, np.arange(7))
    assert (c1, c5) == (4, 7) and top1 == pytest.approx(4 / 7) and top5 == 1.0


def test_eval_set_is_fixed_and_fingerprinted():
    from dlas_host.evaluate import subset

    a, b, c = eval_set("digits", 50), eval_set("digits", 50), eval_set("digits", 51)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert np.array_equal(a.images, b.images) and a.images.dtype == np.float32 and len(c) == 51
    whole = eval_set("digits", 0)
    assert len(whole) == 359 and len(eval_set("digits", 10_000)) == 359  # 0 or more: the whole test split
    picked = subset(359, 50)
    assert np.array_equal(a.images, whole.images[picked]) and np.array_equal(a.labels, whole.labels[picked])
    # a split stored class by class (ImageNet class folders): a subset still spans the classes
    by_class = np.repeat(np.arange(100), 500)
    assert len(set(by_class[subset(len(by_class), 1000)])) > 95 and subset(10, 3) == subset(10, 3)


def _torch_hits(entry_id: str, evals: EvalSet) -> np.ndarray:
    from dlas_host.optimize import modelstore

    net = modelstore.load(entry_id).load_model().eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(evals.images)).numpy()
    return logits


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """resnet18 trained on the digits stand-in by the real `dlas-host train` path (3 epochs, minutes)."""
    from dlas_host.optimize.base_model import Recipe, train_base

    entry = train_base(Recipe(model="resnet18", dataset="digits", epochs=3, batch_size=64, lr=0.05),
                       name="acc-base", progress=False)
    return entry


def _bench(local_device, tmp_path, model_id: str, **policy):
    from dlas_host.bench import RunOptions, bench_tvm
    from dlas_host.compile import BuildSpec
    from dlas_host.lower.policy import LoweringPolicy
    from dlas_host.store import ResultStore

    store = ResultStore(tmp_path / "r.sqlite")
    spec = BuildSpec(model="resnet18", dataset="digits", optimized_model=model_id,
                     policy=LoweringPolicy(**policy) if policy else LoweringPolicy())
    row = bench_tvm(spec, local_device, store, RunOptions(number=1, repeat=5, warmup=1, eval_images=0))
    assert row.status == "ok", row.error
    return row, store


@pytest.mark.slow
def test_device_accuracy_matches_torch_and_compressions_stay_close(trained, local_device, tmp_path):
    from dlas_host.optimize.pipeline import OptimizeRequest, run
    from dlas_host.optimize.spec import PruneSpec, QuantSpec

    evals = eval_set("digits", 0)
    # float32: the device's top-1 count equals torch's on the same images, image by image (ties aside)
    f32, _ = _bench(local_device, tmp_path, trained.id)
    assert f32.eval_images == len(evals) == 359 and f32.eval_fingerprint == evals.fingerprint
    logits = _torch_hits(trained.id, evals)
    torch_hits = int((logits.argmax(1) == evals.labels).sum())
    print(f"float32: device top-1 {f32.top1:.4f}, torch {torch_hits / len(evals):.4f}, "
          f"eval {f32.extra['eval']}")
    assert round(f32.top1 * len(evals)) == torch_hits
    assert f32.extra["eval"]["vs_timed_latency"] > 0  # its speed is a benchmark (benchmarks/bench_accuracy.py)
    assert f32.extra["compute_ms"] > 0 and f32.extra["transfer_ms"] >= 0

    # int8 after calibration: within 1 point of float32, measured on the device with the int8 kernels
    q = run(OptimizeRequest("resnet18", "digits", quantize=QuantSpec.parse("int8", calib_samples=256),
                            base=trained.id, progress=False, eval_samples=64))
    i8, _ = _bench(local_device, tmp_path, q["id"])
    assert i8.quantization == "int8" and "int8" in i8.built
    print(f"int8: device top-1 {i8.top1:.4f} vs float32 {f32.top1:.4f}")
    assert abs(i8.top1 - f32.top1) <= 0.01 + 1e-9

    # 90 % pruned and fine-tuned, run as CSR: within 3 points of its base
    p = run(OptimizeRequest("resnet18", "digits", prune=PruneSpec.parse("unstructured:global:l1:0.9"),
                            base=trained.id, finetune_epochs=2, finetune_lr=0.01, progress=False))
    csr, _ = _bench(local_device, tmp_path, p["id"], sparse_format="csr")
    assert "csr" in csr.built and csr.sparsity > 0.85
    print(f"90 % pruned + fine-tuned (CSR): device top-1 {csr.top1:.4f} vs base {f32.top1:.4f}")
    assert csr.top1 >= f32.top1 - 0.03



def test_framework_baselines_carry_accuracy_on_the_same_images(local_device, tmp_path):
    """torch and onnxruntime rows score the same fingerprinted images as TVM rows, in their own process."""
    from dlas_host.bench import RunOptions, bench_engine
    from dlas_host.compile import BuildSpec, build_torch_model
    from dlas_host.store import ResultStore

    evals = eval_set("digits", 40)
    spec = BuildSpec(model="resnet18", dataset="digits", batch=3)  # seeded weights; 40 = 13 batches + 1 padded
    with torch.no_grad():
        logits = build_torch_model(spec).eval()(torch.from_numpy(evals.images)).numpy()
    want1 = int((logits.argmax(1) == evals.labels).sum())
    want5 = int((np.argsort(-logits, 1)[:, :5] == evals.labels[:, None]).any(1).sum())
    store = ResultStore(tmp_path / "r.sqlite")
    rows = {e: bench_engine(e, spec, local_device, store, RunOptions(number=1, repeat=3, warmup=1, eval_images=40))
            for e in ("torch", "onnxruntime")}
    for engine, row in rows.items():
        assert row.status == "ok", row.error
        assert row.eval_images == 40 and row.eval_fingerprint == evals.fingerprint
        got = row.extra["eval"]
        assert got["hits1"] == round(row.top1 * 40) and got["compute_s"] > 0
        assert abs(got["hits1"] - want1) <= (0 if engine == "torch" else 1)  # float32 ties may break otherwise
        assert abs(got["hits5"] - want5) <= (0 if engine == "torch" else 1)
        assert "transfer_ms" not in row.extra  # nothing timed the copies apart: no transfer share is claimed
    stored = {r["system"]: r for r in store.query({})}
    assert stored["torch"]["top1"] == rows["torch"].top1 and stored["onnxruntime"]["eval_images"] == 40


def test_imported_weights_with_their_own_crop_are_built_and_scored_at_that_size(local_device, tmp_path, monkeypatch):
    """Published weights evaluated at another crop than 224 (e.g. 240): `models import --crop` stores it, the
    artifact takes inputs of that side, and the device scores images made with the same recipe (here 64)."""
    from PIL import Image
    from typer.testing import CliRunner

    from dlas_host import zoo
    from dlas_host.bench import RunOptions, bench_tvm
    from dlas_host.cli import _register_subcommands, app
    from dlas_host.compile import BuildSpec, example_inputs, with_stored_model
    from dlas_host.data.synsets import STANDARD
    from dlas_host.store import ResultStore

    monkeypatch.setenv("DLAS_DATA_DIR", str(tmp_path / "data"))
    rng = np.random.default_rng(0)
    for c in range(3):
        for split in ("train", "val"):
            d = tmp_path / "imnet" / split / STANDARD[c]
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)).save(d / f"{i}.JPEG")
    monkeypatch.setenv("DLAS_IMAGENET_DIR", str(tmp_path / "imnet"))
    weights = tmp_path / "r18.pth"
    torch.save(zoo.create("resnet18", "imagenet", seed=5).state_dict(), weights)
    _register_subcommands()
    runner = CliRunner()
    bad = runner.invoke(app, ["models", "import", str(weights), "--model", "resnet18", "--dataset", "imagenet",
                              "--crop", "0"])
    assert bad.exit_code != 0 and "crop" in bad.output and "Traceback" not in bad.output
    result = runner.invoke(app, ["models", "import", str(weights), "--model", "resnet18", "--dataset", "imagenet",
                                 "--resize", "73", "--crop", "64", "--name", "r18-64"])
    assert result.exit_code == 0, result.output

    spec = with_stored_model(BuildSpec(model="resnet18", dataset="imagenet", optimized_model="r18-64"))
    assert spec.image_size == 64 and example_inputs(spec)[0].shape == (1, 3, 64, 64)
    row = bench_tvm(spec, local_device, ResultStore(tmp_path / "r.sqlite"),
                    RunOptions(number=1, repeat=3, warmup=1, eval_images=0))
    assert row.status == "ok", row.error
    evals = eval_set("imagenet", 0, preprocessing={"resize": 73, "crop": 64, "image_size": 64})
    assert evals.images.shape == (9, 3, 64, 64) and row.eval_fingerprint == evals.fingerprint
    net = zoo.create("resnet18", "imagenet", seed=5).eval()
    with torch.no_grad():
        hits = int((net(torch.from_numpy(evals.images)).argmax(1).numpy() == evals.labels).sum())
    assert row.extra["eval"]["hits1"] == hits and row.max_abs_err < 1e-3
