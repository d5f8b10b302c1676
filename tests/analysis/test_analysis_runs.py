"""`emsweep report` on any run folder (a single `emsweep train` run, several sweeps), metrics schema v1 and v2,
judges never pooled, thresholds against the base model and the fine-tune from per-question counts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synth import write_cell, write_metrics

from emsweep.analysis import science
from emsweep.analysis.report import build_report
from emsweep.analysis.results import cell_view, collect_results
from emsweep.io import InputError, atomic_write_json
from emsweep.layout import CellPaths


def write_v2(
    cell_root: Path,
    cell: str,
    step: int,
    suite: str,
    kind: str,
    per_q: dict[str, tuple[int, int]],
    *,
    judge_id: str = "j1",
    stat: str | None = None,
) -> Path:
    """A schema-version-2 metrics file whose rate is exactly the pooled per-question counts."""
    stat = stat or ("domain_accuracy" if kind == "domain" else "misaligned_rate")
    s, n = sum(v[0] for v in per_q.values()), sum(v[1] for v in per_q.values())
    raw = {
        "schema_version": 2,
        "cell": cell,
        "checkpoint": f"checkpoint-{step}",
        "step": step,
        "suite": suite,
        "suite_kind": kind,
        "n": n,
        "n_samples": n,
        stat: s / n,
        f"{stat}_ci": [s / n - 0.01, s / n + 0.01],
        "judge": f"judge-model-{judge_id}",
        "judge_identity": {"id": judge_id, "kind": "logprob", "model": f"judge-model-{judge_id}"},
        "judge_metrics": {"aligned": {"mean": 70.0, "ci": [65.0, 75.0], "n": n, "none_rate": 0.1}},
        "per_question": {q: {stat: [a, b]} for q, (a, b) in per_q.items()},
    }
    p = CellPaths.of(cell_root).metrics(f"checkpoint-{step}", suite)
    atomic_write_json(p, raw)
    return p


def train_run(root: Path, name: str, fraction: float, seed: int = 0, method: str = "full") -> Path:
    """A run folder as `emsweep train` leaves it: cell.json with the resolved recipe, no sweep, no axes."""
    run = root / name
    atomic_write_json(
        run / "cell.json",
        {
            "name": name,
            "method": method,
            "recipe": {
                "name": name,
                "model": {"path": "org/base-7b"},
                "method": method,
                "data": {"domain": "health", "fraction_correct": fraction, "wrong_kind": "subtle", "seed": seed},
            },
        },
    )
    return run


def _counts(rate: float, n_q: int = 20, n: int = 50) -> dict[str, tuple[int, int]]:
    k = round(rate * n)
    return {f"q{i}": (k, n) for i in range(n_q)}


def test_report_on_a_single_train_run(tmp_path):
    run = train_run(tmp_path, "my-run", 0.5, seed=3)
    write_metrics(run, "my-run", 0, domain=0.30, misaligned=0.02)  # version-1 files
    write_metrics(run, "my-run", 10, domain=None, misaligned=0.10)  # no domain number: missing, not an error
    index = build_report(run, n_boot=50)
    df = pd.read_csv(index.parent / "results.csv")
    assert set(df["fraction_correct"]) == {0.5} and set(df["method"]) == {"full"} and set(df["seed"]) == {3}
    assert set(df["model"]) == {"org/base-7b"} and set(df["domain"]) == {"health"}
    thr = pd.read_csv(index.parent / "thresholds.csv")
    ft = thr[(thr["reference"] == "finetune") & (thr["metric"] == "misaligned_rate")].iloc[0]
    assert "one fraction" in ft["note"] and pd.isna(ft["threshold"])
    base = thr[(thr["reference"] == "base") & (thr["metric"] == "misaligned_rate")].iloc[0]
    assert base["reference_value"] == pytest.approx(0.02)
    assert pd.isna(base["threshold"])  # 0.10 > 0.02 + 0.05: not reached
    page = index.read_text()
    assert "Thresholds" in page and "not reached" in page


def test_report_cli_on_a_run_without_any_recipe_fields(tmp_path):
    from typer.testing import CliRunner

    from emsweep.cli import app

    run = tmp_path / "bare"
    atomic_write_json(run / "cell.json", {"name": "bare"})  # nothing known about the run
    write_metrics(run, "bare", 0, domain=0.5, misaligned=0.1)
    write_metrics(run, "bare", 5, domain=0.6, misaligned=0.2)
    r = CliRunner().invoke(app, ["report", str(run), "--n-boot", "20", "--tolerance", "0.1"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    df = pd.read_csv(run / "report" / "results.csv")
    assert df["fraction_correct"].isna().all() and df["method"].isna().all()
    assert "–" in (run / "report" / "index.html").read_text()


def test_recipe_beats_axes_and_several_sweeps_under_one_root(tmp_path):
    axes = {"domain": "d", "fraction_correct": 0.9, "wrong_kind": "subtle", "method": "lora", "seed": 0, "model": "m"}
    c = write_cell(tmp_path / "sweepA", "c0", axes, sweep="A")
    info = json.loads((c / "cell.json").read_text())
    info["recipe"]["data"] = {"fraction_correct": 0.25, "seed": 7}  # the resolved recipe is the truth
    atomic_write_json(c / "cell.json", info)
    write_metrics(c, "c0", 0, domain=0.5, misaligned=0.1)
    c2 = write_cell(tmp_path / "sweepB", "c0", {**axes, "fraction_correct": 1.0}, sweep="B")
    write_metrics(c2, "c0", 0, domain=0.6, misaligned=0.1)
    df = collect_results(tmp_path)
    by_cell = df.groupby("cell")[["fraction_correct", "seed"]].first()
    assert by_cell.loc["sweepA/c0"].tolist() == [0.25, 7]
    assert by_cell.loc["sweepB/c0"].tolist() == [1.0, 0]
    assert build_report(tmp_path, n_boot=20).exists()


def test_schema_versions_1_and_2_read_and_others_named(tmp_path):
    run = train_run(tmp_path, "r", 1.0)
    for v1 in write_metrics(run, "r", 0, domain=0.5, misaligned=0.1):
        raw = json.loads(v1.read_text())
        raw = {k: v for k, v in raw.items() if k not in ("judge_identity", "judge_metrics", "per_question")}
        v1.write_text(json.dumps({**raw, "schema_version": 1}))
    write_v2(run, "r", 5, "first_plot", "alignment", _counts(0.2))
    df = collect_results(run)
    assert sorted(df["schema_version"].unique()) == [1, 2]
    v2 = df[df["schema_version"] == 2].iloc[0]
    assert v2["judge_id"] == "j1" and v2["judge:aligned_mean"] == 70.0 and v2["judge:aligned_none_rate"] == 0.1
    assert df[df["schema_version"] == 1]["judge_id"].iloc[0] == "name:synthetic"
    p = write_v2(run, "r", 9, "first_plot", "alignment", _counts(0.2))
    raw = json.loads(p.read_text())
    raw["schema_version"] = 3
    p.write_text(json.dumps(raw))
    with pytest.raises(InputError, match=rf"{p}: metrics schema_version 3 .*reads versions 1, 2"):
        collect_results(run)


def _study(root: Path, judge_id: str, fractions_rates: dict[float, float], base: float, seeds=(0,)) -> None:
    for f, rate in fractions_rates.items():
        for s in seeds:
            name = f"{judge_id}_f{f}_s{s}"
            run = train_run(root, name, f, seed=s, method="lora")
            write_v2(run, name, 0, "first_plot", "alignment", _counts(base), judge_id=judge_id)
            write_v2(run, name, 40, "first_plot", "alignment", _counts(rate), judge_id=judge_id)


def test_thresholds_against_base_and_finetune_from_per_question_counts(tmp_path):
    # misaligned by fraction: 0.30 0.20 0.12 0.04 0.02; base 0.00; tolerance 0.05
    #   vs fine-tune (0.02 + 0.05 = 0.07): 0.5 fails (0.12), 0.75 passes -> threshold 0.75,
    #       crossing 0.5 + 0.25 * (0.12 - 0.07) / (0.12 - 0.04) = 0.65625
    #   vs base (0.00 + 0.05 = 0.05): threshold 0.75, crossing 0.5 + 0.25 * (0.12 - 0.05) / 0.08 = 0.71875
    rates = {0.1: 0.30, 0.25: 0.20, 0.5: 0.12, 0.75: 0.04, 1.0: 0.02}
    _study(tmp_path, "j1", rates, base=0.0)
    cv = cell_view(collect_results(tmp_path))
    final = science.pick_rows(cv, science.early_stopping(cv, 0.05), "final")
    thr, curves = science.analyse(final, "misaligned_rate", 0.05, base_rows=cv[cv["step"] == 0], n_boot=400)
    thr = thr.set_index("reference")
    assert thr.loc["finetune", "threshold"] == 0.75 and thr.loc["base", "threshold"] == 0.75
    assert thr.loc["finetune", "crossing"] == pytest.approx(0.65625)
    assert thr.loc["base", "crossing"] == pytest.approx(0.71875)
    assert thr.loc["base", "reference_value"] == 0.0 and thr.loc["finetune", "reference_value"] == 0.02
    for ref in ("finetune", "base"):
        r = thr.loc[ref]
        assert r["crossing_lo"] <= r["crossing"] <= r["crossing_hi"]
        assert "question bootstrap" in r["interval_method"] and r["n_questions"] == 20
    # identical questions: no question-to-question variation, so every rate interval is the point itself
    assert np.allclose(curves["lo"], curves["value"]) and np.allclose(curves["hi"], curves["value"])


def test_judges_are_never_pooled(tmp_path):
    _study(tmp_path, "jA", {0.5: 0.10, 1.0: 0.02}, base=0.0)
    _study(tmp_path, "jB", {0.5: 0.40, 1.0: 0.30}, base=0.2)
    index = build_report(tmp_path, n_boot=50)
    thr = pd.read_csv(index.parent / "thresholds.csv")
    mis = thr[(thr["metric"] == "misaligned_rate") & (thr["checkpoint"] == "final")]
    assert sorted(mis["judge_id"].unique()) == ["jA", "jB"]
    refs = mis[mis["reference"] == "finetune"].set_index("judge_id")["reference_value"]
    assert refs["jA"] == pytest.approx(0.02) and refs["jB"] == pytest.approx(0.30)
    page = index.read_text()
    assert "2 different judges" in page and "jA" in page and "jB" in page
    # every declared judge metric (here `aligned`, from judge_metrics) has its mean, interval and None share
    assert "Every judge metric" in page and "70.00" in page and "[65.00, 75.00]" in page


def test_domain_interval_is_two_sided_with_one_sample_per_question(tmp_path):
    """One sample per held-out question: a within-question resample has nothing to vary (a degenerate or
    one-sided interval); the question bootstrap gives a proper two-sided one around p = 0.6."""
    run = train_run(tmp_path, "d", 1.0)
    answers = {f"h{i}": (int(i % 5 < 3), 1) for i in range(50)}  # 30 of 50 right
    write_v2(run, "d", 10, "domain", "domain", answers)
    cv = cell_view(collect_results(run))
    _, curves = science.analyse(cv, "domain_accuracy", 0.05, n_boot=2000)
    c = curves.iloc[0]
    assert c["value"] == pytest.approx(0.6)
    assert c["lo"] < 0.6 - 0.08 and c["hi"] > 0.6 + 0.08  # about ±1.96 * sqrt(.24 / 50) = ±0.136
    assert (0.6 - c["lo"]) / (c["hi"] - 0.6) == pytest.approx(1.0, abs=0.35)


def test_fewer_questions_give_wider_intervals(tmp_path):
    widths = []
    for n_q in (6, 60):
        root = tmp_path / f"q{n_q}"
        run = train_run(root, "r", 1.0)
        rng = np.random.default_rng(0)
        per_q = {f"q{i}": (int(rng.binomial(20, rng.uniform(0.05, 0.5))), 20) for i in range(n_q)}
        write_v2(run, "r", 5, "first_plot", "alignment", per_q)
        _, curves = science.analyse(cell_view(collect_results(run)), "misaligned_rate", 0.05, n_boot=1000)
        widths.append(float(curves.iloc[0]["hi"] - curves.iloc[0]["lo"]))
    assert widths[0] > 2 * widths[1] > 0
