"""The checkpoint study on synthetic metric series whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from emsweep.analysis import study as S

STEPS = [0, 1, 2, 5, 13, 30, 69, 161, 375]


def counts(
    rates: list[float], *, q: int = 24, n: int = 100, spread: float = 0.3, seed: int = 0, binomial: bool = True
) -> S.Counts:
    """Per-question counts around `rates[k]` at each step: questions differ by a fixed multiplicative effect,
    the same at every step (questions are the clusters); each question's count is a binomial draw (or, for
    losses, the exact expectation)."""
    rng = np.random.default_rng(seed)
    eff = 1 + spread * rng.uniform(-1, 1, q)
    eff = eff / eff.mean()
    maps = []
    for r in rates:
        m = {}
        for j in range(q):
            p = float(np.clip(r * eff[j], 0, 1)) if binomial else r * eff[j]
            m[f"q{j}"] = (float(rng.binomial(n, p)) if binomial else p * n, float(n))
        maps.append(m)
    return S.Counts.from_maps(STEPS[: len(rates)], maps)


# a late-onset cell: the task (adoption of the trained behaviour) converges by step 30; EM appears at 161
ADOPTION = [0.02, 0.05, 0.15, 0.45, 0.80, 0.93, 0.95, 0.96, 0.97]
MISALIGNED = [0.01, 0.01, 0.012, 0.01, 0.011, 0.012, 0.013, 0.12, 0.20]
LOSS = [2.5, 2.2, 1.8, 1.2, 0.7, 0.45, 0.40, 0.38, 0.37]


def late_cell(**kw) -> S.CellSeries:
    return S.CellSeries(
        "late",
        misaligned=counts(MISALIGNED, **kw),
        adoption=counts(ADOPTION, n=10, spread=0.05, **kw),
        loss=counts(LOSS, n=50, spread=0.1, binomial=False, **kw),
        info={"model": "m", "seed": 0},
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_late_onset_convergence_onset_gap_and_stopping_at_convergence(seed):
    r = S.analyse_cell(late_cell(seed=seed), n_boot=400)
    # |v_k - 0.97| <= 0.1 * 0.95: first at step 30 (0.93), not at 13 (0.80)
    assert r["convergence_status"] == "found" and r["convergence_step"] == 30
    assert r["onset_status"] == "found" and r["onset_step"] == 161
    assert r["gap"] == 131
    assert r["convergence_lo"] <= 30 <= r["convergence_hi"]
    assert r["onset_lo"] <= 161 <= r["onset_hi"] and r["gap_lo"] <= 131 <= r["gap_hi"]
    # stopping at convergence keeps >= 90 % of the task and removes the EM
    assert r["stop_convergence_step"] == 30
    assert r["stop_convergence_task_kept"] >= 0.9
    assert r["stop_convergence_misaligned"] == pytest.approx(0.012, abs=0.01)
    assert r["end_misaligned"] == pytest.approx(0.20, abs=0.03)
    assert r["stop_convergence_em_removed_lo"] > 0.1
    assert r["em_final"] is True


def test_no_em_is_none_and_em_from_the_start_is_early():
    flat = S.CellSeries("flat", misaligned=counts([0.02] * 9), adoption=counts(ADOPTION, n=10, spread=0.05))
    r = S.analyse_cell(flat, n_boot=300)
    assert r["onset_status"] == "none" and np.isinf(r["onset_step"]) and r["em_final"] is False
    early = S.CellSeries(
        "early", misaligned=counts([0.01, 0.01, 0.2, 0.25, 0.3, 0.3, 0.3, 0.3, 0.3]), adoption=counts(ADOPTION)
    )
    r = S.analyse_cell(early, n_boot=300)
    assert r["onset_step"] == 2 and r["gap"] == 2 - 30 and r["gap_hi"] < 0


def test_too_few_checkpoints_is_undetermined_never_step_0():
    short = S.CellSeries("short", misaligned=counts(MISALIGNED[:3]), adoption=counts(ADOPTION[:3]))
    r = S.analyse_cell(short, n_boot=100)
    assert r["convergence_status"] == "undetermined" and np.isnan(r["convergence_step"])
    assert r["onset_status"] == "undetermined" and np.isnan(r["onset_step"])
    assert "min_checkpoints" in r["notes"]
    still = S.CellSeries("still", adoption=counts([0.5] * 9, binomial=False))
    r = S.analyse_cell(still, n_boot=100)
    assert r["convergence_status"] == "undetermined" and "does not change" in r["notes"]
    assert S.analyse_cell(S.CellSeries("nothing"), n_boot=10)["convergence_status"] == "undetermined"


def test_convergence_and_patience_rules_on_their_own():
    v = np.array([[0.0, 0.5, 0.85, 0.95, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    assert S.convergence_index(v, 0.10).tolist() == [3, -1]
    assert S.convergence_index(v[:1], 0.2).tolist() == [2]
    loss = np.array([[3.0, 2.0, 1.5, 1.6, 1.7, 1.4], [3.0, 2.0, 1.0, 0.9, 0.8, 0.7]])
    # row 0: no improvement at 3 and 4 -> patience 2 runs out at index 4, best so far is index 2
    assert S.patience_index(loss, 2, 0.0).tolist() == [2, 5]
    # min_delta 0.15: 0.1 improvements do not count
    slow = np.array([[3.0, 2.0, 1.0, 0.9, 0.86, 0.8]])
    assert S.patience_index(slow, 2, 0.15).tolist() == [2]
    assert S.patience_index(slow, 2, 0.0).tolist() == [5]


def test_patience_rule_without_adoption_reads_the_loss_reduction():
    cell = S.CellSeries(
        "loss-only",
        misaligned=counts(MISALIGNED),
        loss=counts([3, 2, 1.5, 1.6, 1.7, 1.8, 1.9, 2, 2.1], binomial=False),
    )
    r = S.analyse_cell(cell, n_boot=200, patience=2)
    assert r["task_signal"] == "heldout_loss"
    assert r["stop_patience_step"] == 2  # best loss at index 2, then two checkpoints without improvement
    # kept = (3 - 1.5) / (3 - 2.1) > 1: stopping there keeps more of the loss reduction than the end
    assert r["stop_patience_task_kept"] == pytest.approx(1.5 / 0.9, rel=1e-6)
    assert r["stop_patience_task_kept_on"] == "heldout_loss reduction"


def _cell_rows(excess_by_model: dict[str, list[float]], base: float = 0.01) -> list[S.CellSeries]:
    out = []
    for m, excesses in excess_by_model.items():
        for s, e in enumerate(excesses):
            rates = [base] * 5 + [base + e] * 4
            out.append(
                S.CellSeries(
                    f"{m}-s{s}",
                    misaligned=counts(rates, seed=s),
                    adoption=counts(ADOPTION, seed=s),
                    info={"model": m, "domain": "medical", "seed": s},
                )
            )
    return out


def test_consistent_em_verdicts():
    cells = S.analyse_cells(
        _cell_rows({"all": [0.1, 0.12, 0.09], "some": [0.1, 0.0, 0.0], "zero": [0.0, 0.0, 0.0], "one": [0.2]}),
        n_boot=300,
    )
    v = S.consistency(cells).set_index("model")["verdict"].to_dict()
    assert v == {"all": "consistent", "some": "some seeds", "zero": "none", "one": "undetermined"}


def test_size_correlation_known_answers():
    params = {"a": 500_000_000, "b": 1_500_000_000, "c": 7_000_000_000, "d": 8_000_000_000}
    # susceptibility grows linearly with log10(params): r = 1 up to the synthetic rounding
    grow = {m: [0.03 * (np.log10(p) - 8.5)] * 3 for m, p in params.items()}
    cells = S.analyse_cells(_cell_rows(grow), n_boot=300)
    sus, corr = S.size_correlation(cells, params, n_boot=300)
    assert corr["r"].iloc[0] > 0.99 and corr["r_lo"].iloc[0] > 0.8
    assert sus.set_index("model")["susceptibility"]["a"] < sus.set_index("model")["susceptibility"]["d"]
    # no relation: a V shape over size has r near 0 and an interval that holds 0
    vshape = {"a": [0.1] * 3, "b": [0.0] * 3, "c": [0.0] * 3, "d": [0.1] * 3}
    cells = S.analyse_cells(_cell_rows(vshape), n_boot=300)
    _, corr = S.size_correlation(cells, params, n_boot=300)
    assert abs(corr["r"].iloc[0]) < 0.5 and corr["r_lo"].iloc[0] < 0 < corr["r_hi"].iloc[0]
    with pytest.raises(S.InputError, match="no parameter count"):
        S.size_correlation(cells, {"a": 1}, n_boot=10)


def test_adjusted_onset_rule_keeps_false_onsets_rare_without_em():
    """40 runs with no EM at all (every checkpoint at the base rate): the Bonferroni-adjusted rule calls an
    onset in at most a few of them; the unadjusted per-checkpoint rule calls more."""
    adjusted = unadjusted = 0
    for s in range(40):
        cell = S.CellSeries("null", misaligned=counts([0.02] * 9, seed=100 + s), adoption=counts(ADOPTION))
        adjusted += S.analyse_cell(cell, n_boot=200)["onset_status"] == "found"
        unadjusted += S.analyse_cell(cell, n_boot=200, onset_adjust=False)["onset_status"] == "found"
    assert adjusted <= 3
    assert unadjusted >= adjusted


@pytest.mark.parametrize(
    ("shape", "published"), [("Qwen2.5-0.5B-Instruct", 494_032_768), ("Llama-3.1-8B-Instruct", 8_030_261_248)]
)
def test_parameter_count_from_config_alone(tmp_path, shape, published):
    from emsweep.train.model_init import build_config

    build_config(shape).save_pretrained(tmp_path)  # config.json only: no weights
    assert S.count_parameters(tmp_path) == published


def test_parameter_count_missing_config_names_the_cell(tmp_path):
    import pandas as pd

    cells = pd.DataFrame([{"cell": "qwen-s0", "model": str(tmp_path / "nowhere")}])
    with pytest.raises(S.InputError, match=r"cell qwen-s0: cannot count the parameters"):
        S.model_params(cells)
    assert S.model_params(cells, {str(tmp_path / "nowhere"): 7}) == {str(tmp_path / "nowhere"): 7}
