"""Each observation rule on its own: what it states, which pairs it used, and what it leaves unsaid."""

from __future__ import annotations

import json
import re

import pytest

from dlas_host.report import findings as fk
from dlas_host.report.rows import measure, prepare, stored_sparsity
from dlas_host.report.rules import RULES, observe
from dlas_host.report.rules.accuracy import accuracy_cost, drops
from dlas_host.report.rules.algorithm import algorithms
from dlas_host.report.rules.compression import compression_by_device
from dlas_host.report.rules.correlation import correlations
from dlas_host.report.rules.quality import failures, unstable_timings
from dlas_host.report.rules.quantization import quantization_native
from dlas_host.report.rules.sparse import sparse_crossover
from dlas_host.report.rules.systems import best_system
from dlas_host.report.rules.transfer import transfer_share
from dlas_host.report.rules.tuning import tuning_changes_best
from reportrows import ARM_FLAGS, device_env, manifest, row, tvm


def kinds(found):
    return [f.rule for f in found]


def pair_ids(finding):
    return {(p.base, p.cand) for p in finding.pairs}


# ------------------------------------------------------------------------------------------ the planted truth
@pytest.mark.parametrize("noise", [0.01, 0.02])
def test_planted_truth_two_equal_one_ten_percent_faster_states_exactly_that(noise):
    """direct and gemm equal within noise, spatial_pack 10 % faster: over 30 seeds every rule together states
    exactly one finding with exactly these three verdicts, and nothing else."""
    for seed in range(30):
        rows = [tvm(10.0, noise=noise, seed=3 * seed, algorithm="direct"),
                tvm(10.0, noise=noise, seed=3 * seed + 1, algorithm="gemm"),
                tvm(10.0 / 1.1, noise=noise, seed=3 * seed + 2, algorithm="spatial_pack")]
        found = observe(rows)
        assert kinds(found) == [fk.ALGORITHM], [f.text for f in found]
        verdicts = {(p.cand_label, p.base_label): p.comparison.verdict for p in found[0].pairs}
        assert verdicts.pop(("spatial_pack", "direct"), None) == "faster"
        assert verdicts.pop(("spatial_pack", "gemm"), None) == "faster"
        assert list(verdicts.values()) == ["same"]  # direct vs gemm, either way round
        text = found[0].text
        assert text.startswith("On local, spatial_pack is the fastest algorithm for resnet18/cifar10, float32, NCHW, "
                               "untuned: ")
        assert text.count("faster than") == 2 and text.count("no significant difference") == 1


def test_planted_truth_for_quantized_types_states_exactly_that():
    """float16 equal to float32 within noise, int8 10 % faster, on a CPU with VNNI and no float16 arithmetic:
    two findings, exactly these verdicts, over 30 seeds."""
    for seed in range(30):
        rows = [tvm(10.0, seed=3 * seed), tvm(10.0, seed=3 * seed + 1, quantization="float16"),
                tvm(10.0 / 1.1, seed=3 * seed + 2, quantization="int8")]
        found = observe(rows)
        assert kinds(found) == [fk.QUANTIZATION, fk.QUANTIZATION], [f.text for f in found]
        fp16, int8 = sorted(found, key=lambda f: "int8" in f.text)
        assert [p.comparison.verdict for p in fp16.pairs] == ["same"] and not fp16.significant
        assert fp16.text.startswith("On local, float16 runs no faster than float32 in any of 1 comparable build(s) "
                                    "(1 no significant difference) (no native float16 arithmetic")
        assert [p.comparison.verdict for p in int8.pairs] == ["faster"] and int8.significant
        assert int8.text.startswith("On local, int8 runs faster than float32 in all 1 comparable build(s) (native "
                                    "int8 arithmetic: CPU flags avx512_vnni)")


# ------------------------------------------------------------------------------------------ best system
def test_best_system_compares_each_systems_fastest_build():
    rows = [tvm(8.0, algorithm="direct"), tvm(5.0, algorithm="spatial_pack"), row(20.0, system="torch"),
            row(5.1, system="onnxruntime")]
    [f] = best_system(prepare(rows))
    assert f.rule == fk.BEST_SYSTEM and "no system is significantly fastest" in f.text
    assert pair_ids(f) == {(rows[2]["id"], rows[1]["id"]), (rows[3]["id"], rows[1]["id"])}
    assert re.search(r"tvm \(spatial_pack, NCHW, untuned\) is [34]\.\d\dx faster than torch \(95 % CI", f.text)
    assert "vs onnxruntime: no significant difference" in f.text
    clear = best_system(prepare(rows[:3]))
    assert clear[0].text.startswith("On local, resnet18/cifar10, float32 runs fastest with tvm (spatial_pack, NCHW, "
                                    "untuned) at 5")


def test_best_system_never_pairs_other_devices_models_or_compressions():
    rows = [tvm(5.0), row(20.0, system="torch", device="pi"), row(20.0, system="torch", model="vgg16"),
            row(20.0, system="torch", quantization="int8"), row(20.0, system="torch", sweep_id="other")]
    assert best_system(prepare(rows)) == []


# ------------------------------------------------------------------------------------------ algorithms and tuning
def test_algorithms_only_pair_rows_that_differ_in_the_algorithm_alone():
    rows = [tvm(10.0, algorithm="direct"), tvm(5.0, algorithm="gemm", layout="NHWC"),
            tvm(5.0, algorithm="spatial_pack", tuning="tuned"), tvm(5.0, algorithm="spatial_pack", device="pi")]
    assert algorithms(prepare(rows)) == []


def test_tuning_changes_the_best_algorithm():
    rows = [tvm(8.0, algorithm="direct"), tvm(9.0, algorithm="spatial_pack"),
            tvm(6.6, algorithm="direct", tuning="tuned"), tvm(5.0, algorithm="spatial_pack", tuning="tuned")]
    [f] = tuning_changes_best(prepare(rows))
    assert f.significant and "tuning changes the best algorithm for resnet18/cifar10, float32, NCHW from direct to " \
                              "spatial_pack" in f.text
    assert pair_ids(f) == {(rows[1]["id"], rows[0]["id"]), (rows[2]["id"], rows[3]["id"])}


def test_tuning_that_keeps_the_order_or_cannot_tell():
    keeps = [tvm(8.0, algorithm="direct"), tvm(9.0, algorithm="spatial_pack"),
             tvm(4.0, algorithm="direct", tuning="tuned"), tvm(5.0, algorithm="spatial_pack", tuning="tuned")]
    assert "tuning keeps direct as the best algorithm" in tuning_changes_best(prepare(keeps))[0].text
    noise = [tvm(8.0, algorithm="direct"), tvm(8.0, algorithm="spatial_pack"),
             tvm(5.0, algorithm="direct", tuning="tuned"), tvm(5.0, algorithm="spatial_pack", tuning="tuned")]
    [f] = tuning_changes_best(prepare(noise))
    assert not f.significant and "no algorithm is significantly best" in f.text or "does not significantly" in f.text


# ------------------------------------------------------------------------------------------ quantization
def test_quantized_types_read_against_native_support():
    rows = [tvm(10.0), tvm(5.5, quantization="int8"), tvm(18.0, quantization="float16"),
            tvm(10.0, device="pi", device_env=device_env(ARM_FLAGS, "aarch64")),
            tvm(6.0, device="pi", quantization="float16", device_env=device_env(ARM_FLAGS, "aarch64"))]
    found = {(f.device, f.text.split()[2].rstrip(",")): f for f in quantization_native(prepare(rows))}
    int8 = found[("local", "int8")]
    assert "int8 runs faster than float32 in all 1 comparable build(s) (native int8 arithmetic: CPU flags " \
           "avx512_vnni)" in int8.text
    fp16 = found[("local", "float16")]
    assert "float16 runs no faster than float32 in any of 1 comparable build(s) (1 slower) (no native float16 " \
           "arithmetic" in fp16.text
    assert "runs faster" in found[("pi", "float16")].text and "(native float16 arithmetic: CPU flags fphp, asimdhp)" \
        in found[("pi", "float16")].text


def test_native_support_unknown_without_cpu_flags_and_from_gpu_capability():
    rows = [tvm(10.0, device_env={}), tvm(10.0, quantization="float16", device_env={})]
    [f] = quantization_native(prepare(rows))
    assert "native float16 support unknown: CPU features not recorded" in f.text
    gpu = {"gpus": [{"name": "T4", "compute_capability": "7.5"}]}
    cuda = json.dumps({"kind": "cuda"})
    rows = [tvm(10.0, target=cuda, device_env=gpu), tvm(10.0, quantization="bfloat16", target=cuda, device_env=gpu)]
    [f] = quantization_native(prepare(rows))
    assert "no native bfloat16 arithmetic: compute capability 7.5 < 8" in f.text


# ------------------------------------------------------------------------------------------ sparse
def test_sparse_build_is_compared_with_its_own_dense_model_at_the_stored_sparsity():
    """The reported bug: a pruned model read as 0 % sparse and compared with another model's dense row, so
    'CSR never beats dense at 0 %' where CSR (6 ms) beat its own dense build (10 ms)."""
    rows = [tvm(5.0, algorithm="direct"),  # the unpruned model: faster than both, never a partner
            tvm(10.0, algorithm="direct", pruning="model:p80", density=0.2),
            tvm(6.0, algorithm="sparse", asked_algorithm="direct", sparse_format="csr", pruning="model:p80",
                density=0.2)]
    assert all(r["sparsity"] == 0.0 for r in rows)  # the row label: what the old rule read
    [f] = sparse_crossover(prepare(rows))
    assert pair_ids(f) == {(rows[1]["id"], rows[2]["id"])}
    assert "CSR beats dense for resnet18/cifar10, float32, direct asked, NCHW, untuned at every stored sparsity " \
           "measured (80 %)" in f.text
    assert re.search(r"CSR at 80 % is 1\.6\dx faster than dense at 80 % \(95 % CI", f.text), f.text


def test_sparse_crossover_per_device():
    rows = []
    for dev, times in (("local", {0.5: (8.0, 12.0), 0.8: (8.0, 5.0), 0.9: (8.0, 3.0)}),
                       ("pi", {0.5: (8.0, 6.0), 0.8: (8.0, 4.0), 0.9: (8.0, 2.0)})):
        for sp, (dense_ms, csr_ms) in times.items():
            pr = f"model:p{int(100 * sp)}"
            rows.append(tvm(dense_ms, device=dev, pruning=pr, density=1 - sp))
            rows.append(tvm(csr_ms, device=dev, pruning=pr, density=1 - sp, sparse_format="csr"))
    found = sparse_crossover(prepare(rows))
    texts = [f.text for f in found]
    assert any(t.startswith("On local, CSR pays off for") and "only from 80 % stored sparsity" in t and
               re.search(r"CSR at 50 % is 1\.[45]\dx slower than dense at 50 %", t) for t in texts), texts
    assert any(t.startswith("On pi, CSR beats dense for") for t in texts)
    assert any("CSR crossover for" in t and "depends on the device: local: from 80 %; pi: from 50 %" in t
               for t in texts)


def test_sparse_never_and_the_issue_sweep_crossing_csr_with_three_algorithms_and_two_tunings():
    """8 rows as `dlas-paper` produces them (the crash: TypeError comparing dicts): dense and CSR x 3
    algorithms x 2 tunings of one pruned model share one sparsity."""
    rows = []
    for tuning in ("untuned", "tuned"):
        for algo in ("direct", "gemm", "spatial_pack"):
            rows.append(tvm(10.0, algorithm=algo, tuning=tuning, pruning="model:p80", density=0.2))
        rows.append(tvm(12.0, algorithm="sparse", asked_algorithm="direct", sparse_format="csr", tuning=tuning,
                        pruning="model:p80", density=0.2))
    found = sparse_crossover(prepare(rows))
    assert len(found) == 2 and all("CSR never beats dense" in f.text for f in found)
    assert all(len(f.pairs) == 1 for f in found)
    observe(rows)  # and every other rule takes them too


def test_stored_sparsity_from_the_manifest():
    assert stored_sparsity(manifest(0.2)) == pytest.approx(0.8)
    mixed = manifest(0.1, layers=1) + [dict(manifest(1.0, layers=1)[0], shape="1x3x32x32 * 64x3x3x3")]
    assert stored_sparsity(mixed) == pytest.approx(1 - (0.1 * 36864 + 1728) / (36864 + 1728), abs=1e-4)
    assert stored_sparsity([]) is None and stored_sparsity("garbage") is None
    assert measure(tvm(5.0, sparsity=0.5)).sparsity == 0.5  # no manifest: the row's label


# ------------------------------------------------------------------------------------------ hardware dependence
def test_compression_speedup_depends_on_the_device():
    rows = [tvm(10.0), tvm(5.0, quantization="int8"),
            tvm(10.0, device="pi"), tvm(12.0, device="pi", quantization="int8"),
            tvm(10.0, device="x86"), tvm(5.1, device="x86", quantization="int8")]
    found = compression_by_device(prepare(rows))
    [f] = found
    assert f.significant and re.match(r"The speedup of int8 for resnet18/cifar10, direct asked, NCHW, untuned depends "
                                      r"on the device: local (1\.9\d|2\.0\d)x, 95 % CI .*; pi 0\.8\dx", f.text)
    same = compression_by_device(prepare([rows[0], rows[1], rows[4], rows[5]]))
    assert "no significant difference between devices" in same[0].text and not same[0].significant


# ------------------------------------------------------------------------------------------ correlation
def test_size_latency_and_accuracy_correlations():
    sizes = [10, 20, 30, 40, 50, 60]
    lat = [6.0, 1.0, 5.0, 2.0, 4.0, 3.0]
    acc = [0.70, 0.72, 0.74, 0.76, 0.78, 0.80]
    rows = [tvm(ms, model=m, artifact_bytes=s * 2**20, top1=a)
            for m, s, ms, a in zip(("a", "b", "c", "d", "e", "f"), sizes, lat, acc)]
    [f] = correlations(prepare(rows))
    assert f.text.startswith("On local (cifar10), compiled size and latency are not significantly correlated "
                             "(Spearman rho = -0.26, p = ")
    assert "; top-1 accuracy and latency are not significantly correlated" in f.text
    assert "; compiled size and top-1 accuracy are correlated: they rise together (Spearman rho = +1.00, p = 0.003 " \
           "(exact), 6 builds)." in f.text
    assert f.significant and f.rows == sorted(r["id"] for r in rows)
    assert correlations(prepare(rows[:4])) == []  # four builds: too few to say anything


# ------------------------------------------------------------------------------------------ accuracy cost
def _scored(ms: float, hits: int, images: int = 359, fingerprint: str = "fp", **fields):
    extra = {**fields.pop("extra", {}), "eval": {"hits1": hits}}
    return tvm(ms, top1=hits / images, eval_images=images, eval_fingerprint=fingerprint, extra=extra, **fields)


BASE = {"id": "b1", "name": "resnet18-digits-e3", "source": "train"}
P90 = {"id": "p90", "base_id": "b1", "prune": "unstructured:global:l1:0.9", "finetune": {"finetune_epochs": 2}}


def test_accuracy_cost_measures_each_compression_against_the_base_it_was_derived_from():
    """The truth is planted: int8 keeps the base's hits (no change), 90 % pruning loses 60 of 359 images (a real
    drop), its CSR build scores like its dense build; a base scored on other images or another device is no
    base; a row whose base was never measured states nothing."""
    rows = [_scored(8.0, 350, pruning="model:b1", extra={"model": BASE}),
            _scored(2.5, 349, pruning="model:b1", quantization="int8", extra={"model": BASE}),
            _scored(7.0, 290, pruning="model:p90", sparsity=0.9, extra={"model": P90}),
            _scored(4.0, 290, pruning="model:p90", sparse_format="csr", density=0.1, extra={"model": P90}),
            _scored(8.0, 100, pruning="model:b1", fingerprint="other", quantization="float16", extra={"model": BASE}),
            _scored(8.0, 300, pruning="model:b1", device="pi", quantization="int8", extra={"model": BASE})]
    ids = [r["id"] for r in rows]
    found = drops(prepare(rows))
    assert [(d.base.id, d.cand.id) for d in found] == [(ids[0], ids[1]), (ids[0], ids[2]), (ids[0], ids[3])]
    i8, pruned, csr = found
    assert not i8.significant and i8.drop == pytest.approx(1 / 359) and i8.low < 0 < i8.high
    assert pruned.significant and pruned.drop == pytest.approx(60 / 359) and pruned.low > 0.1
    assert pruned.label == "pruning unstructured:global:l1:0.9 (90 % zeros stored), fine-tuned 2 epochs"
    assert csr.label.endswith(" + CSR") and csr.drop == pytest.approx(pruned.drop)
    [f] = accuracy_cost(prepare(rows))
    assert f.rule == fk.ACCURACY and f.significant and f.rows == ids[:4]
    assert f.text.startswith("On local (tvm), against resnet18-digits-e3 (resnet18/cifar10) at 97.5 % top-1 over "
                             "359 images: int8: no significant change (97.2 %; drop +0.3 points, 95 % CI ")
    assert "; pruning unstructured:global:l1:0.9 (90 % zeros stored), fine-tuned 2 epochs costs 16.7 points " \
           "(80.8 %; 95 % CI +" in f.text


def test_accuracy_cost_needs_the_same_images_and_a_measured_base():
    lone = [_scored(2.5, 349, pruning="model:b1", quantization="int8", extra={"model": BASE})]
    assert drops(prepare(lone)) == [] and accuracy_cost(prepare(lone)) == []
    unscored = [tvm(8.0, pruning="model:b1", extra={"model": BASE}),  # no accuracy: nothing to compare
                _scored(2.5, 349, pruning="model:b1", quantization="int8", extra={"model": BASE})]
    assert drops(prepare(unscored)) == []
    seeded = [_scored(8.0, 36, images=359), _scored(2.5, 40, images=359, quantization="int8")]  # no stored model
    [d] = drops(prepare(seeded))
    assert not d.significant and d.drop == pytest.approx(-4 / 359)
    assert "resnet18/cifar10 (seeded weights)" in accuracy_cost(prepare(seeded))[0].text


# ------------------------------------------------------------------------------------------ transfer, quality
def test_transfer_share_only_where_the_agent_timed_it():
    cuda = json.dumps({"kind": "cuda"})
    rows = [tvm(4.0, device="jetson", target=cuda, extra={"transfer_ms": 1.0, "compute_ms": 3.0}),
            tvm(6.0, device="jetson", target=cuda, algorithm="gemm",
                extra={"transfer_ms": [1.0, 1.2, 0.8], "compute_ms": 5.0}),
            tvm(4.0, device="local"), tvm(4.0, device="pi", extra={"transfer_ms": "n/a"})]
    [f] = transfer_share(prepare(rows))
    assert f.text == ("On jetson (accelerator), host-device transfer takes 21 % of end-to-end time (median over 2 "
                      "build(s); 17 % to 25 %).")
    assert transfer_share(prepare(rows[2:])) == []


def test_unstable_timings_are_marked_wherever_they_are_used():
    rows = [tvm(10.0, algorithm="direct"), tvm(5.0, algorithm="gemm", noise=0.3, seed=4)]
    assert any("unstable" in w for w in rows[1]["warnings"])
    [f] = algorithms(prepare(rows))
    assert f.unstable == [rows[1]["id"]]
    assert f.text.endswith(f" (caution: uses timing(s) flagged unstable: #{rows[1]['id']}).")  # in its own words
    [note] = unstable_timings(prepare(rows))
    assert note.rows == [rows[1]["id"]] and note.quality


def test_failures_summarise_rows_without_a_timing():
    rows = [row(None, status="error", error="jetson: connect: no answer"),
            row(None, status="skipped", error="torch runs on the local device only"), row(None),
            dict(row(None, status="error", error="transient"), superseded_by=99)]  # retried and replaced
    [f] = failures(prepare(rows))
    assert f.text.startswith("3 job(s) did not produce a timing") and "ok but no timing" in f.text
    assert "transient" not in f.text and rows[3]["id"] not in f.rows


def test_timings_inflated_by_competing_processes_count_as_flagged():
    flagged = tvm(5.0, algorithm="gemm", warnings=["another process used 1.51 cores during timing (python pid 5 "
                                                   "0.47): timings may be inflated"])
    [f] = algorithms(prepare([tvm(10.0), flagged]))
    assert f.unstable == [flagged["id"]] and "flagged unstable" in f.text


def test_every_rule_states_nothing_about_nothing():
    for rule in RULES:
        assert rule(prepare([])) == []
        assert rule(prepare([tvm(5.0)])) == []


# ------------------------------------------------------------------------------------------ summaries
def test_many_alike_findings_become_one_summary_that_keeps_its_groups():
    from dlas_host.report.summary import summarise

    rows = []
    for model in ("a", "b", "c", "d", "e", "f"):
        rows += [tvm(10.0, model=model, algorithm="direct"), tvm(5.0, model=model, algorithm="gemm")]
    found = algorithms(prepare(rows))
    assert len(found) == 6 and summarise(found[:4]) == found[:4]
    [s] = summarise(found)
    assert s.text == "On local, over 6 comparable groups of algorithms: gemm is the fastest in 6."
    assert s.details == [f.text for f in found] and len(s.pairs) == 6 and s.rows == sorted(r["id"] for r in rows)


# ------------------------------------------------------------------------------------------------ emulation
X86_CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu sse sse2 avx2\n"
ARM_CPUINFO = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32\nCPU implementer\t: 0x41\n"


def test_the_agent_knows_when_it_runs_emulated(monkeypatch):
    """qemu-user shows the host's /proc/cpuinfo (seen under this lab's arm64 chroot: an aarch64 python reads
    "GenuineIntel"); a board shows its own."""
    from dlas_agent.devinfo import emulation

    monkeypatch.delenv("DLAS_EMULATED", raising=False)
    assert "x86 host CPU" in emulation("aarch64", X86_CPUINFO)
    assert "Arm host CPU" in emulation("x86_64", ARM_CPUINFO)
    assert emulation("aarch64", ARM_CPUINFO) == emulation("x86_64", X86_CPUINFO) == emulation("aarch64", "") == ""
    monkeypatch.setenv("DLAS_EMULATED", "qemu-system-aarch64")  # what cannot be seen from inside
    assert emulation("aarch64", ARM_CPUINFO) == "qemu-system-aarch64"


def test_emulated_timings_are_marked_and_never_read_as_the_boards():
    why = "aarch64 process on an x86 host CPU (user-mode emulation, e.g. qemu-user)"
    warn = [f"emulated: {why}; this timing says nothing about the real device's speed"]
    arm = {"device": "sim-arm", "device_env": {**device_env([], "aarch64"), "emulation": why}, "warnings": warn}
    rows = [tvm(10.0, algorithm="direct", **arm), tvm(9.0, algorithm="spatial_pack", **arm), tvm(8.0)]
    found = observe(rows)
    [emu] = [f for f in found if f.rule == fk.EMULATED]
    assert emu.device == "sim-arm" and emu.rows == [rows[0]["id"], rows[1]["id"]] and why in emu.text
    assert fk.UNSTABLE not in kinds(found)  # emulation has its own note; the timings themselves were steady
    [algo] = [f for f in found if f.rule == fk.ALGORITHM]
    assert "flagged unstable" in algo.text and set(algo.flagged) == {rows[0]["id"], rows[1]["id"]}
