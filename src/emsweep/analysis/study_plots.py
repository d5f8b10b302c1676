"""The checkpoint study in the report: per cell family, task measures and misaligned rate against step (log
step axis, interval bands, convergence and onset marked); the early-stopping table (stop decided on training
signals, read on the evaluation); consistency across seeds; the size-correlation scatter. Definitions:
docs/study.md."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emsweep.analysis.study import FAMILY, TASK_SUITE, fmt_step
from emsweep.io import InputError, atomic_path


def _fig_path(out_dir: Path, name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120]
    return out_dir / f"study_{safe}.png"


def family_plot(fam: pd.DataFrame, df: pd.DataFrame, cv: pd.DataFrame, title: str, path: Path, log_x: bool = True) -> Path:
    """One figure per family: adoption (and held-out loss on a second axis) and misaligned rate per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (_, c) in enumerate(fam.iterrows()):
        color = f"C{i % 10}"
        lab = f"seed {c.get('seed')}"
        t = df[(df["cell"] == c["cell"]) & (df["suite"] == TASK_SUITE)].sort_values("step")
        if len(t) and "judge:adopted_mean" in t:
            x = t["step"].clip(lower=0.5)
            y = t["judge:adopted_mean"].astype(float) / 100
            ax1.plot(x, y, "-o", color=color, label=f"{lab} adoption", ms=3)
            lo, hi = t.get("judge:adopted_lo"), t.get("judge:adopted_hi")
            if lo is not None and hi is not None:
                ax1.fill_between(x, lo.astype(float) / 100, hi.astype(float) / 100, color=color, alpha=0.15)
        if not np.isnan(c.get("convergence_step", np.nan)):
            ax1.axvline(max(c["convergence_step"], 0.5), color=color, ls="--", lw=1)
        m = cv[cv["cell"] == c["cell"]].sort_values("step")
        if len(m):
            x = m["step"].clip(lower=0.5)
            ax2.plot(x, m["misaligned_rate"], "-s", color=color, label=f"{lab} misaligned", ms=3)
            ax2.fill_between(x, m["misaligned_rate_lo"], m["misaligned_rate_hi"], color=color, alpha=0.15)
        onset = c.get("onset_step", np.nan)
        if onset is not None and np.isfinite(onset):
            ax2.axvline(max(onset, 0.5), color=color, ls=":", lw=1.5)
    ax1.set_title("task adoption (training side); -- convergence", fontsize=9)
    ax2.set_title("misaligned rate (evaluation); ·· onset", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xlabel("step (step 0 drawn at 0.5)" if log_x else "step")
        if log_x:
            ax.set_xscale("log")
        if ax.get_lines():
            ax.legend(fontsize=7)
        else:  # an empty panel says why instead of showing an empty legend
            ax.text(0.5, 0.5, "no data for these cells\n(task adoption needs data.n_task_heldout > 0)"
                    if ax is ax1 else "no data", ha="center", va="center", fontsize=8, transform=ax.transAxes)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def size_plot(sus: pd.DataFrame, corr: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.8))
    x = sus["params"].astype(float)
    y = sus["susceptibility"].astype(float)
    ax.errorbar(x, y, yerr=[y - sus["susceptibility_lo"], sus["susceptibility_hi"] - y], fmt="o", capsize=3)
    for _, r in sus.iterrows():
        ax.annotate(Path(str(r["model"])).name, (r["params"], r["susceptibility"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("final − base misaligned rate")
    if len(corr):
        c = corr.iloc[0]
        ax.set_title(f"r = {c['r']:.2f} [{c['r_lo']:.2f}, {c['r_hi']:.2f}]", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def _pct(v: Any, lo: Any = None, hi: Any = None) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    s = f"{100 * float(v):.1f} %"
    if lo is not None and hi is not None and not (np.isnan(lo) or np.isnan(hi)):
        s += f" [{100 * float(lo):.1f}, {100 * float(hi):.1f}]"
    return s


def study_section(root: Path, df: pd.DataFrame, cv: pd.DataFrame, out_dir: Path, *, n_boot: int, seed: int) -> str:
    """The report's checkpoint-study section (HTML), with its figures written into `out_dir`."""
    from emsweep.analysis import study as S

    parts = ["<h2>Checkpoint study (“Overtrained, Not Misaligned”)</h2>",
             '<p class="note">Definitions: docs/study.md. Stops are chosen from training-side signals only and then '
             "read on the evaluation suites.</p>"]  # fmt: skip
    cells = S.analyse_cells(S.series_from_results(df, cv), seed=seed, n_boot=n_boot)
    if cells.empty or not ((cells["convergence_status"] == "found") | (cells["onset_status"] != "undetermined")).any():
        parts.append(
            '<p class="note">No cell has the study\'s signals over enough checkpoints: set '
            "<code>data.n_task_heldout</code> (training-side split) and evaluate the <code>task</code> suite, with "
            "at least 3 checkpoints after step 0.</p>"
        )
        return "\n".join(parts)
    rows = []
    for _, c in cells.iterrows():
        rows.append(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                c["cell"], c.get("task_signal") or "–",
                f"{fmt_step(c['convergence_step'])} [{fmt_step(c['convergence_lo'])}, {fmt_step(c['convergence_hi'])}]",
                f"{fmt_step(c['onset_step'])} [{fmt_step(c['onset_lo'])}, {fmt_step(c['onset_hi'])}]",
                fmt_step(c.get("gap", np.nan)),
                fmt_step(c.get("stop_convergence_step", np.nan)),
                _pct(c.get("stop_convergence_task_kept"), c.get("stop_convergence_task_kept_lo"),
                     c.get("stop_convergence_task_kept_hi")),
                _pct(c.get("stop_convergence_misaligned"), c.get("stop_convergence_misaligned_lo"),
                     c.get("stop_convergence_misaligned_hi")),
                _pct(c.get("end_misaligned"), c.get("end_misaligned_lo"), c.get("end_misaligned_hi")),
                _pct(c.get("stop_convergence_em_removed"), c.get("stop_convergence_em_removed_lo"),
                     c.get("stop_convergence_em_removed_hi")),
                c.get("notes") or "",
            )) + "</tr>"
        )  # fmt: skip
    parts.append(
        "<table><tr><th>cell</th><th>task signal</th><th>convergence step</th><th>EM onset step</th><th>gap</th>"
        "<th>stop (convergence)</th><th>task kept</th><th>misaligned at stop</th><th>misaligned at end</th>"
        "<th>EM removed</th><th>notes</th></tr>" + "".join(rows) + "</table>"
    )
    cols = [c for c in FAMILY if c in cells.columns]
    for key, fam in cells.groupby(cols, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        title = " · ".join(f"{k}={Path(str(v)).name if k == 'model' else v}" for k, v in zip(cols, key, strict=True))
        p = family_plot(fam, df, cv, title, _fig_path(out_dir, title))
        parts.append(f'<h3>{html.escape(title)}</h3><img src="{p.name}" alt="{html.escape(title)}">')
    cons = S.consistency(cells)
    parts.append("<h3>Consistent EM across seeds</h3><table><tr>" + "".join(f"<th>{c}</th>" for c in cons.columns)
                 + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                                     for r in cons.itertuples(index=False)) + "</table>")  # fmt: skip
    if cells["model"].nunique() >= 2 and "final_excess" in cells:
        try:
            sus, corr = S.size_correlation(cells, S.model_params(cells), n_boot=n_boot, seed=seed)
        except InputError as exc:
            parts.append(f'<p class="note">Size correlation not computed: {html.escape(str(exc))}</p>')
        else:
            p = size_plot(sus, corr, out_dir / "study_size_correlation.png")
            parts.append(f'<h3>EM susceptibility and model size</h3><img src="{p.name}" alt="size correlation">')
    if "learning_rate" in cells and cells["learning_rate"].nunique() > 1:
        parts.append(_lr_html(cells, out_dir))
    return "\n".join(parts)


# The learning-rate figure's panels: (cells column, its interval columns, y label). Onsets that never happen
# within the run are drawn at the run's last step with an open marker.
LR_PANELS = (
    ("onset_step", ("onset_lo", "onset_hi"), "EM onset step"),
    ("final_excess", ("final_excess_lo", "final_excess_hi"), "final − base misaligned rate"),
    ("stop_convergence_task_kept", ("stop_convergence_task_kept_lo", "stop_convergence_task_kept_hi"),
     "task kept at the convergence stop"),
)  # fmt: skip


def lr_summary(cells: pd.DataFrame) -> pd.DataFrame:
    """Per model x learning rate (over the other family keys and seeds): the mean over cells of each LR panel's
    value; onsets that do not happen count as the run's last step, undetermined ones are left out."""
    d = cells.copy()
    onset = d["onset_step"].astype(float) if "onset_step" in d else pd.Series(np.nan, index=d.index)
    d["onset_step"] = np.where(np.isinf(onset), d.get("final_step", np.nan), onset)
    cols = [c for c, _, _ in LR_PANELS if c in d]
    g = d.groupby(["model", "learning_rate"], dropna=True)
    out = g[cols].mean().reset_index()
    out["n_cells"] = g.size().to_numpy()
    out["n_no_onset"] = g["onset_status"].apply(lambda s: int((s == "none").sum())).to_numpy()
    return out


def lr_plot(cells: pd.DataFrame, path: Path) -> Path:
    """EM onset, final excess misaligned rate and task kept at the convergence stop against the learning rate,
    one line per model (mean over cells), each cell's value with its interval behind it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = lr_summary(cells)
    fig, axes = plt.subplots(1, len(LR_PANELS), figsize=(4.2 * len(LR_PANELS), 3.6))
    for i, (model, g) in enumerate(summary.groupby("model", sort=True)):
        color, name = f"C{i % 10}", Path(str(model)).name
        cm = cells[cells["model"] == model]
        for ax, (col, (lo_c, hi_c), ylabel) in zip(axes, LR_PANELS, strict=True):
            if col not in g:
                continue
            g = g.sort_values("learning_rate")
            ax.plot(g["learning_rate"], g[col], "-o", color=color, label=f"{name} (mean)")
            for _, c in cm.iterrows():
                y = float(c.get(col, np.nan))
                if col == "onset_step" and np.isinf(y):
                    ax.plot([c["learning_rate"]], [c.get("final_step")], "^", mfc="none", color=color, alpha=0.6,
                            label="_no onset by the last step")  # fmt: skip
                    continue
                lo, hi = float(c.get(lo_c, np.nan)), float(c.get(hi_c, np.nan))
                if np.isfinite(y) and np.isfinite(lo) and np.isfinite(hi):
                    ax.errorbar([c["learning_rate"]], [y], yerr=[[y - lo], [max(hi - y, 0)]], fmt=".", color=color,
                                alpha=0.4, capsize=2, label="_cell")  # fmt: skip
            ax.set_ylabel(ylabel, fontsize=8)
    for ax, (col, _, _) in zip(axes, LR_PANELS, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        if col == "onset_step":
            ax.set_yscale("symlog", linthresh=1)
        ax.legend(fontsize=7)
    fig.suptitle("Learning rate (open ▲: no EM onset by the last step)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def _lr_html(cells: pd.DataFrame, out_dir: Path) -> str:
    g = lr_summary(cells)
    p = lr_plot(cells, out_dir / "study_learning_rate.png")
    rows = "".join(
        f"<tr><td>{html.escape(Path(str(r['model'])).name)}</td><td>{r['learning_rate']:g}</td><td>{r['n_cells']}</td>"
        f"<td>{fmt_step(r.get('onset_step', np.nan))} ({r['n_no_onset']} without onset)</td>"
        f"<td>{_pct(r.get('final_excess'))}</td><td>{_pct(r.get('stop_convergence_task_kept'))}</td></tr>"
        for _, r in g.iterrows()
    )
    return (
        '<h3>Learning rate</h3><img src="' + p.name + '" alt="learning rate">'
        "<table><tr><th>model</th><th>learning rate</th><th>cells</th><th>EM onset step (mean; no onset = last "
        "step)</th><th>final − base misaligned (mean)</th><th>task kept at convergence stop (mean)</th></tr>"
        + rows + "</table>"
    )
