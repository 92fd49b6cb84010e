"""Reports: the observation rules find known patterns in synthetic results, and the HTML renders."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from dlas_host.report import write_report
from dlas_host.store import ResultRow


def add(store, **kw) -> int:
    base = dict(dataset="cifar10", model="resnet18", system="tvm", device="pi", algorithm="direct", layout="NCHW",
                tuning="untuned", median_ms=10.0, samples_ms=[10.0, 10.1, 9.9, 10.0, 10.2], n=5, iqr_ms=0.1)
    base.update(kw)
    return store.add(ResultRow(**base))


@pytest.fixture()
def rows(store):
    add(store, system="torch", algorithm="n/a", layout="n/a", tuning="n/a", median_ms=20.0)
    # untuned: direct wins; tuned: spatial pack wins -> "best algorithm changes after tuning"
    add(store, algorithm="direct", median_ms=8.0)
    add(store, algorithm="spatial_pack", median_ms=9.0)
    add(store, algorithm="direct", tuning="tuned", median_ms=7.0)
    add(store, algorithm="spatial_pack", tuning="tuned", median_ms=4.0)
    # int8 faster for resnet18, slower for mobilenet_v2
    add(store, algorithm="direct", quantization="int8", median_ms=4.0)
    add(store, model="mobilenet_v2", algorithm="direct", median_ms=5.0)
    add(store, model="mobilenet_v2", algorithm="direct", quantization="int8", median_ms=7.5)
    # CSR beats dense only from 80 %
    for sparsity, dense_ms, csr_ms in ((0.5, 8.0, 12.0), (0.8, 8.0, 5.0), (0.9, 8.0, 3.0)):
        add(store, model="vgg16", sparsity=sparsity, median_ms=dense_ms)
        add(store, model="vgg16", sparsity=sparsity, sparse_format="csr", median_ms=csr_ms)
    # model size does not predict latency
    for model, size, ms in (("resnet50", 100e6, 3.0), ("densenet121", 30e6, 30.0), ("efficientnet_b0", 20e6, 12.0),
                            ("mobilenet_v3_large", 60e6, 1.0)):
        add(store, model=model, device="x86", artifact_bytes=int(size), median_ms=ms)
    # accuracy for the Pareto plot, an unstable row and a failure
    add(store, device="x86", model="resnet18", median_ms=5.0, top1=0.93, artifact_bytes=45_000_000)
    add(store, device="x86", model="resnet18", quantization="int8", median_ms=2.0, top1=0.92, artifact_bytes=12_000_000)
    add(store, device="x86", model="vgg16", median_ms=9.0, top1=0.90, iqr_ms=4.0,
        samples_ms=[5.0, 9.0, 14.0, 8.0, 12.0], warnings=["unstable: IQR is 44% of the median"])
    add(store, device="jetson", status="error", error="jetson: connect: no answer within 20 s", median_ms=None)
    return store.query(order="id ASC")


def test_observations_find_the_planted_patterns(rows, tmp_path):
    report = write_report(rows, tmp_path / "out")
    rules = {f.rule: f for f in report.findings}
    assert "direct/NCHW/dense" in rules["tuning-changes-best"].text and "spatial_pack" in rules["tuning-changes-best"].text
    assert "int8 speeds up resnet18" in rules["int8-mixed"].text and "slows down mobilenet_v2" in rules["int8-mixed"].text
    assert "only from 80 % sparsity" in rules["sparse-crossover"].text
    assert "not correlated" in rules["size-latency"].text
    assert rules["unstable"].rows and rules["failures"].rows
    assert "runs fastest with tvm (spatial_pack/NCHW/dense, tuned)" in rules["fastest-system"].text
    # every finding links to rows that exist
    ids = {r["id"] for r in rows}
    assert all(f.rows and set(f.rows) <= ids for f in report.findings)
    html = report.html_path.read_text()
    assert html.count("<img") == report.figures >= 5
    for fid in rules["tuning-changes-best"].rows:
        assert f"id='row-{fid}'" in html and f"href='#row-{fid}'" in html
    assert "http://" not in html and "https://" not in html  # self-contained
    md = report.markdown_path.read_text()
    assert "## Observations" in md and md.count("![") == report.figures


def test_report_renders_in_headless_chromium(rows, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("chromium is not installed (scripts/setup.sh --system installs Debian's package)")
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
    assert colours is not None and len(colours) > 50  # plots and tables drew something, not a blank page
