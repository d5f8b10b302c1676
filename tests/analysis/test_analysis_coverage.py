"""Coverage of the report's 95 % intervals, by simulation with known truth.

Each simulated study: fractions x seeds runs, every run answering the same Q questions n times. A sample is
misaligned with probability expit(eta_f + u_q + v_fs): u_q a question effect shared by every run and the base
model (some questions are harder), v_fs a seed effect. The true rate of a fraction is the population mean
E[expit(eta_f + u + v)] (numerical integration), the true base rate E[expit(eta_b + u)], and the true threshold
is the crossing computed from the true rates; the rates are chosen so the true curve crosses the tolerance line
clearly between grid points (the truth is well defined). The analysis code under test (science.analyse_runs /
threshold_rows, what `emsweep report` runs) must cover the truth in 90-99 % of 200 simulations.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from emsweep.analysis import science

FRACTIONS = np.array([0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
TRUE_RATES = np.array([0.45, 0.33, 0.22, 0.14, 0.06, 0.04])  # misaligned rate by fraction correct
TRUE_BASE = 0.03
TOL = 0.05
N_SIMS = 200

_X, _W = np.polynomial.hermite_e.hermegauss(80)
_W = _W / _W.sum()


def _mean_rate(eta: float, sd: float) -> float:
    return float(np.sum(_W * expit(eta + sd * _X)))


def _eta_for(target: float, sd: float) -> float:
    lo, hi = -12.0, 12.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _mean_rate(mid, sd) < target else (lo, mid)
    return (lo + hi) / 2


def _simulate(sd_q: float, sd_s: float, n_q: int, n: int, n_seeds: int, seed: int) -> dict[str, np.ndarray]:
    sd_run = float(np.hypot(sd_q, sd_s))
    eta = np.array([_eta_for(t, sd_run) for t in TRUE_RATES])
    eta_b = _eta_for(TRUE_BASE, sd_q)
    truth = np.array([_mean_rate(e, sd_run) for e in eta])
    truth_b = _mean_rate(eta_b, sd_q)
    assert truth == pytest.approx(TRUE_RATES, abs=1e-6) and truth_b == pytest.approx(TRUE_BASE, abs=1e-6)
    # the true thresholds, and that they are well defined: strictly between grid points, clear margins
    t_true = {}
    for ref_name, ref in (("finetune", truth[-1]), ("base", truth_b)):
        grid, cross = science.crossing_points(truth[None], np.array([ref]), FRACTIONS, TOL, False)
        k = int(np.flatnonzero(grid[0] == FRACTIONS)[0])
        margins = np.abs(truth - (ref + TOL))
        assert k > 0 and margins.min() > 0.019, (ref_name, margins)
        assert FRACTIONS[k - 1] < cross[0] < FRACTIONS[k]
        t_true[ref_name] = (float(grid[0]), float(cross[0]))

    rng = np.random.default_rng(seed)
    hits: dict[str, list] = {k: [] for k in ("rates", "base", "finetune", "base_thr", "grid")}
    frac = np.repeat(FRACTIONS, n_seeds)
    c = len(frac)
    for sim in range(N_SIMS):
        u = rng.normal(0, sd_q, n_q)
        v = rng.normal(0, sd_s, (len(FRACTIONS), n_seeds))
        p = expit(eta[:, None, None] + v[:, :, None] + u[None, None, :]).reshape(c, n_q)
        sums = rng.binomial(n, p).astype(float)
        runs = science.Runs(frac, sums, np.full_like(sums, n), np.ones(c, bool), np.zeros(c), np.zeros(c))
        bsums = rng.binomial(n, expit(eta_b + u), size=(c, n_q)).astype(float)  # every run's step 0
        base = science.Runs(
            np.full(c, -1.0), bsums, np.full_like(bsums, n), np.ones(c, bool), np.zeros(c), np.zeros(c)
        )
        res = science.analyse_runs(runs, base, n_boot=1000, rng=np.random.default_rng([seed, sim]))
        lo, hi = science.percentile_interval(res.reps)
        hits["rates"].append((lo <= truth) & (truth <= hi))
        blo, bhi = science.percentile_interval(res.base_reps[:, None])
        hits["base"].append(blo[0] <= truth_b <= bhi[0])
        ft, b = science.threshold_rows(res, TOL, higher=False)
        assert (ft["reference"], b["reference"]) == ("finetune", "base")
        hits["finetune"].append(ft["crossing_lo"] <= t_true["finetune"][1] <= ft["crossing_hi"])
        hits["base_thr"].append(b["crossing_lo"] <= t_true["base"][1] <= b["crossing_hi"])
        hits["grid"].append(ft["threshold_lo"] <= t_true["finetune"][0] <= ft["threshold_hi"])
    return {k: np.array(v) for k, v in hits.items()}


def test_intervals_cover_the_truth_with_seeds_and_question_effects():
    hits = _simulate(sd_q=0.6, sd_s=0.15, n_q=24, n=100, n_seeds=3, seed=1)
    rates = hits["rates"]
    assert 0.90 <= rates.mean() <= 0.99, rates.mean(0)
    assert (rates.mean(0) >= 0.87).all(), rates.mean(0)  # no fraction far off on its own
    assert 0.90 <= hits["base"].mean() <= 0.99
    assert 0.90 <= hits["finetune"].mean() <= 0.99, hits["finetune"].mean()
    assert 0.90 <= hits["base_thr"].mean() <= 0.99, hits["base_thr"].mean()
    assert hits["grid"].mean() >= 0.95  # the grid threshold's interval is conservative (whole grid steps)


def test_intervals_cover_the_truth_with_one_seed_per_fraction():
    # one seed cannot show seed-to-seed variation: without it, question + sampling noise is the whole story
    hits = _simulate(sd_q=0.6, sd_s=0.0, n_q=24, n=100, n_seeds=1, seed=2)
    assert 0.90 <= hits["rates"].mean() <= 0.99, hits["rates"].mean(0)
    assert 0.90 <= hits["finetune"].mean() <= 0.99, hits["finetune"].mean()
    assert 0.90 <= hits["base_thr"].mean() <= 0.99, hits["base_thr"].mean()


def test_sample_level_redraw_would_be_overconfident():
    """The old interval redrew each rate as Binomial(n_total, rate): with question effects it is far too narrow.
    This pins down why the question bootstrap exists (and that the simulation can tell the difference)."""
    rng = np.random.default_rng(3)
    eta = _eta_for(0.2, 0.8)
    truth = _mean_rate(eta, 0.8)
    n_q, n, covered = 24, 100, []
    for _ in range(N_SIMS):
        u = rng.normal(0, 0.8, n_q)
        rate = rng.binomial(n, expit(eta + u)).sum() / (n_q * n)
        redraw = rng.binomial(n_q * n, rate, size=1000) / (n_q * n)
        lo, hi = np.quantile(redraw, [0.025, 0.975])
        covered.append(lo <= truth <= hi)
    assert np.mean(covered) < 0.6
