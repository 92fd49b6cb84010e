"""Reports: planted results go through the real SQLite store, the findings say what was planted, every
finding links to its rows and plot, the figures are readable, and the page renders in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dlas_host.report import findings as fk
from dlas_host.report import load_sweeps, write_report
from dlas_host.report.svg import bars
from dlas_host.store import ResultRow
from dlas_host.sweep.state import SweepState
from reportrows import ARM_FLAGS, device_env, quick_local_rows, row, tvm

SVG = "{http://www.w3.org/2000/svg}"


def stored(store, rows: list[dict]) -> list[dict]:
    """The rows as the store gives them back (ids, JSON columns and NULLs as SQLite keeps them)."""
    for r in rows:
        store.add(ResultRow(**{k: v for k, v in r.items() if k != "id"}))
    return store.query(order="id ASC")


@pytest.fixture()
def planted(store):
    sid = SweepState(store.path).create("planted", {"name": "planted", "grid": {"devices": ["local", "pi"]}},
                                        None, 20)
    pi = dict(device="pi", device_env=device_env(ARM_FLAGS, "aarch64"), sweep_id=sid)
    rows = [
        row(20.0, system="torch", sweep_id=sid),
        # untuned: direct wins; tuned: spatial pack wins
        tvm(8.0, algorithm="direct", sweep_id=sid), tvm(9.0, algorithm="spatial_pack", sweep_id=sid),
        tvm(7.0, algorithm="direct", tuning="tuned", sweep_id=sid),
        tvm(4.0, algorithm="spatial_pack", tuning="tuned", sweep_id=sid),
        # int8: faster on local (VNNI); float16 no faster on local (no native float16), faster on pi (native)
        tvm(4.0, algorithm="direct", quantization="int8", sweep_id=sid),
        tvm(12.0, algorithm="direct", quantization="float16", sweep_id=sid),
        tvm(8.0, algorithm="direct", **pi), tvm(5.0, algorithm="direct", quantization="float16", **pi),
        tvm(8.0, algorithm="direct", quantization="int8", **pi),
    ]
    # CSR against the same pruned models built dense: from 80 % on local
    for sp, dense_ms, csr_ms in ((0.5, 8.0, 12.0), (0.8, 8.0, 5.0), (0.9, 8.0, 3.0)):
        kw = dict(model="vgg16", pruning=f"model:p{int(100 * sp)}", density=1 - sp, sweep_id=sid)
        rows += [tvm(dense_ms, **kw), tvm(csr_ms, sparse_format="csr", **kw)]
    # five models whose size does not predict latency
    for model, size, ms in (("resnet50", 100e6, 3.0), ("densenet121", 30e6, 30.0), ("efficientnet_b0", 20e6, 12.0),
                            ("mobilenet_v3_large", 60e6, 1.0), ("mobilenet_v2", 15e6, 6.0)):
        rows.append(tvm(ms, model=model, device="x86", artifact_bytes=int(size), sweep_id=sid))
    rows += [tvm(9.0, model="vgg16", device="x86", noise=0.3, seed=7, sweep_id=sid),  # unstable
             row(None, device="jetson", status="error", error="jetson: connect: no answer within 20 s", sweep_id=sid)]
    return stored(store, rows), sid


def test_planted_findings_with_links_to_rows_and_plots(planted, store, tmp_path):
    rows, sid = planted
    report = write_report(rows, tmp_path / "out", sweeps=load_sweeps(store.path, rows))
    by = {}
    for f in report.findings:
        by.setdefault(f.rule, []).append(f.text)
    text = " | ".join(t for ts in by.values() for t in ts)
    assert "On local, resnet18/cifar10, float32 runs fastest with tvm (spatial_pack, NCHW, tuned)" in text
    assert "tuning changes the best algorithm for resnet18/cifar10, float32, NCHW from direct to spatial_pack" in text
    assert re.search(r"On local, int8 runs faster than float32 in all 1 comparable build\(s\) \(native int8 "
                     r"arithmetic: CPU flags avx512_vnni\)", text)
    assert re.search(r"On local, float16 runs no faster than float32 in any of 1 comparable build\(s\) \(1 slower\) "
                     r"\(no native float16 arithmetic", text)
    assert re.search(r"On pi, float16 runs faster than float32 .* \(native float16 arithmetic", text)
    assert re.search(r"The speedup of int8 for resnet18/cifar10, direct asked, NCHW, untuned depends on the device: "
                     r"local [12]\.\d\dx", text)
    assert "CSR pays off for vgg16/cifar10, float32, direct asked, NCHW, untuned only from 80 % stored sparsity" in text
    assert "On x86 (cifar10), compiled size and latency are not significantly correlated" in text
    assert by[fk.UNSTABLE] and by[fk.FAILURES] and "1x error: jetson: connect: no answer" in by[fk.FAILURES][0]

    html = report.html_path.read_text()
    ids = {r["id"] for r in rows}
    for n, f in enumerate(report.findings, 1):
        assert f.rows and set(f.rows) <= ids, f.text
        item = re.search(rf"<li class='finding' id='finding-{n}'.*?</li>", html, re.S).group(0)
        for rid in f.rows[:40]:
            assert f"href='#row-{rid}'" in item and f"id='row-{rid}'" in html
        if not f.quality:  # every DLAS finding links to a plot that is on the page
            targets = re.findall(r"href='#(fig-[^']+)'", item)
            assert targets and all(f"<figure id='{t}'>" in html for t in targets), f.text
    assert "http://" not in html and "https://" not in html  # self-contained: no external resource
    # the header: the sweep's spec, the devices and what they compute natively
    assert f"<td>{sid}</td>" in html and "spec as run" in html and "devices: [local, pi]" in html
    assert "float16 no, bfloat16 no, int8 yes" in html and "float16 yes, bfloat16 no, int8 yes" in html
    md = report.markdown_path.read_text()
    assert "## Findings" in md and md.count("![") == report.figures == len(list((tmp_path / "out").glob("*.svg")))


def test_quick_like_sweep_states_six_finding_kinds_on_local(store, tmp_path):
    """The quick-preset target on a realistic planted sweep (see reportrows.quick_local_rows): at least six
    distinct kinds of DLAS finding on `local`, each backed by rows and a plot."""
    rows = stored(store, quick_local_rows())
    report = write_report(rows, tmp_path / "out")
    local = {f.rule for f in report.findings if not f.quality and f.device == "local"}
    assert len(local) >= 6, sorted(local)
    assert local >= {fk.BEST_SYSTEM, fk.ALGORITHM, fk.TUNING, fk.QUANTIZATION, fk.SPARSE, fk.CORRELATION}


def _svgs(out: Path) -> dict[str, ET.Element]:
    return {p.stem: ET.parse(p).getroot() for p in out.glob("*.svg")}


def test_figures_are_readable_at_a_glance(planted, tmp_path):
    rows, _ = planted
    report = write_report(rows, tmp_path / "out")
    figures = _svgs(tmp_path / "out")
    assert len(figures) == report.figures >= 6
    for name, root in figures.items():
        texts = {t.get("class"): (t.text or "") for t in root.iter(f"{SVG}text") if t.get("class")}
        assert texts.get("title"), name
        for axis in ("xlabel", "ylabel"):  # an axis says what it measures, in which unit
            if axis in texts:
                assert re.search(r"\((ms|x|%|MiB|ratio)[ ,;)]", texts[axis]), (name, texts[axis])
    sparse = figures["fig-sparse-local"]
    labels = [t.text for t in sparse.iter(f"{SVG}text") if t.get("class") in ("xlabel", "ylabel")]
    assert labels == ["stored sparsity (% zero weights, from the build manifest)", "speedup over dense (x)"]
    size = figures["fig-size-x86-cifar10"]
    assert any("(log scale)" in (t.text or "") for t in size.iter(f"{SVG}text"))  # 1 to 30 ms spans > 20x


def test_wide_spans_get_a_log_scale_and_narrow_ones_do_not():
    wide = ET.fromstring(bars("t", {"a": {"x": 1.0, "y": 500.0}}, "median latency (ms)"))
    narrow = ET.fromstring(bars("t", {"a": {"x": 5.0, "y": 6.0}}, "median latency (ms)"))
    label = [t.text for t in wide.iter(f"{SVG}text") if t.get("class") == "ylabel"]
    assert label == ["median latency (ms) (log scale)"]
    assert [t.text for t in narrow.iter(f"{SVG}text") if t.get("class") == "ylabel"] == ["median latency (ms)"]


def test_write_report_keeps_its_positional_signature(tmp_path):
    report = write_report([tvm(5.0)], tmp_path / "out", "A title")
    assert report.rows == 1 and report.findings == [] and "<title>A title</title>" in report.html_path.read_text()


def test_report_renders_in_headless_chromium(planted, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("chromium is not installed (scripts/setup.sh --system installs Debian's package)")
    rows, _ = planted
    report = write_report(rows, tmp_path / "out")
    shot = tmp_path / "report.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1400,2000",
                           report.html_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1400, 2000)
        colours = img.convert("RGB").resize((140, 200)).getcolors(maxcolors=100000)
    assert colours is not None and len(colours) > 50  # findings, tables and figures drew something
