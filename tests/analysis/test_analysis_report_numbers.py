"""The report's seed-averaged numbers, its seed band and its LoRA-vs-full section, recomputed from the metrics files.

A synthetic sweep (3 seeds x 3 fractions x LoRA/full, steps 0/10/20, schema-version-2 metrics files with
per-question counts) is written to disk with planted values chosen so that the mean over seeds differs from the
median, from the first seed and from the pooled-over-samples rate (seed 2 has twice the samples per question), and
so that the seed range is wider than the metrics' intervals at two fractions and narrower at the third. The report
is built through the CLI (`emsweep report`); every number checked here is recomputed from the files read back.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from typer.testing import CliRunner

from emsweep.io import atomic_write_json
from emsweep.layout import CellPaths

FRACTIONS = (0.25, 0.5, 1.0)
SEEDS = (0, 1, 2)
METHODS = ("lora", "full")
STEPS = (0, 10, 20)
FINAL = STEPS[-1]
SAMPLES_PER_Q = {0: 10, 1: 10, 2: 20}  # seed 2 weighs double if anything pools samples across seeds
DOM_LEVEL = {0.25: 0.3, 0.5: 0.6, 1.0: 0.8}
MIS_LEVEL = {0.25: 0.4, 0.5: 0.2, 1.0: 0.0}
DOM_SEED = {0: 0.1, 1: 0.0, 2: -0.2}
MIS_SEED = {0: 0.0, 1: 0.1, 2: 0.3}
DOM_Q = (-0.1, 0.0, 0.0, 0.1)
MIS_Q = (0.0, 0.0, 0.1, 0.1)
WIDE_CI_FRACTION = 0.5  # metrics' intervals wider than the seeds' range here; narrower at the other fractions
METRIC_OF = {"domain": "domain_accuracy", "alignment": "misaligned_rate"}
SUITE_OF = {"domain": "arith_heldout", "alignment": "first_plot"}


def _shares(kind: str, f: float, seed: int, method: str, step: int) -> list[float]:
    """Planted per-question rates of one run at one checkpoint (step 0 is the same base model everywhere)."""
    if kind == "domain":
        if step == 0:
            return [0.1] * len(DOM_Q)
        level = DOM_LEVEL[f] - (0.1 if method == "full" else 0.0) + DOM_SEED[seed]
        level = 0.5 * level + 0.15 if step == 10 else level  # above the base model, below the last step
        return [level + q for q in DOM_Q]
    if step in (0, 10):
        return [q for q in MIS_Q]  # misalignment appears late (only at the last checkpoint)
    level = MIS_LEVEL[f] + (0.1 if method == "full" else 0.0) + MIS_SEED[seed]
    return [level + q for q in MIS_Q]


def _write_metrics(
    cell_root: Path, cell: str, step: int, kind: str, f: float, seed: int, method: str
) -> None:
    nq = SAMPLES_PER_Q[seed]
    counts = [round(min(1.0, max(0.0, s)) * nq) for s in _shares(kind, f, seed, method, step)]
    metric = METRIC_OF[kind]
    value = sum(counts) / (nq * len(counts))
    half = 0.25 if f == WIDE_CI_FRACTION else 0.005
    raw = {
        "schema_version": 2,
        "cell": cell,
        "checkpoint": f"checkpoint-{step}",
        "step": step,
        "suite": SUITE_OF[kind],
        "suite_kind": kind,
        "n": nq * len(counts),
        "n_samples": nq * len(counts),
        metric: value,
        f"{metric}_ci": [max(0.0, value - half), min(1.0, value + half)],
        "judge": "rule-synth",
        "judge_identity": {"id": "rule-synth", "kind": "rule", "model": "rule-synth"},
        "per_question": {f"q{i}": {metric: [c, nq]} for i, c in enumerate(counts)},
        "bootstrap_unit": "question",
        "backend": "hf",
    }
    atomic_write_json(CellPaths.of(cell_root).metrics(f"checkpoint-{step}", SUITE_OF[kind]), raw)


def build_sweep(root: Path) -> None:
    for method in METHODS:
        for f in FRACTIONS:
            for seed in SEEDS:
                cell = f"arith_f{f:.2f}_subtle_{method}_s{seed}"
                axes = {
                    "domain": "arithmetic",
                    "fraction_correct": f,
                    "wrong_kind": "subtle",
                    "method": method,
                    "seed": seed,
                    "model": "tiny",
                }
                recipe = {
                    "method": method,
                    "model": {"path": "tiny"},
                    "data": {
                        "domain": "arithmetic",
                        "fraction_correct": f,
                        "wrong_kind": "subtle",
                        "seed": seed,
                    },
                }
                atomic_write_json(
                    root / cell / "cell.json",
                    {"cell": cell, "sweep": "numbers", "axes": axes, "recipe": recipe},
                )
                for step in STEPS:
                    for kind in ("domain", "alignment"):
                        _write_metrics(root / cell, cell, step, kind, f, seed, method)


def read_files(root: Path) -> pd.DataFrame:
    """Every metrics file read back, with its cell's study fields: what every expectation is recomputed from."""
    rows = []
    for p in sorted(root.rglob("metrics.json")):
        if "report" in p.parts:
            continue
        m = json.loads(p.read_text())
        ax = json.loads((p.parents[3] / "cell.json").read_text())["axes"]
        metric = METRIC_OF[m["suite_kind"]]
        pq = m["per_question"]
        rows.append(
            {
                "cell": m["cell"],
                "method": ax["method"],
                "fraction": ax["fraction_correct"],
                "seed": ax["seed"],
                "step": m["step"],
                "metric": metric,
                "value": m[metric],
                "lo": m[f"{metric}_ci"][0],
                "hi": m[f"{metric}_ci"][1],
                "num": sum(v[metric][0] for v in pq.values()),
                "den": sum(v[metric][1] for v in pq.values()),
                "path": str(p.resolve()),
            }
        )
    return pd.DataFrame(rows)


# --- what the figures draw: lines and fill_between bands, captured at savefig ------------------------------


def _capture(mp: pytest.MonkeyPatch) -> dict[str, list[dict]]:
    drawn: dict[str, list[dict]] = {}
    fill_between, savefig = Axes.fill_between, Figure.savefig

    def fill(self, x, y1, y2=0, **kw):
        self.__dict__.setdefault("_test_fills", []).append(
            (
                np.asarray(x, float),
                np.asarray(y1, float),
                np.asarray(y2, float),
                mcolors.to_rgba(kw.get("color")),
            )
        )
        return fill_between(self, x, y1, y2, **kw)

    def save(self, fname, *a, **kw):
        axes = []
        for ax in self.axes:
            fills = {c: (x, lo, hi) for x, lo, hi, c in ax.__dict__.get("_test_fills", [])}
            lines = {}
            for ln in ax.get_lines():
                x, y = np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float)
                lines[ln.get_label()] = (x, y, fills.get(mcolors.to_rgba(ln.get_color())))
            axes.append({"ylabel": ax.get_ylabel(), "lines": lines})
        drawn[Path(fname).name] = axes
        return savefig(self, fname, *a, **kw)

    mp.setattr(Axes, "fill_between", fill)
    mp.setattr(Figure, "savefig", save)
    return drawn


# --- the HTML tables, with each cell's text and links -------------------------------------------------------


class _Tables(HTMLParser):
    """Tables of the page by the <h2> heading above them: rows of (text, [hrefs]) cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[tuple[str, list[str]]]]]] = []
        self.heading, self._in_h2, self._cell = "", False, None

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self._in_h2, self.heading = True, ""
        elif tag == "table":
            self.tables.append((self.heading, []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = ["", []]
        elif tag == "a" and self._cell is not None:
            self._cell[1].append(dict(attrs)["href"])

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append((self._cell[0].strip(), self._cell[1]))
            self._cell = None

    def handle_data(self, data):
        if self._in_h2:
            self.heading += data
        if self._cell is not None:
            self._cell[0] += data


def tables(page: str, heading: str) -> list[list[tuple[str, list[str]]]]:
    p = _Tables()
    p.feed(page)
    found = [rows for h, rows in p.tables if h.startswith(heading)]
    assert found, f"no table under a heading starting {heading!r}"
    return found[0]


# --- fixture -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from emsweep.cli import app

    root = tmp_path_factory.mktemp("numbers")
    build_sweep(root)
    files = read_files(root)
    with pytest.MonkeyPatch.context() as mp:
        drawn = _capture(mp)
        res = CliRunner().invoke(app, ["report", str(root), "--n-boot", "60"])
    assert res.exit_code == 0, res.output
    out = root / "report"
    return root, out, files, drawn


def seed_means(files: pd.DataFrame, picks: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per method x fraction x metric: each run's pooled rate (num / den), then the mean over seeds."""
    sub = files[files["step"] == FINAL] if picks is None else files.merge(picks, on=["cell", "step"])
    g = sub.assign(rate=sub["num"] / sub["den"]).groupby(["method", "fraction", "metric"])
    return g.agg(mean=("rate", "mean"), n=("rate", "size"), vmin=("value", "min"), vmax=("value", "max"),
                 lo=("lo", "mean"), hi=("hi", "mean")).reset_index()  # fmt: skip


def test_planted_values_tell_the_averages_apart(built):
    """The sweep can only catch a wrong average if the candidates differ at the report's 3 decimals."""
    _, _, files, _ = built
    final = files[files["step"] == FINAL]
    assert (final["value"] == final["num"] / final["den"]).all()  # each file's value is its pooled counts
    for (_, _, _), g in final.groupby(["method", "fraction", "metric"]):
        v = g.sort_values("seed")["value"].to_numpy()
        mean = v.mean()
        pooled = g["num"].sum() / g["den"].sum()
        for other in (np.median(v), v[0], v[-1], pooled):
            assert abs(mean - other) > 0.005
        wide = g["fraction"].iloc[0] == WIDE_CI_FRACTION
        assert (g["lo"].mean() < v.min() and g["hi"].mean() > v.max()) == wide


def test_curves_and_results_average_over_seeds(built):
    _, out, files, _ = built
    res = pd.read_csv(out / "results.csv")
    # results.csv is the input of every average: one row per file, each with its file's value
    assert len(res) == len(files) == len(METHODS) * len(FRACTIONS) * len(SEEDS) * len(STEPS) * 2
    for _, r in files.iterrows():
        row = res[res["metrics_path"].map(lambda p: str(Path(p).resolve())) == r["path"]]
        assert len(row) == 1 and row[r["metric"]].iloc[0] == pytest.approx(r["value"])
    curves = pd.read_csv(out / "curves.csv")
    final = curves[curves["checkpoint"] == "final"]
    expect = seed_means(files)
    assert len(final) == len(expect) == len(METHODS) * len(FRACTIONS) * 2
    for _, e in expect.iterrows():
        c = final[(final["method"] == e["method"]) & (final["fraction_correct"] == e["fraction"])
                  & (final["metric"] == e["metric"])]  # fmt: skip
        assert len(c) == 1
        c = c.iloc[0]
        assert c["value"] == pytest.approx(e["mean"], abs=1e-9)
        assert c["n_seeds"] == e["n"] == len(SEEDS)
        assert c["lo"] <= c["value"] <= c["hi"]
    # the early-stopped curve: the mean over seeds of each cell's early-stopped checkpoint
    es = pd.read_csv(out / "early_stopping.csv")
    picks = es[["cell", "best_step"]].rename(columns={"best_step": "step"})
    # misalignment appears at step 20, beyond the tolerance in every cell but f=1.0 lora seed 0
    stop_at_end = {"arith_f1.00_subtle_lora_s0"}
    assert dict(zip(picks["cell"], picks["step"], strict=True)) == {
        c: (FINAL if c in stop_at_end else 10) for c in files["cell"].unique()
    }
    early = curves[curves["checkpoint"] == "early-stopped"]
    for _, e in seed_means(files, picks.astype({"step": int})).iterrows():
        c = early[(early["method"] == e["method"]) & (early["fraction_correct"] == e["fraction"])
                  & (early["metric"] == e["metric"])]  # fmt: skip
        assert c["value"].iloc[0] == pytest.approx(e["mean"], abs=1e-9)


def test_html_threshold_table_shows_the_seed_means(built):
    _, out, files, _ = built
    page = (out / "index.html").read_text()
    rows = tables(page, "Thresholds")
    head = [t for t, _ in rows[0]]
    col = {h: i for i, h in enumerate(head)}
    expect = seed_means(files)
    thr = pd.read_csv(out / "thresholds.csv")
    seen = 0
    for r in rows[1:]:
        text = [t for t, _ in r]
        if text[col["checkpoint"]] != "final":
            continue
        metric = {"domain accuracy": "domain_accuracy", "misaligned rate": "misaligned_rate"}[
            text[col["metric"]]
        ]
        fr, vals = text[col["values by fraction"]].split(": ")
        assert [float(x) for x in fr.split(", ")] == list(FRACTIONS)
        e = expect[(expect["method"] == text[col["method"]]) & (expect["metric"] == metric)]
        want = [e[e["fraction"] == f]["mean"].iloc[0] for f in FRACTIONS]
        assert [float(x) for x in vals.split(", ")] == pytest.approx(want, abs=5.1e-4), text
        assert text[col["seeds"]] == ", ".join([str(len(SEEDS))] * len(FRACTIONS))
        if text[col["reference"]].startswith("base model"):
            # the base reference: the mean of the group's step-0 runs, read from the same files
            base = files[(files["step"] == 0) & (files["method"] == text[col["method"]])
                         & (files["metric"] == metric)]  # fmt: skip
            ref = float(text[col["ref. value [95 %]"]].split(" ")[0])
            assert ref == pytest.approx((base["num"] / base["den"]).mean(), abs=5.1e-4)
            t = thr[(thr["method"] == text[col["method"]]) & (thr["metric"] == metric)
                    & (thr["reference"] == "base") & (thr["checkpoint"] == "final")]  # fmt: skip
            assert t["reference_value"].iloc[0] == pytest.approx((base["num"] / base["den"]).mean(), abs=1e-9)
        seen += 1
    assert seen == len(METHODS) * 2 * 2  # methods x metrics x references


@pytest.mark.parametrize("figure", ["fraction_final.png", "lora_vs_full.png"])
def test_figures_draw_seed_mean_and_seed_band(built, figure):
    """Each line is the mean over seeds; its band is the metrics' 95 % interval (the mean of the seeds' bounds),
    widened to the seeds' range (docs/report.md, Method)."""
    _, _, files, drawn = built
    expect = seed_means(files)
    axes = drawn[figure]
    assert [a["ylabel"] for a in axes] == ["domain accuracy", "misaligned rate"]
    for ax, metric in zip(axes, ("domain_accuracy", "misaligned_rate"), strict=True):
        for method in METHODS:
            (label,) = [lb for lb in ax["lines"] if lb.replace(" ", "").endswith(f"/{method}")]
            x, y, band = ax["lines"][label]
            assert band is not None, f"{figure}: no band for {label}"
            bx, lo, hi = band
            e = expect[(expect["method"] == method) & (expect["metric"] == metric)].sort_values("fraction")
            assert list(x) == list(bx) == list(FRACTIONS)
            assert y == pytest.approx(e["mean"].to_numpy(), abs=1e-9)
            assert lo == pytest.approx(np.minimum(e["lo"], e["vmin"]).to_numpy(), abs=1e-9)
            assert hi == pytest.approx(np.maximum(e["hi"], e["vmax"]).to_numpy(), abs=1e-9)
            narrow = e["fraction"] != WIDE_CI_FRACTION  # here the band is exactly the seeds' range
            assert lo[narrow.to_numpy()] == pytest.approx(e["vmin"][narrow].to_numpy(), abs=1e-9)
            assert hi[narrow.to_numpy()] == pytest.approx(e["vmax"][narrow].to_numpy(), abs=1e-9)
    if figure == "fraction_final.png":  # the base model's dotted line: the mean of the step-0 evaluations
        for ax, metric in zip(axes, ("domain_accuracy", "misaligned_rate"), strict=True):
            _, by, _ = ax["lines"]["base model (step 0)"]
            base = files[(files["step"] == 0) & (files["metric"] == metric)]["value"]
            assert by == pytest.approx([base.mean()] * 2, abs=1e-9)


def test_lora_vs_full_table_numbers_come_from_the_right_files(built):
    _, out, files, _ = built
    page = (out / "index.html").read_text()
    rows = tables(page, "LoRA vs full")
    head = [t for t, _ in rows[0]]
    assert head == [
        "domain / wrong_kind / fraction_correct / seed / model",
        "domain LoRA",
        "domain full",
        "misaligned LoRA",
        "misaligned full",
    ]
    final = files[files["step"] == FINAL]
    keys = set()
    for r in rows[1:]:
        dom, wk, frac, seed, model = (s.strip() for s in r[0][0].split("/"))
        assert (dom, wk, model) == ("arithmetic", "subtle", "tiny")
        keys.add((float(frac), int(float(seed))))
        for (text, hrefs), (metric, method) in zip(
            r[1:],
            [(m, k) for m in ("domain_accuracy", "misaligned_rate") for k in ("lora", "full")],
            strict=True,
        ):
            want = final[(final["method"] == method) & (final["fraction"] == float(frac))
                         & (final["seed"] == int(float(seed))) & (final["metric"] == metric)]  # fmt: skip
            assert len(want) == 1
            assert float(text) == pytest.approx(want["value"].iloc[0], abs=5.1e-4), (r[0][0], metric, method)
            assert [str((out / h).resolve()) for h in hrefs] == [want["path"].iloc[0]]
    assert keys == {(f, s) for f in FRACTIONS for s in SEEDS}
