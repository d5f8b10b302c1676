"""Threshold and early-stopping selection on synthetic metrics whose right answers are known by construction."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synth import FINAL_DOMAIN, build_synthetic_sweep, write_cell, write_metrics

from emsweep.analysis import science
from emsweep.analysis.results import cell_view, collect_results


def _grid_threshold(vals: dict[float, float], tolerance: float, higher: bool) -> float:
    fracs = sorted(vals)
    ref = vals[1.0] if 1.0 in vals else vals[fracs[-1]]
    grid, _ = science.crossing_points(
        np.array([[vals[f] for f in fracs]]), np.array([ref]), np.array(fracs), tolerance, higher
    )
    return float(grid[0])


def test_grid_threshold_requires_every_higher_fraction():
    # 0.25 is within tolerance but 0.5 is not: the recovery point is 0.75, not the lucky dip at 0.25
    vals = {0.1: 0.5, 0.25: 0.88, 0.5: 0.70, 0.75: 0.87, 1.0: 0.90}
    assert _grid_threshold(vals, 0.05, higher=True) == 0.75
    # lower is better (misalignment): being better than the reference never fails a fraction
    mis = {0.1: 0.40, 0.5: 0.0, 1.0: 0.05}
    assert _grid_threshold(mis, 0.05, higher=False) == 0.5


def test_thresholds_and_intervals_on_synthetic_sweep(tmp_path):
    build_synthetic_sweep(tmp_path, methods=("lora",), n=400)
    cv = cell_view(collect_results(tmp_path))
    es = science.early_stopping(cv, 0.05)
    final = science.pick_rows(cv, es, "final")
    base = cv[cv["step"] == 0]
    dom = science.thresholds(final, "domain_accuracy", 0.05, base_rows=base, n_boot=300)
    mis = science.thresholds(final, "misaligned_rate", 0.05, base_rows=base, n_boot=300)
    assert list(dom["reference"]) == list(mis["reference"]) == ["finetune", "base"]
    d, m = dom.iloc[0], mis.iloc[0]
    assert d["threshold"] == 0.5 and d["reference_fraction"] == 1.0
    assert d["reference_value"] == pytest.approx(FINAL_DOMAIN[1.0])
    assert m["threshold"] == 0.75
    # crossing: domain 0.25 (0.60) fails, 0.5 (0.86) passes the line 0.85 -> 0.25 + 0.25 * 0.25 / 0.26
    assert d["crossing"] == pytest.approx(0.25 + 0.25 * (0.85 - 0.60) / (0.86 - 0.60))
    for r in (d, m):
        assert r["threshold_lo"] <= r["threshold"] <= r["threshold_hi"]
        assert r["crossing_lo"] <= r["crossing"] <= r["crossing_hi"]
        # no per-question data in these files: the interval says it fell back on the files' own intervals
        assert "normal from the metrics file" in r["interval_method"]
    # against the base model (step 0: domain 0.10, misaligned 0.02): every fraction beats the base's domain
    # accuracy, and the misaligned threshold is the same as against the fine-tune (0.02 both)
    bd, bm = dom.iloc[1], mis.iloc[1]
    assert bd["threshold"] == 0.1 and bd["reference_value"] == pytest.approx(0.10)
    assert bm["threshold"] == 0.75 and bm["reference_value"] == pytest.approx(0.02)
    # a tighter tolerance moves the domain threshold up (0.86 and 0.88 are no longer within 0.01 of 0.90)
    tight = science.thresholds(final, "domain_accuracy", 0.01, n_boot=0)
    assert tight.iloc[0]["threshold"] == 1.0


def test_crossing_points_vectorised():
    vals = np.array([[0.40, 0.20, 0.04, 0.02], [0.40, 0.06, 0.12, 0.02], [0.40, 0.30, 0.20, 0.10]])
    fr = np.array([0.25, 0.5, 0.75, 1.0])
    grid, cross = science.crossing_points(vals, np.array([0.02, 0.02, 0.02]), fr, 0.05, False)
    assert grid[0] == 0.75 and cross[0] == pytest.approx(0.5 + 0.25 * (0.20 - 0.07) / (0.20 - 0.04))
    assert grid[1] == 1.0  # 0.5 passes but 0.75 does not: the recovery point is 1.0, not the dip
    assert np.isnan(grid[2]) and np.isnan(cross[2])  # even the all-correct run fails the line (0.07)


def test_early_stopping_picks_known_checkpoints(tmp_path):
    expect = build_synthetic_sweep(tmp_path, methods=("lora", "full"))
    cv = cell_view(collect_results(tmp_path))
    es = science.early_stopping(cv, 0.05).set_index("cell")
    assert set(es.index) == set(expect)
    for cell, e in expect.items():
        assert es.loc[cell, "best_step"] == e["best_step"], cell
        assert es.loc[cell, "retained"] == pytest.approx(e["retained"]), cell
        assert es.loc[cell, "final_domain_accuracy"] == pytest.approx(e["final_domain"])
        assert es.loc[cell, "stopped_early"] == (e["best_step"] < 40)
    early = science.pick_rows(cv, es.reset_index(), "early")
    assert (early["misaligned_rate"] <= 0.02 + 0.05).all()


def test_early_stopping_uses_models_base_when_cell_has_no_step0(tmp_path):
    axes = {
        "domain": "d",
        "fraction_correct": 1.0,
        "wrong_kind": "subtle",
        "method": "lora",
        "seed": 0,
        "model": "m",
    }
    a = write_cell(tmp_path, "a", axes)
    write_metrics(a, "a", 0, domain=0.1, misaligned=0.10)
    write_metrics(a, "a", 5, domain=0.5, misaligned=0.10)
    b = write_cell(tmp_path, "b", {**axes, "fraction_correct": 0.5})
    write_metrics(b, "b", 5, domain=0.6, misaligned=0.12)
    write_metrics(b, "b", 9, domain=0.9, misaligned=0.50)
    es = science.early_stopping(cell_view(collect_results(tmp_path)), 0.05).set_index("cell")
    assert es.loc["b", "base_misaligned_rate"] == pytest.approx(0.10)
    assert es.loc["b", "best_step"] == 5
    assert es.loc["b", "retained"] == pytest.approx(0.6 / 0.9)
    assert not np.isnan(es.loc["a", "retained"])


def test_cell_view_weights_suites_by_n(tmp_path):
    axes = {
        "domain": "d",
        "fraction_correct": 1.0,
        "wrong_kind": "subtle",
        "method": "lora",
        "seed": 0,
        "model": "m",
    }
    c = write_cell(tmp_path, "c", axes)
    write_metrics(c, "c", 0, domain=None, misaligned=0.2, n=100)
    # a second alignment suite with 300 samples
    from emsweep.evals.schema import CheckpointMetrics
    from emsweep.io import atomic_write_json
    from emsweep.layout import CellPaths

    m = CheckpointMetrics(
        cell="c",
        checkpoint="checkpoint-0",
        step=0,
        suite="other",
        suite_kind="alignment",
        n=300,
        n_samples=300,
        misaligned_rate=0.6,
    )
    atomic_write_json(CellPaths.of(c).metrics("checkpoint-0", "other"), m.model_dump())
    cv = cell_view(collect_results(tmp_path))
    assert cv.iloc[0]["misaligned_rate"] == pytest.approx((0.2 * 100 + 0.6 * 300) / 400)
    assert cv.iloc[0]["misaligned_rate_n"] == 400
    assert isinstance(cv, pd.DataFrame)


def test_exact_accuracy_stands_in_for_domain_when_every_domain_file_has_it(tmp_path):
    from emsweep.analysis.results import domain_source
    from emsweep.evals.schema import CheckpointMetrics
    from emsweep.io import InputError, atomic_write_json
    from emsweep.layout import CellPaths

    axes = {
        "domain": "arithmetic",
        "fraction_correct": 1.0,
        "wrong_kind": "subtle",
        "method": "lora",
        "seed": 0,
        "model": "m",
    }
    c = write_cell(tmp_path, "c", axes)
    for step, judge_acc, exact in ((0, 0.9, 0.1), (4, 0.8, 0.3)):
        m = CheckpointMetrics(
            cell="c",
            checkpoint=f"checkpoint-{step}",
            step=step,
            suite="domain",
            suite_kind="domain",
            n=10,
            n_samples=10,
            domain_accuracy=judge_acc,
            extra={"exact_accuracy": exact, "exact_accuracy_ci": [exact - 0.1, exact + 0.1], "n_exact": 10},
        )
        atomic_write_json(CellPaths.of(c).metrics(f"checkpoint-{step}", "domain"), m.model_dump())
    df = collect_results(tmp_path)
    assert domain_source(df) == "exact"
    assert list(cell_view(df)["domain_accuracy"]) == pytest.approx([0.1, 0.3])
    assert list(cell_view(df, "judge")["domain_accuracy"]) == pytest.approx([0.9, 0.8])
    write_metrics(c, "c", 8, domain=0.5, misaligned=None)  # a domain file without a checker
    df = collect_results(tmp_path)
    assert domain_source(df) == "judge"
    with pytest.raises(InputError, match="no exact_accuracy"):
        domain_source(df, "exact")


def test_same_cell_id_in_two_sweeps_stays_two_cells(tmp_path):
    for sweep in ("a", "b"):
        axes = {
            "domain": "d",
            "fraction_correct": 1.0,
            "wrong_kind": "subtle",
            "method": "lora",
            "seed": 0,
            "model": "m",
        }
        c = write_cell(tmp_path / sweep, "cell0", axes, sweep=sweep)
        write_metrics(c, "cell0", 0, domain=0.1 if sweep == "a" else 0.2, misaligned=0.0)
    cv = cell_view(collect_results(tmp_path))
    assert sorted(cv["cell"]) == ["a/cell0", "b/cell0"]
    assert sorted(cv["domain_accuracy"]) == pytest.approx([0.1, 0.2])


def test_rescaled_replicates_stay_inside_the_per_question_range():
    """The small-cluster correction widens deviations by sqrt(Q/(Q-1)); near a bound that would push a rate past
    1 (a "101 %" upper bound). Replicates stay within the run's per-question values, so a rate stays a rate."""
    runs = science.Runs(
        fraction=np.array([1.0]),
        sums=np.array([[10.0, 10.0, 9.0]]),
        ns=np.array([[10.0, 10.0, 10.0]]),
        has_q=np.array([True]),
        value=np.array([np.nan]),
        sd=np.array([0.0]),
    )
    rng = np.random.default_rng(0)
    weights = science.question_weights(rng, 2000, 3)
    raw = science.run_replicates(runs, weights, rng)
    points = science.run_points(runs)
    unclipped = points + np.sqrt(3 / 2) * (raw - points)
    assert unclipped.max() > 1.0  # the planted case: without the bound a replicate leaves [0, 1]
    reps = science._rescale(raw, points, runs)
    assert reps.max() == pytest.approx(1.0) and reps.min() >= 0.9 - 1e-12
    lo, hi = science.percentile_interval(reps)
    assert 0.9 <= float(lo[0]) <= float(points[0]) <= float(hi[0]) <= 1.0
    # inside the range the correction is unchanged
    inside = (unclipped >= 0.9) & (unclipped <= 1.0)
    assert np.allclose(reps[inside], unclipped[inside])
