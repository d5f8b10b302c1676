"""matplotlib figures for the report (Agg backend; PNG files next to index.html)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

LABELS = {"domain_accuracy": "domain accuracy", "misaligned_rate": "misaligned rate"}
METRICS = ["domain_accuracy", "misaligned_rate"]

# Every series gets its own colour, marker AND line style, so lines that overlap (a LoRA and a full fine-tune
# with the same values) stay visible and tell apart in grey print too.
COLORS = plt.get_cmap("tab10").colors
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


def series_style(i: int) -> dict[str, object]:
    """The i-th series' style; markers and line styles cycle at co-prime periods to stay distinct longer."""
    return {
        "color": COLORS[i % len(COLORS)],
        "marker": MARKERS[i % len(MARKERS)],
        "linestyle": LINESTYLES[i % len(LINESTYLES)],
        "markersize": 7 - (i % 3),
        "markerfacecolor": "none" if i % 2 else COLORS[i % len(COLORS)],
    }


def short_name(v: object) -> str:
    """A model path shown by its folder name (`/tmp/x/models/persona-base` -> `persona-base`), other values as is."""
    text = str(v)
    return text.rstrip("/").rsplit("/", 1)[-1] if "/" in text else text


def _agg(g: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per fraction: mean over seeds, and an interval (the cell's 95 % CI for one seed; the mean of the
    seeds' CI bounds widened to cover every seed's value when there are several)."""
    xs, ys, los, his = [], [], [], []
    for f, sub in g.groupby("fraction_correct", sort=True):
        v = sub[metric].astype(float)
        if v.notna().sum() == 0:
            continue
        m = float(v.mean())
        lo = float(np.nanmean(sub[f"{metric}_lo"].astype(float))) if sub[f"{metric}_lo"].notna().any() else m
        hi = float(np.nanmean(sub[f"{metric}_hi"].astype(float))) if sub[f"{metric}_hi"].notna().any() else m
        if len(sub) > 1:
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
        xs.append(float(f))
        ys.append(m)
        los.append(lo)
        his.append(hi)
    return np.array(xs), np.array(ys), np.array(los), np.array(his)


def _line_groups(df: pd.DataFrame) -> list[str]:
    cols = ["domain", "wrong_kind"]
    for c in ("method", "model"):
        if c in df.columns and df[c].nunique(dropna=False) > 1:
            cols.append(c)
    return cols


def fraction_plot(rows: pd.DataFrame, base: pd.DataFrame, title: str, path: Path) -> Path:
    """Metric vs fraction correct, one line per domain x wrong kind (x method/model if they vary), with
    intervals; the base model (step 0) as a dashed reference line."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    cols = _line_groups(rows)
    for ax, metric in zip(axes, METRICS, strict=True):
        for i, (key, g) in enumerate(rows.groupby(cols, dropna=False, sort=True)):
            key = key if isinstance(key, tuple) else (key,)
            x, y, lo, hi = _agg(g, metric)
            if not len(x):
                continue
            label = " / ".join(short_name(k) for k in key)
            line = ax.plot(x, y, label=label, **series_style(i))[0]
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.12)
        bvals = base[metric].dropna() if metric in base else pd.Series(dtype=float)
        if len(bvals):
            ax.axhline(float(bvals.mean()), color="grey", ls=":", lw=1.5, label="base model (step 0)")
        ax.set_xlabel("fraction correct")
        ax.set_ylabel(LABELS[metric])
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def step_plots(cv: pd.DataFrame, es: pd.DataFrame, out_dir: Path) -> list[tuple[str, Path]]:
    """Metric vs training step, one figure per domain x wrong kind x method x model, one line per cell
    (coloured by fraction correct); the early-stopped checkpoint of each cell is circled."""
    figs = []
    gcols = [c for c in ("domain", "wrong_kind", "method", "model") if c in cv.columns]
    best = dict(zip(es["cell"], es["best_step"], strict=True)) if len(es) else {}
    cmap = plt.get_cmap("viridis")
    for i, (key, g) in enumerate(cv.groupby(gcols, dropna=False, sort=True)):
        key = key if isinstance(key, tuple) else (key,)
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for ax, metric in zip(axes, METRICS, strict=True):
            for j, (cell, c) in enumerate(g.groupby("cell", sort=True)):
                c = c.sort_values("step")
                f = float(c["fraction_correct"].iloc[0])
                label = f"f={f:g} s={c['seed'].iloc[0]}"
                style = {**series_style(j), "color": cmap(0.9 * f)}  # colour by fraction (viridis, no yellow)
                ax.plot(c["step"], c[metric], label=label, **style)
                b = best.get(cell)
                if b is not None and not pd.isna(b):
                    sel = c[c["step"] == int(b)]
                    ax.scatter(sel["step"], sel[metric], s=90, facecolors="none", edgecolors="red", zorder=3)
            ax.set_xlabel("training step (0 = base model)")
            ax.set_ylabel(LABELS[metric])
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, loc="best", ncol=2)
        title = " / ".join(short_name(k) for k in key)
        fig.suptitle(f"{title}  (red circle: early-stopped checkpoint)", fontsize=10)
        fig.tight_layout()
        p = out_dir / f"steps_{i:02d}.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        figs.append((title, p))
    return figs


def lora_full_plot(rows: pd.DataFrame, path: Path) -> Path:
    """Final-checkpoint metrics vs fraction correct, LoRA (solid) and full fine-tuning (dashed) side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, METRICS, strict=True):
        for i, ((dom, wk, method), g) in enumerate(
            rows.groupby(["domain", "wrong_kind", "method"], sort=True)
        ):
            x, y, lo, hi = _agg(g, metric)
            if len(x):
                style = {**series_style(i), "linestyle": "--" if method == "full" else "-"}
                line = ax.plot(x, y, label=f"{dom}/{wk}/{method}", **style)[0]
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.12)
        ax.set_xlabel("fraction correct")
        ax.set_ylabel(LABELS[metric])
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("LoRA (solid) vs full fine-tuning (dashed), last checkpoint", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
