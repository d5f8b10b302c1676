"""The report's lm-evaluation-harness section: per task, its headline metric vs training step (one line per cell)
and vs fraction correct (last checkpoint; dotted: the base model), with a table linking every number to its
metrics.json. Rows come from `results.csv` rows with `suite_kind == "lm_eval"` (evals/lm_eval.py)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emsweep.analysis import plots

SUITE_KIND = "lm_eval"


def lm_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The lm-eval rows of the results table (empty when there are none)."""
    if "suite_kind" not in df or "lm_eval_value" not in df:
        return df.iloc[0:0]
    out = df[(df["suite_kind"] == SUITE_KIND) & df["lm_eval_task"].notna()].copy()
    for c in ("lm_eval_value", "lm_eval_stderr", "step", "fraction_correct"):
        out[c] = pd.to_numeric(out[c], errors="coerce")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80]


def step_plot(rows: pd.DataFrame, task: str, metric: str, path: Path) -> Path:
    """Headline metric vs step, one line per cell, band: +- 1 stderr (the harness's)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (cell, g) in enumerate(rows.groupby("cell", sort=True)):
        g = g.sort_values("step")
        x, y, se = g["step"].to_numpy(float), g["lm_eval_value"].to_numpy(float), g["lm_eval_stderr"]
        ax.plot(x, y, label=plots.short_name(cell), **plots.series_style(i))
        if se.notna().any():
            s = se.fillna(0).to_numpy(float)
            ax.fill_between(x, y - s, y + s, alpha=0.15, color=plots.series_style(i)["color"])
    ax.set_xscale("symlog", linthresh=1)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("training step (0 = base model)")
    ax.set_ylabel(metric)
    ax.set_title(f"{task}: {metric} vs step")
    if rows["cell"].nunique() <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fraction_plot(rows: pd.DataFrame, task: str, metric: str, path: Path) -> Path | None:
    """Headline metric at each cell's last checkpoint vs fraction correct (mean over seeds), one line per
    domain x wrong kind x method; dotted grey: the base model (step 0). None when no cell has a fraction."""
    import matplotlib.pyplot as plt

    if rows["fraction_correct"].notna().sum() == 0:
        return None
    last = rows.loc[rows.groupby("cell")["step"].idxmax()]
    last = last[last["step"] > 0]
    if last.empty:
        return None
    keys = [k for k in ("domain", "wrong_kind", "method") if k in last]
    fig, ax = plt.subplots(figsize=(7, 4))
    groups = last.groupby(keys, dropna=False, sort=True) if keys else [((), last)]
    for i, (key, g) in enumerate(groups):
        by = g.groupby("fraction_correct", sort=True)["lm_eval_value"].mean()
        label = " / ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        ax.plot(by.index.to_numpy(float), by.to_numpy(float), label=label or "cells", **plots.series_style(i))
    base = rows[rows["step"] == 0]["lm_eval_value"].dropna()
    if len(base):
        ax.axhline(float(base.mean()), color="grey", linestyle=":", label="base (step 0)")
    ax.set_xlabel("fraction correct")
    ax.set_ylabel(metric)
    ax.set_title(f"{task}: {metric} at the last checkpoint vs fraction correct")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lm_eval_html(df: pd.DataFrame, out_dir: Path, num: Callable[[Any, Any], str]) -> str:
    """The section (empty string when no lm-eval results exist). `num(value, paths)` links a number."""
    rows = lm_rows(df)
    if rows.empty:
        return ""
    parts = [
        "<h2>lm-evaluation-harness tasks</h2>",
        '<p class="note">Each task\'s headline metric (its first <code>metric_list</code> entry under its first '
        "filter, as lm-evaluation-harness reports it; band: ±1 stderr from the harness) for every checkpoint. "
        "Every metric of every task is in results.csv as <code>lm:&lt;metric,filter&gt;</code>; what each task "
        "answers: docs/lm_eval.md.</p>",
    ]
    for task, g in rows.groupby("lm_eval_task", sort=True):
        metric = str(g["lm_eval_metric"].dropna().iloc[0]) if g["lm_eval_metric"].notna().any() else "value"
        slug = _slug(str(task))
        parts.append(f"<h3>{html.escape(str(task))} <small>({html.escape(metric)})</small></h3>")
        sp = step_plot(g, str(task), metric, out_dir / f"lm_eval_{slug}_steps.png")
        parts.append(f'<img src="{sp.name}" alt="{html.escape(str(task))} vs step">')
        fp = fraction_plot(g, str(task), metric, out_dir / f"lm_eval_{slug}_fraction.png")
        if fp is not None:
            parts.append(f'<img src="{fp.name}" alt="{html.escape(str(task))} vs fraction correct">')
        trows = []
        for cell, c in g.groupby("cell", sort=True):
            c = c.sort_values("step")
            first, last = c.iloc[0], c.iloc[-1]
            frac = c["fraction_correct"].iloc[0]
            trows.append(
                f"<tr><td class='l'>{html.escape(str(cell))}</td>"
                f"<td>{'–' if pd.isna(frac) else f'{frac:.2f}'}</td>"
                f"<td>{int(first['step'])}</td><td>{num(first['lm_eval_value'], first['metrics_path'])}</td>"
                f"<td>{int(last['step'])}</td><td>{num(last['lm_eval_value'], last['metrics_path'])}</td>"
                f"<td>{_delta(first['lm_eval_value'], last['lm_eval_value'])}</td>"
                f"<td>{int(last['n']) if pd.notna(last['n']) else '–'}</td></tr>"
            )
        head = "".join(
            f"<th{' class=l' if i == 0 else ''}>{h}</th>"
            for i, h in enumerate(
                ["cell", "fraction", "first step", "value", "last step", "value", "change", "docs"]
            )
        )
        parts.append(f"<table><tr>{head}</tr>{''.join(trows)}</table>")
    return "".join(parts)


def _delta(a: Any, b: Any) -> str:
    try:
        d = float(b) - float(a)
    except (TypeError, ValueError):
        return "–"
    return "–" if np.isnan(d) else f"{d:+.3f}"
