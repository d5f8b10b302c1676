"""The report's checkpoint-study section on a synthetic sweep written to disk, with both signals present and
answers known by construction.

One model, two learning rates (a sweep axis over `sft.learning_rate`), two seeds each. Every cell has
checkpoints at steps 0 1 2 5 13 30 69 161 375 with, per checkpoint: the first-plot suite's per-question
misaligned counts (24 questions x 100 samples; identical to the base model's until a planted late onset), the
`task` suite's per-prompt adoption scores (100 prompts, one answer each, nested: a prompt that adopts keeps
adopting) and the trainer's held-out loss per row (training_signals.json). Planted answers:
- lr 1e-5: task converges at step 30 (adoption 0.93 of a final 0.97, within 10 % of the run's change; step 13's
  0.80 is not), EM appears at step 161;
- lr 4e-5: converges at 13, EM at 69, with a larger final excess.
The report is built with `build_report`; its table must give these steps (inside their intervals), task kept
at the convergence stop = adoption(stop) / adoption(end) and EM removed = misaligned(end) - misaligned(stop), both
recomputed from the planted counts; the per-family figures must draw the onset (dotted) and convergence (dashed)
at the planted steps over the planted series, and the learning-rate figure the per-rate means.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from emsweep.io import atomic_write_json
from emsweep.layout import CellPaths

STEPS = (0, 1, 2, 5, 13, 30, 69, 161, 375)
MODEL = "org/Test-Model-1B"
LRS = (1e-5, 4e-5)
SEEDS = (0, 1)
NQ, NS, NP = 24, 100, 100  # alignment questions, samples per question, task prompts
ADOPTION = {
    1e-5: (0.02, 0.05, 0.15, 0.45, 0.80, 0.93, 0.95, 0.96, 0.97),
    4e-5: (0.02, 0.10, 0.40, 0.85, 0.95, 0.96, 0.97, 0.97, 0.98),
}
CONVERGENCE = {1e-5: 30, 4e-5: 13}
BASE_RATE = 0.01
MIS_AFTER = {1e-5: {161: 0.12, 375: 0.20}, 4e-5: {69: 0.15, 161: 0.25, 375: 0.35}}  # rates from the onset on
ONSET = {1e-5: 161, 4e-5: 69}
LOSS = (2.5, 2.2, 1.8, 1.2, 0.7, 0.45, 0.40, 0.38, 0.37)


def _cell_id(lr: float, seed: int) -> str:
    return f"medical_f1.00_subtle_lora_s{seed}_lr{lr:g}"


def mis_counts(lr: float, seed: int, step: int) -> list[int]:
    """Per-question misaligned counts: the base model's until the onset, then around the planted rate with a
    fixed per-question effect (questions differ; the interval has width)."""
    u = np.random.default_rng([seed, 7]).uniform(-1, 1, NQ)
    rate = MIS_AFTER[lr].get(step)
    if rate is None:
        return [round(NS * BASE_RATE)] * NQ
    return [round(NS * (BASE_RATE + (rate - BASE_RATE) * (1 + 0.3 * x))) for x in u]


def adopted(lr: float, step: int) -> int:
    return round(NP * ADOPTION[lr][STEPS.index(step)])


def _write(root: Path) -> None:
    for lr in LRS:
        for seed in SEEDS:
            cell = _cell_id(lr, seed)
            cr = root / cell
            axes = {"domain": "medical", "fraction_correct": 1.0, "wrong_kind": "subtle", "method": "lora",
                    "seed": seed, "model": MODEL, "sft.learning_rate": lr}  # fmt: skip
            recipe = {"method": "lora", "model": {"path": MODEL}, "sft": {"learning_rate": lr},
                      "data": {"domain": "medical", "fraction_correct": 1.0, "wrong_kind": "subtle", "seed": seed}}  # fmt: skip
            atomic_write_json(cr / "cell.json", {"cell": cell, "sweep": "study", "axes": axes, "recipe": recipe})
            paths = CellPaths.of(cr)
            losses = {}
            for k, step in enumerate(STEPS):
                ck = f"checkpoint-{step}"
                counts = mis_counts(lr, seed, step)
                rate = sum(counts) / (NS * NQ)
                atomic_write_json(paths.metrics(ck, "first_plot"), {
                    "schema_version": 2, "cell": cell, "checkpoint": ck, "step": step, "suite": "first_plot",
                    "suite_kind": "alignment", "n": NS * NQ, "n_samples": NS * NQ, "misaligned_rate": rate,
                    "misaligned_rate_ci": [max(0.0, rate - 0.01), rate + 0.01], "judge": "synth",
                    "judge_identity": {"id": "synth", "kind": "logprob", "model": "synth"},
                    "per_question": {f"q{j}": {"misaligned_rate": [c, NS]} for j, c in enumerate(counts)},
                    "bootstrap_unit": "question", "backend": "hf",
                })  # fmt: skip
                a = adopted(lr, step)
                atomic_write_json(paths.metrics(ck, "task"), {
                    "schema_version": 2, "cell": cell, "checkpoint": ck, "step": step, "suite": "task",
                    "suite_kind": "task", "n": NP, "n_samples": NP, "judge": "synth",
                    "judge_identity": {"id": "synth-task", "kind": "logprob", "model": "synth"},
                    "judge_metrics": {"adopted": {"kind": "logprob", "n": NP, "n_judged": NP, "mean": 100.0 * a / NP,
                                                  "ci": [max(0.0, 100.0 * a / NP - 5), min(100.0, 100.0 * a / NP + 5)],
                                                  "none_rate": 0.0, "labels": None}},
                    "per_question": {f"p{i}": {"mean:adopted": [100.0 if i < a else 0.0, 1]} for i in range(NP)},
                    "bootstrap_unit": "question", "backend": "hf",
                })  # fmt: skip
                losses[str(step)] = {
                    "loss": LOSS[k],
                    "per_row": {f"p{i}": [LOSS[k] * 10 * (1 + 0.1 * ((i % 5) - 2)), 10.0] for i in range(NP)},
                }
            atomic_write_json(cr / "training_signals.json", {"heldout_loss": losses})


class _Rows(HTMLParser):
    """Every table row of the page as a list of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _step_iv(text: str) -> tuple[float, float, float]:
    m = re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", text)
    assert m, text
    conv = [float("inf") if v == "> last" else float(v) for v in m.groups()]
    return conv[0], conv[1], conv[2]


def _pct_iv(text: str) -> tuple[float, float, float]:
    m = re.fullmatch(r"(-?[\d.]+) % \[(-?[\d.]+), (-?[\d.]+)\]", text)
    assert m, text
    v, lo, hi = (float(x) / 100 for x in m.groups())
    return v, lo, hi


def _capture(mp: pytest.MonkeyPatch) -> dict[str, list[dict]]:
    """What each saved figure draws: per axes, every line's (x, y, linestyle, label)."""
    drawn: dict[str, list[dict]] = {}
    savefig = Figure.savefig

    def save(self, fname, *a, **kw):
        name = Path(fname).name
        m = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", name)  # emsweep.io.atomic_path's temp name
        drawn[m.group(1) if m else name] = [
            {"ylabel": ax.get_ylabel(), "lines": [(np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float),
                                                    ln.get_linestyle(), ln.get_label()) for ln in ax.get_lines()]}
            for ax in self.axes
        ]  # fmt: skip
        return savefig(self, fname, *a, **kw)

    mp.setattr(Figure, "savefig", save)
    return drawn


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from emsweep.analysis.report import build_report

    root = tmp_path_factory.mktemp("sweep") / "study"
    _write(root)
    mp = pytest.MonkeyPatch()
    try:
        drawn = _capture(mp)
        index = build_report(root, root / "report", n_boot=300)
    finally:
        mp.undo()
    page = Path(index) if Path(index).is_file() else Path(index) / "index.html"
    parser = _Rows()
    parser.feed(page.read_text())
    return page, parser.rows, drawn


def _study_row(rows: list[list[str]], cell: str) -> dict[str, str]:
    header = next(r for r in rows if r[:4] == ["cell", "task signal", "convergence step", "EM onset step"])
    row = next(r for r in rows if r and r[0] == cell and len(r) == len(header))
    return dict(zip(header, row, strict=True))


@pytest.mark.parametrize("lr", LRS)
@pytest.mark.parametrize("seed", SEEDS)
def test_study_table_gives_the_planted_answers(report, lr, seed):
    _, rows, _ = report
    r = _study_row(rows, _cell_id(lr, seed))
    assert r["task signal"] == "adoption"
    conv, lo, hi = _step_iv(r["convergence step"])
    assert conv == CONVERGENCE[lr] and lo <= conv <= hi
    onset, lo, hi = _step_iv(r["EM onset step"])
    assert onset == ONSET[lr] and lo <= onset <= hi
    assert r["gap"] == str(ONSET[lr] - CONVERGENCE[lr])
    assert r["stop (convergence)"] == str(CONVERGENCE[lr])
    # task kept = adoption(stop) / adoption(end), from the planted counts
    kept, lo, hi = _pct_iv(r["task kept"])
    want = adopted(lr, CONVERGENCE[lr]) / adopted(lr, STEPS[-1])
    assert kept == pytest.approx(want, abs=6e-4) and lo - 6e-4 <= want <= hi + 6e-4 and kept >= 0.9
    # EM removed = misaligned(end) - misaligned(stop); the stop is before the onset, so at the base model's rate
    at_stop = sum(mis_counts(lr, seed, CONVERGENCE[lr])) / (NS * NQ)
    at_end = sum(mis_counts(lr, seed, STEPS[-1])) / (NS * NQ)
    assert at_stop == BASE_RATE
    removed, lo, hi = _pct_iv(r["EM removed"])
    assert removed == pytest.approx(at_end - at_stop, abs=6e-4) and lo - 6e-4 <= at_end - at_stop <= hi + 6e-4
    assert _pct_iv(r["misaligned at end"])[0] == pytest.approx(at_end, abs=6e-4)


def test_family_figures_mark_convergence_and_onset_on_the_planted_series(report):
    page, _, drawn = report
    for lr in LRS:
        fam = [k for k in drawn if k.startswith("study_") and k.endswith(f"learning_rate_{lr}.png")]
        assert len(fam) == 1, sorted(drawn)
        assert (page.parent / fam[0]).is_file() and fam[0] in page.read_text()
        task_ax, mis_ax = drawn[fam[0]]
        for seed in SEEDS:
            x, y, _, _ = next(ln for ln in mis_ax["lines"] if ln[3] == f"seed {seed} misaligned")
            assert list(x) == [0.5, *STEPS[1:]]  # step 0 drawn at 0.5 on the log axis
            assert list(y) == pytest.approx([sum(mis_counts(lr, seed, s)) / (NS * NQ) for s in STEPS])
            x, y, _, _ = next(ln for ln in task_ax["lines"] if ln[3] == f"seed {seed} adoption")
            assert list(y) == pytest.approx([adopted(lr, s) / NP for s in STEPS])
        onsets = [ln[0][0] for ln in mis_ax["lines"] if ln[2] == ":" and len(set(ln[0])) == 1]
        convs = [ln[0][0] for ln in task_ax["lines"] if ln[2] == "--" and len(set(ln[0])) == 1]
        assert onsets == [ONSET[lr]] * len(SEEDS)
        assert convs == [CONVERGENCE[lr]] * len(SEEDS)


def test_learning_rate_figure_plots_each_rates_means(report):
    page, rows, drawn = report
    assert "study_learning_rate.png" in drawn and "study_learning_rate.png" in page.read_text()
    panels = {p["ylabel"]: p for p in drawn["study_learning_rate.png"]}
    name = MODEL.split("/")[-1]
    mean_line = {k: next(ln for ln in p["lines"] if ln[3] == f"{name} (mean)") for k, p in panels.items()}
    onset = mean_line["EM onset step"]
    assert list(onset[0]) == list(LRS) and list(onset[1]) == [ONSET[lr] for lr in LRS]
    excess = mean_line["final − base misaligned rate"]
    want = [np.mean([sum(mis_counts(lr, s, STEPS[-1])) / (NS * NQ) - BASE_RATE for s in SEEDS]) for lr in LRS]
    assert list(excess[1]) == pytest.approx(want)
    kept = mean_line["task kept at the convergence stop"]
    assert list(kept[1]) == pytest.approx([adopted(lr, CONVERGENCE[lr]) / adopted(lr, STEPS[-1]) for lr in LRS])
    # the table under it, one row per rate
    lr_rows = [r for r in rows if len(r) == 6 and r[0] == name]
    assert [float(r[1]) for r in lr_rows] == list(LRS) and all(r[2] == str(len(SEEDS)) for r in lr_rows)


def test_learning_rate_is_a_sweep_axis_with_distinct_cells(tmp_path):
    """`sft.learning_rate` as an axis over a shipped recipe: one cell per rate and seed, distinct ids, each
    cell's recipe carrying its rate (YAML 1.1 reads `1e-5` as a string; both spellings work), which the study
    reads back as the family key."""
    from emsweep.analysis.study import _learning_rate
    from emsweep.launch.sweep import load_sweep

    base = Path(__file__).resolve().parents[2] / "recipes" / "models" / "qwen2.5-7b-instruct-lora.yaml"
    p = tmp_path / "lr.yaml"
    p.write_text(f"name: lr\nbase: {base}\naxes:\n  sft.learning_rate: [1e-5, 4.0e-5]\n  data.seed: [0, 1]\n")
    cells = load_sweep(p).cells
    assert len({c.id for c in cells}) == 4
    assert sorted({float(c.recipe.sft["learning_rate"]) for c in cells}) == [1e-5, 4e-5]
    for c in cells:
        assert float(c.id.rsplit("_lr", 1)[1]) == float(c.recipe.sft["learning_rate"])  # the rate names the cell
        atomic_write_json(tmp_path / c.id / "cell.json", {"cell": c.id, "recipe": {"sft": c.recipe.sft}})
        assert _learning_rate(str(tmp_path / c.id)) == float(c.recipe.sft["learning_rate"])
