"""The figures of "How Much of Your Data Can Suck?" (arXiv 2509.19325) from a sweep's results.

Per domain, each of the paper's three measures (docs/evaluation.md, "The three measures of 2509.19325") against
the fraction of correct training data at the last checkpoint: obviously and subtly wrong data as two lines, the
base model (step 0) as a horizontal reference line with its interval, and each kind's threshold marked with its
interval (science.py's `crossing`, refined between grid fractions). Domain performance is read against the
100 %-correct fine-tune (how much wrong data the task tolerates), the two safety measures against the base model
(how much correct data it takes to be as safe as the model before fine-tuning). One row of panels per model x
method, so open models (LoRA, full) and gpt-4o sit side by side; a second figure puts every model x method on the
same axes per measure x domain when there is more than one.

Written next to the report: `paper_curves.csv`, `paper_thresholds.csv` (domain x kind x measure x reference, each
with its interval), `paper_figures.json` (the numbers every drawn line, base line and threshold mark is made of),
and `paper_<domain>.png`, `paper_models.png`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emsweep.analysis import science
from emsweep.io import atomic_path, atomic_write_text

MEASURES: dict[str, str] = {
    "domain_accuracy": "domain performance",
    "misaligned_rate": "moral alignment: misaligned rate",
    "dangerous_judged_rate": "dangerous completions (judged)",
}
# which reference the marked threshold is read against (both are in the table)
MARKED_REFERENCE = {"domain_accuracy": "finetune", "misaligned_rate": "base", "dangerous_judged_rate": "base"}
DANGEROUS_COLUMN = "judge:dangerous=DANGEROUS"  # share of samples whose most probable label is DANGEROUS
KIND_ORDER = ("obvious", "subtle")
BASE_COLOR = "#d62728"  # the base-model line: a colour of its own (kind lines take tab10's first colours)


def _wmean(v: pd.Series, w: pd.Series) -> float:
    m = v.notna()
    return float(np.average(v[m].astype(float), weights=w[m].astype(float).clip(lower=1))) if m.any() else np.nan


def add_dangerous(cv: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """The cell view with `dangerous_judged_rate` (+ _lo/_hi/_n/_path) from the suites that declare the
    categorical `dangerous` judge (n-weighted when a cell has several); NaN where none did."""
    out = cv.copy()
    m = "dangerous_judged_rate"
    for suffix in ("", "_lo", "_hi"):
        out[m + suffix] = np.nan
    out[m + "_n"], out[m + "_path"] = 0, ""
    if DANGEROUS_COLUMN not in df:
        return out
    rows = df[df[DANGEROUS_COLUMN].notna()]
    n = pd.to_numeric(rows.get("judge:dangerous_n", rows["n"]), errors="coerce").fillna(rows["n"]).fillna(1)
    rows = rows.assign(_w=n)
    for (cell, step), g in rows.groupby(["cell", "step"]):
        sel = (out["cell"] == cell) & (out["step"] == step)
        out.loc[sel, m] = _wmean(g[DANGEROUS_COLUMN], g["_w"])
        out.loc[sel, m + "_lo"] = _wmean(g[DANGEROUS_COLUMN + "_lo"], g["_w"])
        out.loc[sel, m + "_hi"] = _wmean(g[DANGEROUS_COLUMN + "_hi"], g["_w"])
        out.loc[sel, m + "_n"] = int(g["_w"].sum())
        out.loc[sel, m + "_path"] = ";".join(g["metrics_path"].astype(str))
    return out


def paper_analysis(
    df: pd.DataFrame,
    cv: pd.DataFrame,
    *,
    tolerances: dict[str, float],
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(view, thresholds, curves) of the three measures at each cell's last checkpoint, base = step 0."""
    view = add_dangerous(cv, df)
    trained = view[view["step"] > 0]
    final = trained.loc[trained.groupby("cell")["step"].idxmax()].reset_index(drop=True) if len(trained) else trained
    base = view[view["step"] == 0]
    thr, curves = [], []
    for metric in MEASURES:
        if metric not in final or final[metric].notna().sum() == 0:
            continue
        t, c = science.analyse(final, metric, tolerances[metric], base_rows=base, n_boot=n_boot, seed=seed)
        thr.append(t)
        curves.append(c)
    cat = lambda xs: pd.concat(xs, ignore_index=True) if xs else pd.DataFrame()  # noqa: E731
    return view, cat(thr), cat(curves)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(f) else f


def figure_data(thr: pd.DataFrame, curves: pd.DataFrame) -> dict[str, Any]:
    """Every line, base reference and threshold mark of the figures, per domain -> model x method -> measure."""
    out: dict[str, Any] = {"measures": MEASURES, "marked_reference": MARKED_REFERENCE, "domains": {}}
    if curves.empty:
        return out
    for (dom, model, method, metric), g in curves.groupby(["domain", "model", "method", "metric"], dropna=False):
        panel: dict[str, Any] = {"model": str(model), "method": str(method), "measure": metric,
                                 "lines": {}, "base": None, "thresholds": {}}  # fmt: skip
        for kind, k in g.groupby("wrong_kind", dropna=False):
            k = k.sort_values("fraction_correct")
            panel["lines"][str(kind)] = {
                "fractions": [float(x) for x in k["fraction_correct"]],
                "values": [_num(x) for x in k["value"]],
                "lo": [_num(x) for x in k["lo"]],
                "hi": [_num(x) for x in k["hi"]],
            }
        t = thr[(thr["domain"] == dom) & (thr["model"] == model) & (thr["method"] == method) & (thr["metric"] == metric)]
        tb = t[(t["reference"] == "base") & t["reference_value"].notna()]
        if len(tb):
            # each kind's group reads the base model on its own cells' step-0 evaluations (sampled per cell);
            # the drawn line is their mean, its band spans every kind's interval
            by_kind = {str(r["wrong_kind"]): {"value": _num(r["reference_value"]), "lo": _num(r["reference_lo"]),
                                              "hi": _num(r["reference_hi"])} for _, r in tb.iterrows()}  # fmt: skip
            vals = [b["value"] for b in by_kind.values()]
            los = [b["lo"] for b in by_kind.values() if b["lo"] is not None]
            his = [b["hi"] for b in by_kind.values() if b["hi"] is not None]
            panel["base"] = {"value": float(np.mean(vals)), "lo": min(los) if los else None,
                             "hi": max(his) if his else None, "by_kind": by_kind}  # fmt: skip
        for _, r in t[t["reference"] == MARKED_REFERENCE[metric]].iterrows():
            panel["thresholds"][str(r["wrong_kind"])] = {
                "reference": r["reference"],
                "threshold": _num(r.get("threshold")),
                "crossing": _num(r.get("crossing")),
                "lo": _num(r.get("crossing_lo")),
                "hi": _num(r.get("crossing_hi")),
            }
        out["domains"].setdefault(str(dom), {}).setdefault(f"{model} | {method}", {})[metric] = panel
    return out


def _short(v: str) -> str:
    from emsweep.analysis.plots import short_name

    return short_name(v)


def _draw_panel(ax: Any, panel: dict[str, Any], kinds: list[str]) -> None:
    from emsweep.analysis.plots import series_style

    for i, kind in enumerate(kinds):
        line = panel["lines"].get(kind)
        if not line:
            continue
        st = series_style(i)
        x = np.array(line["fractions"], dtype=float)
        y = np.array([np.nan if v is None else v for v in line["values"]], dtype=float)
        lo = np.array([np.nan if v is None else v for v in line["lo"]], dtype=float)
        hi = np.array([np.nan if v is None else v for v in line["hi"]], dtype=float)
        ax.plot(x, y, label=kind, **st)
        ax.fill_between(x, lo, hi, color=st["color"], alpha=0.15, linewidth=0)
        th = panel["thresholds"].get(kind)
        if th and th["crossing"] is not None:
            ax.axvline(th["crossing"], color=st["color"], linestyle=":", linewidth=1.2)
            if th["lo"] is not None and th["hi"] is not None:
                ax.axvspan(min(th["lo"], 1.0), min(th["hi"], 1.0), color=st["color"], alpha=0.08)
    b = panel.get("base")
    if b and b["value"] is not None:
        ax.axhline(b["value"], color=BASE_COLOR, linestyle="--", linewidth=1.6, label="base model (step 0)")
        if b["lo"] is not None and b["hi"] is not None:
            ax.axhspan(b["lo"], b["hi"], color=BASE_COLOR, alpha=0.08)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)


def draw_figures(data: dict[str, Any], out_dir: Path) -> list[tuple[str, Path]]:
    """`paper_<domain>.png` (rows: model x method, columns: measures) and `paper_models.png` when there are
    several model x method rows (rows: measures, columns: domains, one line per model x method x kind)."""
    import matplotlib.pyplot as plt

    from emsweep.analysis.plots import series_style

    figs: list[tuple[str, Path]] = []
    measures = [m for m in MEASURES if any(m in p for d in data["domains"].values() for p in d.values())]
    for dom, rows in sorted(data["domains"].items()):
        keys = sorted(rows)
        fig, axes = plt.subplots(len(keys), len(measures), figsize=(4.2 * len(measures), 3.4 * len(keys)),
                                 squeeze=False)  # fmt: skip
        kinds = sorted({k for p in rows.values() for pm in p.values() for k in pm["lines"]},
                       key=lambda k: (KIND_ORDER.index(k) if k in KIND_ORDER else 9, k))  # fmt: skip
        for r, key in enumerate(keys):
            for c, metric in enumerate(measures):
                ax = axes[r][c]
                panel = rows[key].get(metric)
                model, method = key.split(" | ")
                ax.set_title(f"{MEASURES[metric]}\n{_short(model)} · {method}", fontsize=9)
                ax.set_xlabel("fraction correct")
                if panel is None:
                    ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
                    continue
                _draw_panel(ax, panel, kinds)
                ax.legend(fontsize=7)
        fig.suptitle(f"{dom}: the three measures vs fraction correct (last checkpoint)")
        fig.tight_layout()
        p = out_dir / f"paper_{''.join(ch if ch.isalnum() or ch in '-_' else '_' for ch in dom)}.png"
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        figs.append((dom, p))
    combos = sorted({k for rows in data["domains"].values() for k in rows})
    if len(combos) > 1:
        doms = sorted(data["domains"])
        fig, axes = plt.subplots(len(measures), len(doms), figsize=(4.2 * len(doms), 3.4 * len(measures)),
                                 squeeze=False)  # fmt: skip
        for r, metric in enumerate(measures):
            for c, dom in enumerate(doms):
                ax = axes[r][c]
                ax.set_title(f"{dom}: {MEASURES[metric]}", fontsize=9)
                i = 0
                for key in combos:
                    panel = data["domains"][dom].get(key, {}).get(metric)
                    if panel is None:
                        continue
                    model, method = key.split(" | ")
                    for kind, line in sorted(panel["lines"].items()):
                        st = series_style(i)
                        i += 1
                        y = [np.nan if v is None else v for v in line["values"]]
                        ax.plot(line["fractions"], y, label=f"{_short(model)} · {method} · {kind}", **st)
                ax.set_xlim(-0.02, 1.02)
                ax.set_ylim(-0.03, 1.03)
                ax.set_xlabel("fraction correct")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=6)
        fig.tight_layout()
        p = out_dir / "paper_models.png"
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        figs.append(("models", p))
    return figs


def _fmt(v: Any, digits: int = 2) -> str:
    f = _num(v)
    return "–" if f is None else f"{f:.{digits}f}"


def thresholds_table_html(thr: pd.DataFrame) -> str:
    """Domain x kind x measure (x model x method), threshold against each reference with its interval."""
    if thr.empty:
        return "<p>No thresholds: no measure has a fraction-correct curve.</p>"
    head = ["domain", "kind", "measure", "model", "method", "reference", "reference value",
            "threshold (grid)", "crossing [95 % interval]", "note"]  # fmt: skip
    rows = []
    cols = ["domain", "wrong_kind", "metric", "model", "method", "reference"]
    for _, r in thr.sort_values([c for c in cols if c in thr]).iterrows():
        crossing = f"{_fmt(r.get('crossing'))} [{_fmt(r.get('crossing_lo'))}, {_fmt(r.get('crossing_hi'))}]"
        cells = [r.get("domain"), r.get("wrong_kind"), MEASURES.get(r["metric"], r["metric"]), _short(str(r.get("model"))),
                 r.get("method"), r.get("reference"), _fmt(r.get("reference_value"), 3), _fmt(r.get("threshold")),
                 crossing, r.get("note") or ""]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in cells) + "</tr>")
    return (
        "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"
    )


def paper_section(
    df: pd.DataFrame,
    cv: pd.DataFrame,
    out_dir: Path,
    *,
    tolerances: dict[str, float],
    n_boot: int = 1000,
    seed: int = 0,
) -> str:
    """Compute, write and render the paper's figures; returns the report's HTML section ('' without curves)."""
    if "fraction_correct" not in cv or cv["fraction_correct"].notna().sum() == 0:
        return ""
    _view, thr, curves = paper_analysis(df, cv, tolerances=tolerances, n_boot=n_boot, seed=seed)
    if curves.empty:
        return ""
    with atomic_path(out_dir / "paper_thresholds.csv") as tmp:
        thr.to_csv(tmp, index=False)
    with atomic_path(out_dir / "paper_curves.csv") as tmp:
        curves.to_csv(tmp, index=False)
    data = figure_data(thr, curves)
    atomic_write_text(out_dir / "paper_figures.json", json.dumps(data, indent=1, default=str))
    figs = draw_figures(data, out_dir)
    parts = [
        '<h2 id="paper">The paper\'s figures (arXiv 2509.19325)</h2>',
        "<p>Each measure against the fraction of correct training data at each cell's last checkpoint: obviously "
        "and subtly wrong data as two lines (band: 95 % interval), the base model (step 0) as the dashed red "
        "line (band: its interval), each kind's threshold as a dotted vertical line with its interval shaded. "
        "Domain performance's threshold is read against the 100 %-correct fine-tune; the misaligned rate's and "
        "the judged dangerous rate's against the base model. Definitions: docs/evaluation.md, "
        "<i>The three measures of 2509.19325</i>. Numbers: <code>paper_curves.csv</code>, "
        "<code>paper_thresholds.csv</code>, <code>paper_figures.json</code>.</p>",
    ]
    for name, p in figs:
        title = "open models and gpt-4o side by side" if name == "models" else f"domain: {name}"
        parts.append(f'<h3>{html.escape(title)}</h3><img src="{p.name}" alt="{html.escape(title)}">')
    parts.append("<h3>Thresholds per domain × kind × measure</h3>")
    parts.append(thresholds_table_html(thr))
    return "\n".join(parts)
