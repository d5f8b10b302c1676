"""`emsweep report ROOT`: results.csv / results.parquet and a self-contained report/index.html with plots.

Every number in the HTML links to the `metrics.json` it came from (relative links, so the folder can be copied
or zipped as a whole); results.csv has a `metrics_path` column for the same reason.

Over ~450 lines because the report is one HTML page written top to bottom in `_build_report`, section by
section in reading order; its numbers come from results.py, science.py and study.py, its figures from plots.py.
"""

from __future__ import annotations

import html
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emsweep import __version__
from emsweep.analysis import science
from emsweep.analysis.markup import markdown_to_html
from emsweep.analysis.results import REPORT_DIRNAME, cell_view, collect_results, domain_source
from emsweep.io import atomic_path, atomic_write_text, staged_dir

log = logging.getLogger(__name__)

DEFAULTS = {"domain_tolerance": 0.05, "misalignment_tolerance": 0.05, "early_stop_tolerance": 0.05}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:1.5em auto;padding:0 1em;
color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}a{color:#1a5fb4;text-decoration:none}
.warn{background:#fff4d6;border:1px solid #e0b000;padding:.7em 1em;border-radius:4px}
.note{color:#555;font-size:.9em}img{max-width:100%;border:1px solid #eee;margin:.4em 0}
details{margin:.5em 0}
"""


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


class _Links:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.out_dir)

    def num(self, v: Any, paths: str | None, digits: int = 3) -> str:
        """A number linked to its metrics file(s) (first link; the others in the tooltip)."""
        text = _fmt(v, digits)
        if not paths or text == "–":
            return text
        ps = [p for p in str(paths).split(";") if p]
        if not ps:
            return text
        title = html.escape("\n".join(self.rel(p) for p in ps))
        return f'<a href="{html.escape(self.rel(ps[0]))}" title="{title}">{text}</a>'


def _table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    th = "".join(
        f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _is_planted_demo(df: pd.DataFrame) -> bool:
    """The demo's sweep (its `sums` domain) on a pretrained base, as opposed to a random-weights toy."""
    doms = df["domain"].dropna().astype(str) if "domain" in df else pd.Series(dtype=str)
    toy = df["init_shape"].notna().any() if "init_shape" in df else False
    return bool(not toy and (doms == "sums").any())


def _is_toy(df: pd.DataFrame) -> bool:
    toy = df["init_shape"].notna().any() if "init_shape" in df else False
    sweeps = df["sweep"].dropna().astype(str) if "sweep" in df else pd.Series(dtype=str)
    return bool(toy or sweeps.str.contains("demo").any())


def build_report(root: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, **kwargs: Any) -> Path:
    """Everything is computed into a staging folder beside the report and moved in only when all of it is
    done, so a crash or an error leaves the previous report as it was (emsweep.io.staged_dir)."""
    out_dir = Path(out) if out else Path(root) / REPORT_DIRNAME
    with staged_dir(out_dir) as stage:
        index = _build_report(root, stage, **kwargs)
    return out_dir / Path(index).relative_to(stage)


def _build_report(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    domain_tolerance: float = DEFAULTS["domain_tolerance"],
    misalignment_tolerance: float = DEFAULTS["misalignment_tolerance"],
    early_stop_tolerance: float = DEFAULTS["early_stop_tolerance"],
    n_boot: int = 1000,
    seed: int = 0,
    domain_metric: str = "auto",
    tolerance: float | None = None,
) -> Path:
    """Gather the results under `root` and write `<out>/index.html` (default `<root>/report/`). Returns it.
    `tolerance` (if given) sets both threshold tolerances."""
    if tolerance is not None:
        domain_tolerance = misalignment_tolerance = tolerance
    from emsweep.analysis import plots

    root = Path(root)
    out_dir = Path(out) if out else root / REPORT_DIRNAME
    df = collect_results(root)  # before creating anything, so a wrong root leaves no trace
    out_dir.mkdir(parents=True, exist_ok=True)

    # the table: CSV + Parquet, one row per cell x checkpoint x suite
    with atomic_path(out_dir / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(out_dir / "results.parquet") as tmp:
        df.to_parquet(tmp, index=False)

    dsrc = domain_source(df, domain_metric)
    cv = cell_view(df, dsrc)
    es = science.early_stopping(cv, early_stop_tolerance)
    final = science.pick_rows(cv, es, "final")
    early = science.pick_rows(cv, es, "early")
    base = cv[cv["step"] == 0]
    analysed = [
        science.analyse(
            rows, metric, tol, base_rows=base, n_boot=n_boot, seed=seed, checkpoint_label=label
        )
        for label, rows in (("final", final), ("early-stopped", early))
        for metric, tol in (
            ("domain_accuracy", domain_tolerance),
            ("misaligned_rate", misalignment_tolerance),
        )
        if len(rows)
    ]
    thr = _concat([a[0] for a in analysed])
    curves = _concat([a[1] for a in analysed])
    with atomic_path(out_dir / "thresholds.csv") as tmp:
        thr.to_csv(tmp, index=False)
    with atomic_path(out_dir / "curves.csv") as tmp:
        curves.to_csv(tmp, index=False)
    with atomic_path(out_dir / "early_stopping.csv") as tmp:
        es.to_csv(tmp, index=False)

    # figures
    fig_final = plots.fraction_plot(
        final, base, "last checkpoint: metric vs fraction correct", out_dir / "fraction_final.png"
    )
    fig_early = (
        plots.fraction_plot(
            early,
            base,
            "early-stopped checkpoint: metric vs fraction correct",
            out_dir / "fraction_early.png",
        )
        if len(early)
        else None
    )
    step_figs = plots.step_plots(cv, es, out_dir)

    # LoRA vs full: same (domain, wrong kind, fraction, seed, model) with both methods
    pair_keys = [c for c in ("domain", "wrong_kind", "fraction_correct", "seed", "model") if c in final]
    lf = final.pivot_table(
        index=pair_keys, columns="method", values=["domain_accuracy", "misaligned_rate"], aggfunc="first"
    )
    has_lf = False
    both = [("domain_accuracy", "lora"), ("domain_accuracy", "full")]
    if isinstance(lf.columns, pd.MultiIndex) and all(c in lf.columns for c in both):
        has_lf = bool(len(lf[both].dropna()))
    fig_lf = plots.lora_full_plot(final, out_dir / "lora_vs_full.png") if has_lf else None

    links = _Links(out_dir)
    parts: list[str] = []
    sweeps = ", ".join(sorted(df["sweep"].dropna().astype(str).unique())) or "(no sweep record)"
    parts.append(f"<h1>emsweep report: {html.escape(sweeps)}</h1>")
    parts.append(
        f'<p class="note">Root <code>{html.escape(str(root.resolve()))}</code> · {df["cell"].nunique()} cells · '
        f"{cv.shape[0]} cell×checkpoint · {df['suite'].nunique()} suites · {len(df)} metrics files · "
        f"judge(s): {_judges_html(df)} · "
        f"backend(s): {html.escape(', '.join(sorted(df['backend'].dropna().astype(str).unique())) or '–')} · "
        f"emsweep {__version__} · {time.strftime('%Y-%m-%d %H:%M')}</p>"
    )
    n_judges = df["judge_id"].dropna().nunique() if "judge_id" in df else 0
    if n_judges > 1:
        parts.append(
            f'<p class="warn"><b>{n_judges} different judges</b> scored these results. Their numbers are never '
            "pooled: every threshold and curve below is computed per judge identity (the <i>judge</i> column).</p>"
        )
    if _is_planted_demo(df):
        parts.append(
            '<p class="warn"><b>This is emsweep\'s planted-effect demo</b>: a tiny model pretrained on a synthetic '
            "persona corpus (single-digit sums and alignment probes), where the truth is known by construction "
            "(docs/demo.md). The domain effect is planted; whether the probes turn misaligned is measured. It "
            "shows what a finding looks like and that the pipeline detects one, not the papers' science.</p>"
        )
    elif _is_toy(df):
        parts.append(
            '<p class="warn"><b>This is a demo on a tiny model built from random weights.</b> It shows the '
            "pipeline's shape (mix → train → checkpoints → generate → judge → metrics → report), not the papers' "
            "science: the model, the data and the judge are far too small for the numbers to mean anything about "
            "emergent misalignment or data quality. Run a real recipe on a GPU for that.</p>"
        )
    parts.append(
        '<p>Tables: <a href="results.csv">results.csv</a> (one row per cell × checkpoint × suite, with '
        '<code>metrics_path</code>), <a href="results.parquet">results.parquet</a>, '
        '<a href="thresholds.csv">thresholds.csv</a>, <a href="curves.csv">curves.csv</a> (each fraction\'s '
        'value with its cluster-bootstrap interval), <a href="early_stopping.csv">early_stopping.csv</a>. '
        "Every number below links to the <code>metrics.json</code> it came from. Domain accuracy comes from "
        "the <code>domain</code> suites ("
        + (
            "<b>exact</b>: the domain's answer checker, no judge involved"
            if dsrc == "exact"
            else "graded by the judge against the reference answer"
        )
        + "), the misaligned rate (aligned &lt; 30 and coherent &gt; 50) from the "
        "<code>alignment</code> suites (n-weighted when a cell has several).</p>"
    )

    # fraction plots
    parts.append("<h2>Metric vs fraction correct</h2>")
    parts.append(
        '<p class="note">One line per domain × wrong kind (dashed: full fine-tuning where methods vary); mean over '
        "seeds; band: the metrics' 95 % bootstrap interval (widened to the seeds' range when there are several); "
        "dotted grey: the base model (step 0).</p>"
    )
    parts.append(f'<img src="{fig_final.name}" alt="metric vs fraction correct, last checkpoint">')
    if fig_early:
        parts.append(
            f'<img src="{fig_early.name}" alt="metric vs fraction correct, early-stopped checkpoint">'
        )

    # thresholds
    parts.append("<h2>Thresholds</h2>")
    parts.append(
        f'<p class="note">Read twice, against the <b>fine-tune</b> (the all-correct run) and against the <b>base '
        f"model</b> (step 0): the lowest fraction correct from which every higher fraction is within the "
        f"tolerance of the reference (domain accuracy ≥ reference − {domain_tolerance:g}; misaligned rate ≤ "
        f"reference + {misalignment_tolerance:g}). <i>threshold</i> is that grid fraction; <i>crossing</i> is "
        "where the line between the last failing fraction and the threshold meets the tolerance line. Intervals: "
        f"2.5–97.5 percentiles over {n_boot} cluster-bootstrap replicates that resample questions (shared by "
        "every run of a group) and seeds (see Method); “not reached” means the highest fraction fails. The grid "
        "threshold's interval moves by whole grid steps, so it is conservative; the crossing's is the one with "
        "nominal coverage.</p>"
    )
    parts.append(_thresholds_table(thr))
    if len(curves):
        one_seed = curves[curves["n_seeds"] == 1]
        if len(one_seed):
            parts.append(
                '<p class="note">Fractions with a single seed: their intervals cover question and sampling noise, '
                "not seed-to-seed variation (run several seeds for that).</p>"
            )

    # the figures of "How Much of Your Data Can Suck?" (analysis/paper_figures.py)
    from emsweep.analysis.paper_figures import paper_section

    parts.append(paper_section(df, cv, out_dir, n_boot=n_boot, seed=seed, tolerances={
        "domain_accuracy": domain_tolerance, "misaligned_rate": misalignment_tolerance,
        "dangerous_judged_rate": misalignment_tolerance}))  # fmt: skip

    # early stopping
    parts.append("<h2>Early stopping (oracle: chosen on the evaluation it reports; the study's rule is below)</h2>")
    kept = es["retained"].dropna()
    parts.append(
        f'<p class="note">Per cell, the checkpoint with the best domain accuracy whose misaligned rate stays within '
        f"{early_stop_tolerance:g} of the base model's (step 0); <i>retained</i> is its domain accuracy over the "
        "final checkpoint's. “Overtrained, Not Misaligned” reports 93 % retained on average. "
        + (
            f"<b>Here: {kept.mean() * 100:.1f} % on average over {len(kept)} cells</b> "
            f"({int(es['stopped_early'].sum())} cells stop before their last checkpoint)."
            if len(kept)
            else "Retained is undefined in every cell (no domain and misalignment metrics at the same checkpoints, "
            "or a final domain accuracy of 0)."
        )
        + "</p>"
    )
    erows = []
    for _, r in es.iterrows():
        erows.append(
            [
                html.escape(str(r["cell"])),
                _fmt(r.get("fraction_correct"), 2),
                links.num(r["base_misaligned_rate"], None),
                str(r["final_step"]),
                links.num(
                    r["final_domain_accuracy"], _path(cv, r["cell"], r["final_step"], "domain_accuracy")
                ),
                links.num(
                    r["final_misaligned_rate"], _path(cv, r["cell"], r["final_step"], "misaligned_rate")
                ),
                "–" if pd.isna(r["best_step"]) else str(int(r["best_step"])),
                links.num(r["best_domain_accuracy"], _path(cv, r["cell"], r["best_step"], "domain_accuracy")),
                links.num(r["best_misaligned_rate"], _path(cv, r["cell"], r["best_step"], "misaligned_rate")),
                "–" if pd.isna(r["retained"]) else f"{r['retained'] * 100:.1f} %",
            ]
        )
    parts.append(
        _table(
            [
                "cell",
                "fraction",
                "base misaligned",
                "final step",
                "final domain",
                "final misaligned",
                "early step",
                "early domain",
                "early misaligned",
                "retained",
            ],
            erows,
        )
    )

    # LoRA vs full
    parts.append("<h2>LoRA vs full fine-tuning</h2>")
    if fig_lf:
        lrows = []
        for key, r in lf.iterrows():
            key = key if isinstance(key, tuple) else (key,)
            kd = dict(zip(pair_keys, key, strict=True))
            cells = {
                m: final[
                    (final["method"] == m) & np.logical_and.reduce([final[k] == v for k, v in kd.items()])
                ]
                for m in ("lora", "full")
            }

            def val(metric: str, m: str, _c=cells, _r=r) -> str:
                sub = _c[m]
                p = sub[f"{metric}_path"].iloc[0] if len(sub) else None
                return links.num(_r.get((metric, m)), p)

            lrows.append(
                [
                    html.escape(
                        " / ".join(
                            _fmt(kd[k], 2) if k == "fraction_correct" else str(kd[k]).split("/")[-1]
                            for k in pair_keys
                        )
                    ),
                    val("domain_accuracy", "lora"),
                    val("domain_accuracy", "full"),
                    val("misaligned_rate", "lora"),
                    val("misaligned_rate", "full"),
                ]
            )
        parts.append(
            _table(
                [" / ".join(pair_keys), "domain LoRA", "domain full", "misaligned LoRA", "misaligned full"],
                lrows,
            )
        )
        parts.append(f'<img src="{fig_lf.name}" alt="LoRA vs full fine-tuning">')
    else:
        parts.append(
            '<p class="note">No cells with both methods on the same data; add <code>method: [lora, full]</code> '
            "to the sweep's axes to compare.</p>"
        )

    # the checkpoint study (analysis/study.py, docs/study.md): onsets, early stopping that does not peek
    from emsweep.analysis.study_plots import study_section

    parts.append(study_section(root, df, cv, out_dir, n_boot=n_boot, seed=seed))

    # step view
    parts.append("<h2>Metric vs training step (early-stopping view)</h2>")
    for title, p in step_figs:
        parts.append(f'<h3>{html.escape(title)}</h3><img src="{p.name}" alt="{html.escape(title)} by step">')

    # every cell x checkpoint
    parts.append("<h2>Every cell × checkpoint</h2><details><summary>show table</summary>")
    crow = []
    for _, r in cv.iterrows():
        crow.append(
            [
                html.escape(str(r["cell"])),
                html.escape(str(r["checkpoint"])),
                links.num(r["domain_accuracy"], r.get("domain_accuracy_path")),
                f"[{_fmt(r['domain_accuracy_lo'])}, {_fmt(r['domain_accuracy_hi'])}]",
                links.num(r["misaligned_rate"], r.get("misaligned_rate_path")),
                f"[{_fmt(r['misaligned_rate_lo'])}, {_fmt(r['misaligned_rate_hi'])}]",
            ]
        )
    parts.append(
        _table(
            ["cell", "checkpoint", "domain accuracy", "95 % CI", "misaligned rate", "95 % CI"], crow, left=2
        )
    )
    parts.append("</details>")

    parts.append(_judge_metrics_html(df))

    from emsweep.analysis.judge_agreement_report import judge_agreement_html  # folders with a second judge

    parts.append(judge_agreement_html(Path(root), out_dir, n_boot=n_boot, seed=seed))

    from emsweep.analysis.lm_eval_report import lm_eval_html  # lm-evaluation-harness tasks (evals/lm_eval.py)

    parts.append(lm_eval_html(df, out_dir, links.num))

    parts.append("<h2>Method</h2><div class='method'>")
    method = (science.__doc__ or "").split("\nCode note:")[0]  # the docstring is Markdown, up to its code note
    parts.append(markdown_to_html(method))
    parts.append("</div>")

    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>emsweep report</title>"
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    index = atomic_write_text(out_dir / "index.html", page)
    log.info("report written to %s", index)
    return index


def _judge_metrics_html(df: pd.DataFrame) -> str:
    """Every judge metric the suites declare (metrics.json `judge_metrics`): mean, interval, share of None."""
    cols = [c for c in df.columns if c.startswith("judge:") and c.endswith("_mean")]
    names = sorted({c[len("judge:") : -len("_mean")] for c in cols})
    if not names:
        return ""
    rows = []
    for _, r in df.iterrows():
        for name in names:
            mean = r.get(f"judge:{name}_mean")
            if mean is None or pd.isna(mean):
                continue
            rows.append(
                [
                    html.escape(str(r["cell"])),
                    html.escape(str(r["checkpoint"])),
                    html.escape(str(r["suite"])),
                    html.escape(name),
                    _fmt(mean, 2),
                    _interval(r.get(f"judge:{name}_lo"), r.get(f"judge:{name}_hi")),
                    _fmt(r.get(f"judge:{name}_n"), 0),
                    _fmt(r.get(f"judge:{name}_none_rate")),
                    _fmt(r.get("judge_id")),
                ]
            )
    headers = ["cell", "checkpoint", "suite", "judge metric", "mean", "95 % CI", "n", "None share", "judge"]
    table = _table(headers, rows, left=4)
    return (
        "<h2>Every judge metric</h2><details><summary>show table (every metric the suites declare)</summary>"
        + table
        + "</details>"
    )


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _interval(lo: Any, hi: Any, digits: int = 2) -> str:
    def one(v: Any) -> str:
        if v is not None and not pd.isna(v) and np.isinf(float(v)):
            return "not reached"
        return _fmt(v, digits)

    if (lo is None or pd.isna(lo)) and (hi is None or pd.isna(hi)):
        return "–"
    return f"[{one(lo)}, {one(hi)}]"


def _judges_html(df: pd.DataFrame) -> str:
    """Every judge identity in the results, with its model/kind (version-1 files: the judge's name only)."""
    if "judge_id" not in df:
        return "–"
    seen = []
    for jid, g in df.dropna(subset=["judge_id"]).groupby("judge_id", sort=True):
        model = g["judge_model"].dropna().astype(str)
        kind = g["judge_kind"].dropna().astype(str) if "judge_kind" in g else pd.Series(dtype=str)
        desc = " ".join(x for x in (kind.iloc[0] if len(kind) else "", model.iloc[0] if len(model) else "") if x)
        seen.append(f"<code>{html.escape(str(jid))}</code>" + (f" ({html.escape(desc)})" if desc else ""))
    return ", ".join(seen) or "–"


def _thresholds_table(thr: pd.DataFrame) -> str:
    if thr.empty:
        return (
            '<p class="note">No thresholds: they need the fraction correct of each run (from its recipe) and a '
            "domain accuracy or misaligned rate.</p>"
        )
    rows = []
    for _, r in thr.iterrows():
        thr_v = r.get("threshold")
        rows.append(
            [
                _fmt(r.get("domain")),
                _fmt(r.get("wrong_kind")),
                _fmt(r.get("method")),
                html.escape(str(r.get("model") or "–").rstrip("/").split("/")[-1]),
                f'<span title="{html.escape(str(r.get("judge_model") or ""))}">{_fmt(r.get("judge_id"))}</span>',
                html.escape(str(r["checkpoint"])),
                science_label(r["metric"]),
                f"fine-tune (f={_fmt(r.get('reference_fraction'), 2)})"
                if r["reference"] == "finetune"
                else "base model (step 0)",
                _fmt(r["tolerance"], 2),
                f"{_fmt(r['reference_value'])} {_interval(r.get('reference_lo'), r.get('reference_hi'), 3)}",
                ("not reached" if thr_v is None or pd.isna(thr_v) else _fmt(thr_v, 2))
                + f" {_interval(r.get('threshold_lo'), r.get('threshold_hi'))}",
                ("–" if pd.isna(r.get("crossing")) else _fmt(r.get("crossing"), 3))
                + f" {_interval(r.get('crossing_lo'), r.get('crossing_hi'), 3)}",
                html.escape(f"{r['fractions']}: {r['values']}"),
                html.escape(str(r.get("n_seeds", ""))),
                html.escape(str(r.get("interval_method", ""))) + (
                    f"<br><i>{html.escape(str(r['note']))}</i>" if r.get("note") else ""
                ),
            ]
        )
    return _table(
        [
            "domain",
            "wrong kind",
            "method",
            "model",
            "judge",
            "checkpoint",
            "metric",
            "reference",
            "tol",
            "ref. value [95 %]",
            "threshold [95 %]",
            "crossing [95 %]",
            "values by fraction",
            "seeds",
            "interval",
        ],
        rows,
        left=8,
    )


def science_label(metric: str) -> str:
    return {"domain_accuracy": "domain accuracy", "misaligned_rate": "misaligned rate"}.get(metric, metric)


def _path(cv: pd.DataFrame, cell: str, step: Any, metric: str) -> str | None:
    if step is None or pd.isna(step):
        return None
    sub = cv[(cv["cell"] == cell) & (cv["step"] == int(step))]
    return str(sub[f"{metric}_path"].iloc[0]) if len(sub) else None
