"""The report builds from fixture metrics, its numbers match the metrics files, and it renders in Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synth import build_synthetic_sweep, write_cell, write_metrics

from emsweep.analysis.report import build_report
from emsweep.analysis.results import collect_results
from emsweep.io import InputError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    expect = build_synthetic_sweep(root, methods=("lora", "full"), n=200)
    index = build_report(root, n_boot=200)
    return root, index, expect


def test_results_table_matches_metrics_files(report):
    root, index, _ = report
    out = index.parent
    df = pd.read_csv(out / "results.csv")
    files = sorted(root.rglob("metrics.json"))
    assert len(df) == len(files) == 10 * 4 * 2  # cells x checkpoints x suites
    assert set(df["metrics_path"]) == {str(p) for p in files}
    assert df.groupby(["cell", "checkpoint", "suite"]).size().max() == 1
    for _, row in df.iterrows():
        m = json.loads(Path(row["metrics_path"]).read_text())
        assert row["cell"] == m["cell"] and row["step"] == m["step"] and row["suite"] == m["suite"]
        for k in ("domain_accuracy", "misaligned_rate", "n"):
            if m[k] is None:
                assert pd.isna(row[k])
            else:
                assert row[k] == pytest.approx(m[k])
        cell = json.loads((Path(row["metrics_path"]).parents[3] / "cell.json").read_text())
        assert row["fraction_correct"] == cell["axes"]["fraction_correct"]
        assert row["method"] == cell["axes"]["method"]
    pq = pd.read_parquet(out / "results.parquet")
    assert len(pq) == len(df) and list(pq.columns) == list(df.columns)


def test_html_numbers_link_to_their_metrics_files(report):
    _, index, _ = report
    page = index.read_text()
    links = re.findall(r'<a href="([^"]+metrics\.json)"[^>]*>([0-9.]+)</a>', page)
    assert len(links) > 50
    for href, text in links:
        target = (index.parent / href).resolve()
        m = json.loads(target.read_text())
        value = m["domain_accuracy"] if m["suite_kind"] == "domain" else m["misaligned_rate"]
        assert float(text) == pytest.approx(value, abs=5e-4), href
    assert "Thresholds" in page and "Early stopping" in page and "LoRA vs full" in page
    for png in re.findall(r'<img src="([^"]+)"', page):
        assert (index.parent / png).stat().st_size > 5000
    # the early-stopping summary states the mean retained share computed from the files
    es = pd.read_csv(index.parent / "early_stopping.csv")
    assert f"{es['retained'].mean() * 100:.1f} % on average over 10 cells" in page
    assert "random weights" not in page  # not a demo: no toy banner


def test_toy_banner_for_tiny_models(tmp_path):
    axes = {
        "domain": "d",
        "fraction_correct": 1.0,
        "wrong_kind": "subtle",
        "method": "lora",
        "seed": 0,
        "model": "m",
    }
    c = write_cell(tmp_path, "c", axes, init_shape="tiny")
    write_metrics(c, "c", 0, domain=0.1, misaligned=0.0)
    write_metrics(c, "c", 4, domain=0.2, misaligned=0.0)
    page = build_report(tmp_path, n_boot=10).read_text()
    assert "random weights" in page and "not the papers' science" in page


def test_no_results_and_old_schema_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match=r"no metrics\.json found"):
        build_report(tmp_path)
    assert not (tmp_path / "report").exists()
    axes = {
        "domain": "d",
        "fraction_correct": 1.0,
        "wrong_kind": "subtle",
        "method": "lora",
        "seed": 0,
        "model": "m",
    }
    c = write_cell(tmp_path, "c", axes)
    (p,) = write_metrics(c, "c", 0, domain=0.5, misaligned=None)
    raw = json.loads(p.read_text())
    raw["schema_version"] = 0
    p.write_text(json.dumps(raw))
    with pytest.raises(InputError, match=r"metrics.json: metrics schema_version 0 .*older schema"):
        collect_results(tmp_path)
    p.write_text("{not json")
    with pytest.raises(InputError, match=r"metrics.json:1: malformed JSON"):
        collect_results(tmp_path)


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_report_renders(index: Path, tmp_path: Path) -> Path:
    """Open the report in headless Chromium: every <img> must load (naturalWidth > 0), and a screenshot of the
    page must not be blank. Returns the screenshot path."""
    assert CHROMIUM, "Debian's chromium is needed for this test (apt-get install chromium)"
    probe = index.parent / "_probe.html"
    page = index.read_text()
    script = (
        "<script>window.addEventListener('load',()=>{const imgs=[...document.images];"
        "document.body.setAttribute('data-imgs',JSON.stringify(imgs.map(i=>[i.getAttribute('src'),"
        "i.complete&&i.naturalWidth>0?i.naturalWidth:0])));});</script>"
    )
    probe.write_text(page.replace("</body>", script + "</body>"))
    try:
        res = _chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp_path / "profile1")
    finally:
        probe.unlink()
    m = re.search(r"data-imgs=\"([^\"]*)\"", res.stdout)
    assert m, f"chromium did not run the page script: {res.stderr[-2000:]}"
    imgs = json.loads(m.group(1).replace("&quot;", '"'))
    assert len(imgs) >= 3
    assert all(w > 100 for _, w in imgs), imgs
    shot = tmp_path / "shot.png"
    res = _chromium(
        [f"--screenshot={shot}", "--window-size=1280,2000", index.as_uri()], tmp_path / "profile2"
    )
    assert shot.exists(), res.stderr[-2000:]
    import matplotlib.image as mpimg

    pix = mpimg.imread(shot)
    assert pix.shape[0] >= 1000 and pix.shape[1] >= 1000
    assert pix[..., :3].std() > 0.05  # not a blank page: text and plots
    # every figure that draws two or more series must show at least two visibly distinct lines; the study's
    # figures draw one line per seed (per family) or per model (learning rate), so a one-seed, one-model study
    # (the demo) has a single series there (their content is checked in test_study_report.py)
    for src in re.findall(r'<img src="([^"]+\.png)"', page):
        if src.startswith("study_"):
            continue
        assert line_colours(index.parent / src) >= 2, f"{src}: fewer than two distinct line colours"
    return shot


def line_colours(png: Path, min_pixels: int = 150) -> int:
    """How many distinct line colours a rendered figure shows: saturated pixels (grey text, axes, grid and the
    grey base-model line excluded) binned by hue in 24 bins; a bin counts when it holds `min_pixels` pixels."""
    import matplotlib.colors as mcolors
    import matplotlib.image as mpimg
    import numpy as np

    rgb = mpimg.imread(png)[..., :3]
    hsv = mcolors.rgb_to_hsv(rgb.reshape(-1, 3))
    strong = hsv[(hsv[:, 1] > 0.45) & (hsv[:, 2] > 0.25)]
    counts = np.bincount((strong[:, 0] * 24).astype(int) % 24, minlength=24)
    return int((counts >= min_pixels).sum())


def test_series_styles_are_distinct_and_model_paths_shortened():
    from emsweep.analysis.plots import series_style, short_name

    styles = [series_style(i) for i in range(8)]
    for i in range(8):
        for j in range(i + 1, 8):
            a, b = styles[i], styles[j]
            assert (a["color"], a["marker"]) != (b["color"], b["marker"])
            assert a["marker"] != b["marker"] or a["linestyle"] != b["linestyle"]
    assert short_name("/tmp/pytest-1/demo/models/persona-base") == "persona-base"
    assert short_name("lora") == "lora" and short_name(0.5) == "0.5"


def test_line_colours_tells_one_line_from_two(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from emsweep.analysis.plots import series_style

    for n in (1, 2):
        fig, ax = plt.subplots(figsize=(5, 3))
        for i in range(n):
            ax.plot([0, 0.5, 1], [0.2, 0.5, 0.8], **series_style(i))  # identical data: lines on top of each other
        ax.plot([0, 1], [0.3, 0.3], color="grey", ls=":")
        fig.savefig(tmp_path / f"f{n}.png", dpi=90)
        plt.close(fig)
        assert line_colours(tmp_path / f"f{n}.png") == n


def test_report_renders_in_chromium(report, tmp_path):
    _, index, _ = report
    shot = check_report_renders(index, tmp_path)
    if os.environ.get("EMSWEEP_SAVE_SHOT"):
        shutil.copy(shot, os.environ["EMSWEEP_SAVE_SHOT"])
