"""The embedded demo runs end to end on CPU and its report renders in headless Chromium."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_analysis_report import check_report_renders


@pytest.mark.slow
def test_demo_runs_and_report_renders(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "emsweep", "demo", "--out", str(out), "--fast"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    index = Path(res.stdout.strip().splitlines()[-1].removeprefix("report: "))
    assert index.exists() and index.name == "index.html"
    root = index.parent.parent
    record = json.loads((root / "sweep.json").read_text())
    cells = [c["id"] for c in record["cells"]]
    assert len(cells) == 3
    df = pd.read_csv(index.parent / "results.csv")
    # one row per cell x checkpoint x suite: every cell has the base model and 3 checkpoints on 2 suites
    assert sorted(df["cell"].unique()) == sorted(cells)
    assert df.groupby(["cell", "checkpoint", "suite"]).size().max() == 1
    assert len(df) == len(cells) * 4 * 2
    assert set(df["suite_kind"]) == {"domain", "alignment"}
    assert sorted(df["fraction_correct"].unique()) == [0.0, 0.5, 1.0]
    for p in df["metrics_path"]:
        assert Path(p).exists()
    page = index.read_text()
    assert "random weights" in page and "not the papers' science" in page
    check_report_renders(index, tmp_path)
