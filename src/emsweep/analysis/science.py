"""The two answers the study asks for: thresholds over the fraction correct, and early stopping over steps.

**Threshold.** Within a group (domain x wrong kind x method x model), take one value per fraction correct
(mean over seeds) at a chosen checkpoint (the last, or the early-stopped one). The reference is the all-correct
run (fraction 1.0; the highest fraction in the grid if 1.0 is missing, flagged in `reference_fraction`). The
threshold is the lowest fraction f such that *every* fraction from f up is within `tolerance` of the reference:
for domain accuracy `value >= reference - tolerance`, for the misaligned rate `value <= reference + tolerance`
(being better than the reference never counts against a fraction). Requiring every higher fraction to pass makes
the threshold a recovery point, not a lucky dip.

**Bootstrap interval.** A parametric-and-seed bootstrap from the metrics files alone: in each of `n_boot`
replicates, for every fraction the seeds are resampled with replacement and every seed's rate is redrawn as
Binomial(n, rate)/n from its judged-sample count `n` (a mean without a count is redrawn from a normal whose
sd is its 95 % interval width / 3.92); the reference is redrawn the same way, and the threshold recomputed.
The interval is the 2.5th and 97.5th percentiles of the replicate thresholds (fractions form a discrete
grid, so the bounds are grid values). Seeded, so a report is reproducible.

**Early stopping.** Per cell: among its checkpoints (the base model, step 0, included) those whose misaligned
rate is at most the base model's plus `tolerance`; of those, the one with the best domain accuracy (earliest on
ties). `retained` is its domain accuracy over the final checkpoint's: the share of the final task performance
that stopping there keeps ("Overtrained, Not Misaligned" reports 93 % on average).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

GROUP = ["domain", "wrong_kind", "method", "model"]
HIGHER_IS_BETTER = {"domain_accuracy": True, "misaligned_rate": False}


def _group_cols(df: pd.DataFrame) -> list[str]:
    return [c for c in GROUP if c in df.columns]


def threshold_from_values(
    by_fraction: dict[float, float], tolerance: float, higher_is_better: bool
) -> tuple[float | None, float, float]:
    """(threshold, reference fraction, reference value) for one group's fraction -> value map."""
    fracs = sorted(f for f, v in by_fraction.items() if v is not None and not np.isnan(v))
    if not fracs:
        return None, float("nan"), float("nan")
    ref_f = 1.0 if 1.0 in fracs else fracs[-1]
    ref = by_fraction[ref_f]

    def ok(v: float) -> bool:
        return v >= ref - tolerance - 1e-12 if higher_is_better else v <= ref + tolerance + 1e-12

    threshold = None
    for f in reversed(fracs):
        if f > ref_f:
            continue
        if ok(by_fraction[f]):
            threshold = f
        else:
            break
    return threshold, ref_f, ref


def _redraw(rng: np.random.Generator, value: float, n: int, lo: float, hi: float, is_rate: bool) -> float:
    if np.isnan(value):
        return value
    if is_rate and n and n > 0 and 0.0 <= value <= 1.0:
        return rng.binomial(int(n), value) / int(n)
    if not np.isnan(lo) and not np.isnan(hi) and hi > lo:
        return float(rng.normal(value, (hi - lo) / 3.92))
    return value


def thresholds(
    cells: pd.DataFrame,
    metric: str,
    tolerance: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    checkpoint_label: str = "final",
) -> pd.DataFrame:
    """One row per group: threshold fraction with a bootstrap interval. `cells` has one row per cell (the chosen
    checkpoint), with fraction_correct, seed, `metric`, `<metric>_n`, `<metric>_lo/_hi`, `<metric>_path`."""
    higher = HIGHER_IS_BETTER.get(metric, True)
    gcols = _group_cols(cells)
    rng = np.random.default_rng(seed)
    out = []
    data = cells[cells[metric].notna()] if metric in cells.columns else cells.iloc[0:0]
    for key, g in data.groupby(gcols, dropna=False, sort=True) if gcols else [((), data)]:
        key = key if isinstance(key, tuple) else (key,)
        per_f: dict[float, list[tuple[float, int, float, float]]] = {}
        for _, r in g.iterrows():
            per_f.setdefault(float(r["fraction_correct"]), []).append(
                (
                    float(r[metric]),
                    int(r.get(f"{metric}_n", 0) or 0),
                    float(r.get(f"{metric}_lo", np.nan)),
                    float(r.get(f"{metric}_hi", np.nan)),
                )
            )
        point = {f: float(np.mean([v[0] for v in vs])) for f, vs in per_f.items()}
        thr, ref_f, ref = threshold_from_values(point, tolerance, higher)
        boots = []
        for _ in range(n_boot if len(point) > 1 else 0):
            sample = {}
            for f, vs in per_f.items():
                picks = rng.integers(0, len(vs), size=len(vs))
                sample[f] = float(
                    np.mean(
                        [
                            _redraw(
                                rng, *vs[i], is_rate=metric.endswith("_rate") or metric == "domain_accuracy"
                            )
                            for i in picks
                        ]
                    )
                )
            t, _, _ = threshold_from_values(sample, tolerance, higher)
            boots.append(np.nan if t is None else t)
        arr = np.array(boots, dtype=float)
        arr = arr[~np.isnan(arr)]
        lo = float(np.percentile(arr, 2.5, method="lower")) if arr.size else float("nan")
        hi = float(np.percentile(arr, 97.5, method="higher")) if arr.size else float("nan")
        row: dict[str, Any] = dict(zip(gcols, key, strict=True))
        row.update(
            {
                "metric": metric,
                "checkpoint": checkpoint_label,
                "tolerance": tolerance,
                "reference_fraction": ref_f,
                "reference_value": ref,
                "threshold": thr,
                "ci_lo": lo,
                "ci_hi": hi,
                "n_boot": len(boots),
                "fractions": ", ".join(f"{f:g}" for f in sorted(point)),
                "values": ", ".join(f"{point[f]:.3f}" for f in sorted(point)),
                "metrics_paths": ";".join(
                    p for p in g.get(f"{metric}_path", pd.Series(dtype=str)).astype(str) if p
                ),
            }
        )
        out.append(row)
    return pd.DataFrame(out)


def base_reference(cv: pd.DataFrame) -> pd.DataFrame:
    """Step-0 (base model) rows; a cell without its own step 0 borrows the mean of its model's."""
    return cv[cv["step"] == 0]


def early_stopping(cv: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """Per cell: the best-domain checkpoint whose misaligned rate is within `tolerance` of the base model's."""
    base = base_reference(cv)
    by_model = base.groupby("model", dropna=False)["misaligned_rate"].mean() if "model" in base else {}
    out = []
    for cell, g in cv.groupby("cell", sort=True):
        g = g.sort_values("step")
        final = g.iloc[-1]
        b = g[g["step"] == 0]
        if not b.empty and not np.isnan(b["misaligned_rate"].iloc[0]):
            base_mis = float(b["misaligned_rate"].iloc[0])
            base_src = "own step 0"
        else:
            model = g["model"].iloc[0] if "model" in g else None
            base_mis = float(by_model.get(model, np.nan)) if len(by_model) else np.nan
            base_src = "model's step 0 (mean over cells)"
        row: dict[str, Any] = {c: g[c].iloc[0] for c in g.columns if c not in _PER_CKPT}
        row.update(
            {
                "cell": cell,
                "base_misaligned_rate": base_mis,
                "base_source": base_src,
                "tolerance": tolerance,
                "final_step": int(final["step"]),
                "final_domain_accuracy": float(final["domain_accuracy"]),
                "final_misaligned_rate": float(final["misaligned_rate"]),
            }
        )
        if np.isnan(base_mis):
            eligible = g.iloc[0:0]
        else:
            eligible = g[g["misaligned_rate"] <= base_mis + tolerance + 1e-12]
        eligible = eligible[eligible["domain_accuracy"].notna()]
        if eligible.empty:
            row.update(best_step=None, best_checkpoint=None, best_domain_accuracy=np.nan)
            row.update(best_misaligned_rate=np.nan, retained=np.nan, stopped_early=False, best_path="")
        else:
            best = eligible.sort_values(["domain_accuracy", "step"], ascending=[False, True]).iloc[0]
            fd = float(final["domain_accuracy"])
            row.update(
                best_step=int(best["step"]),
                best_checkpoint=best["checkpoint"],
                best_domain_accuracy=float(best["domain_accuracy"]),
                best_misaligned_rate=float(best["misaligned_rate"]),
                retained=float(best["domain_accuracy"]) / fd if fd > 0 else np.nan,
                stopped_early=int(best["step"]) < int(final["step"]),
                best_path=str(best.get("domain_accuracy_path", "")),
            )
        out.append(row)
    return pd.DataFrame(out)


_PER_CKPT = {
    "step",
    "checkpoint",
    "domain_accuracy",
    "domain_accuracy_lo",
    "domain_accuracy_hi",
    "domain_accuracy_n",
    "domain_accuracy_path",
    "misaligned_rate",
    "misaligned_rate_lo",
    "misaligned_rate_hi",
    "misaligned_rate_n",
    "misaligned_rate_path",
}


def pick_rows(cv: pd.DataFrame, es: pd.DataFrame, which: str) -> pd.DataFrame:
    """One row per cell: its final checkpoint (`which="final"`) or its early-stopped one (`"early"`)."""
    if which == "final":
        idx = cv.groupby("cell")["step"].idxmax()
        return cv.loc[idx].reset_index(drop=True)
    chosen = es.dropna(subset=["best_step"])[["cell", "best_step"]].rename(columns={"best_step": "step"})
    chosen["step"] = chosen["step"].astype(int)
    return cv.merge(chosen, on=["cell", "step"], how="inner")
