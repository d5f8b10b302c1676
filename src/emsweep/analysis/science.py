"""The two answers the study asks for: thresholds over the fraction correct, and early stopping over steps.

**Curve.** Within a group (domain x wrong kind x method x model x judge identity: results of different judges
never pool), one value per fraction correct at a chosen checkpoint (the last, or the early-stopped one): each
run's rate pooled over its questions (sum over questions / judged samples), then the mean over seeds.

**Threshold**, read against two references, each with its own interval:
- *fine-tune*: the all-correct run (fraction 1.0; the highest fraction in the grid if 1.0 is missing, flagged
  in `reference_fraction`); fractions above the reference are not read.
- *base*: the base model, i.e. the step-0 evaluations of the group's runs (pooled per question; if the group has
  none, those of the same model, domain and judge).
A fraction *passes* when its value is within `tolerance` of the reference: domain accuracy
`value >= reference - tolerance`, misaligned rate `value <= reference + tolerance` (being better than the
reference never fails). `threshold` is the lowest grid fraction from which *every* higher fraction passes (a
recovery point, not a lucky dip); "not reached" when the highest fraction fails. `crossing` refines it between
grid points: where the straight line between the last failing fraction and `threshold` meets the tolerance line
(`threshold` itself when the lowest fraction already passes). The crossing is a continuous function of the
rates, so its interval has honest coverage; the grid threshold's interval is conservative (it can only move
by whole grid steps).

**Intervals: cluster bootstrap over questions and seeds.** Samples cluster by question (24 questions x 100
samples are not 2400 independent draws), so each of `n_boot` replicates draws the questions with replacement
(one draw shared by every run and the base model of the group: they answer the same questions), recomputes
every run's rate from the metrics files' per-question counts (`per_question`: [sum, n] per question), then
draws each fraction's seeds with replacement and averages them; the references and thresholds are recomputed
from the same replicate. Intervals are the 2.5th and 97.5th percentiles of the replicates (a threshold that is
not reached in a replicate counts as above every fraction). Fallbacks, named per row in `interval_method`:
metrics files without `per_question` (schema version 1) use `extra.misaligned_rate_by_question` with equal
samples per question assumed; a run with no per-question data at all is redrawn from a normal whose sd is its
metrics file's 95 % interval width / 3.92 (or held fixed, "point only", without one). Seeded, so a report is
reproducible. A coverage test (tests/analysis/test_analysis_coverage.py) simulates runs with known rates and
question and seed effects and checks that the 95 % intervals cover the truth in 90-99 % of simulations.

**Early stopping.** Per cell: among its checkpoints (the base model, step 0, included) those whose misaligned
rate is at most the base model's plus `tolerance`; of those, the one with the best domain accuracy (earliest on
ties). `retained` is its domain accuracy over the final checkpoint's: the share of the final task performance
that stopping there keeps ("Overtrained, Not Misaligned" reports 93 % on average).

Code note: over ~450 lines because every statistic this Method text defines (thresholds, the cluster
bootstrap, early stopping) shares the `Runs` arrays and the replicate draws; the report shows this docstring up
to this note.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

GROUP = ["domain", "wrong_kind", "method", "model", "judge_id"]
HIGHER_IS_BETTER = {"domain_accuracy": True, "misaligned_rate": False, "dangerous_judged_rate": False}
# the per-question stat (metrics.json `per_question`) behind a cell-view metric whose name differs from it
STAT_OF = {"dangerous_judged_rate": "label:dangerous:DANGEROUS"}
NOT_REACHED = 2.0  # stands for "above every fraction" in replicate arrays (fractions live in [0, 1])


def _group_cols(df: pd.DataFrame) -> list[str]:
    return [c for c in GROUP if c in df.columns]


# --- thresholds ------------------------------------------------------------------------------------------


def crossing_points(
    values: np.ndarray, reference: np.ndarray, fracs: np.ndarray, tolerance: float, higher_is_better: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised over replicates: `values` (B, K) at sorted `fracs` (K,), `reference` (B,). Returns the grid
    threshold and the interpolated crossing, (B,) each, NaN where the highest fraction fails."""
    values = np.asarray(values, dtype=float)
    b, k = values.shape
    if k == 0:
        return np.full(b, np.nan), np.full(b, np.nan)
    line = reference - tolerance if higher_is_better else reference + tolerance
    with np.errstate(invalid="ignore"):
        ok = values >= line[:, None] - 1e-12 if higher_is_better else values <= line[:, None] + 1e-12
    ok &= ~np.isnan(values)
    suffix = np.flip(
        np.logical_and.accumulate(np.flip(ok, axis=1), axis=1), axis=1
    )  # every fraction from k up
    reached = suffix[:, -1]
    first = np.argmax(suffix, axis=1)
    grid = np.where(reached, fracs[first], np.nan)
    prev = np.clip(first - 1, 0, None)
    rows = np.arange(b)
    v0, v1 = values[rows, prev], values[rows, first]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.clip((line - v0) / (v1 - v0), 0.0, 1.0)
    t = np.where(np.isfinite(t), t, 1.0)
    cross = fracs[prev] + (fracs[first] - fracs[prev]) * t
    cross = np.where(first == 0, fracs[0], cross)
    return grid, np.where(reached, cross, np.nan)


# --- cluster bootstrap ------------------------------------------------------------------------------------


@dataclass
class Runs:
    """The runs of one group at one checkpoint, as arrays over a shared question index.

    `sums`/`ns` (C, Q): per-question numerator sums and denominators (0 where a run lacks the question);
    `has_q` (C,): whether the run has per-question data; `value`/`sd` (C,): its point value and, for runs
    without per-question data, the sd of the normal fallback (0: held fixed)."""

    fraction: np.ndarray
    sums: np.ndarray
    ns: np.ndarray
    has_q: np.ndarray
    value: np.ndarray
    sd: np.ndarray
    methods: set[str] = field(default_factory=set)


def question_weights(rng: np.random.Generator, n_boot: int, n_questions: int) -> np.ndarray:
    """(B, Q) multiplicities of each question in `n_boot` draws of Q questions with replacement."""
    if n_questions == 0:
        return np.zeros((n_boot, 0))
    return rng.multinomial(n_questions, np.full(n_questions, 1.0 / n_questions), size=n_boot).astype(float)


def run_replicates(runs: Runs, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(B, C) each run's rate in each replicate: per-question counts reweighted by the question draw, or the
    normal fallback for runs without per-question data."""
    b = weights.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (
            (weights @ runs.sums.T) / (weights @ runs.ns.T)
            if runs.sums.shape[1]
            else np.full((b, len(runs.value)), np.nan)
        )
    for c in np.flatnonzero(~runs.has_q):
        r[:, c] = runs.value[c] + runs.sd[c] * rng.standard_normal(b)
    return r


def run_points(runs: Runs) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = runs.sums.sum(axis=1) / runs.ns.sum(axis=1) if runs.sums.shape[1] else runs.value
    return np.where(runs.has_q, pooled, runs.value)


def curve_replicates(
    fraction: np.ndarray, reps: np.ndarray, points: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Seeds resampled within each fraction and averaged: (fractions (K,), point (K,), replicates (B, K),
    seeds per fraction). The seed-level deviation (resampled mean minus the replicate's mean over all seeds) is
    scaled by sqrt(S / (S - 1)): the plain bootstrap of S clusters has S-1/S of the variance it should."""
    fr = np.array(sorted(set(fraction.tolist())))
    b = reps.shape[0]
    out = np.empty((b, len(fr)))
    point = np.empty(len(fr))
    n_seeds = []
    for k, f in enumerate(fr):
        idx = np.flatnonzero(fraction == f)
        n_seeds.append(len(idx))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            point[k] = float(np.nanmean(points[idx]))
            if len(idx) == 1:
                out[:, k] = reps[:, idx[0]]
                continue
            picks = idx[rng.integers(0, len(idx), (b, len(idx)))]
            every = np.nanmean(reps[:, idx], axis=1)
            drawn = np.nanmean(np.take_along_axis(reps, picks, axis=1), axis=1)
        out[:, k] = every + np.sqrt(len(idx) / (len(idx) - 1)) * (drawn - every)
    return fr, point, out, n_seeds


def _rescale(reps: np.ndarray, points: np.ndarray, runs: Runs) -> np.ndarray:
    """Question-level deviations scaled by sqrt(Q / (Q - 1)) (the small-cluster correction of the bootstrap
    variance), for runs whose replicates come from the question draw.

    A scaled replicate is kept inside the range of the run's per-question values, where every reweighting of the
    questions lies: a rate stays in [0, 1] and a 0-100 score in [0, 100] (unscaled, 0.999 could become 1.001)."""
    q = runs.sums.shape[1]
    if q < 2:
        return reps
    scaled = points + np.sqrt(q / (q - 1)) * (reps - points)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_question = np.where(runs.ns > 0, runs.sums / np.where(runs.ns > 0, runs.ns, 1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a run without per-question data: all NaN, unused
        lo, hi = np.nanmin(per_question, axis=1), np.nanmax(per_question, axis=1)
    scaled = np.clip(scaled, lo[None, :], hi[None, :])
    return np.where(runs.has_q[None, :], scaled, reps)


def percentile_interval(reps: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0, ignoring NaN replicates."""
    a = (1 - confidence) / 2
    if not reps.shape[0]:
        return np.full(reps.shape[1:], np.nan), np.full(reps.shape[1:], np.nan)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column (no value) is NaN, said as missing
        lo, hi = np.nanquantile(reps, [a, 1 - a], axis=0)
    return lo, hi


def threshold_interval(reps: np.ndarray, confidence: float = 0.95, grid: bool = False) -> tuple[float, float]:
    """Interval of replicate thresholds; "not reached" (NaN) counts as above every fraction and comes back as
    +inf. Grid thresholds take the nearest replicate values (they are grid points)."""
    if reps.size == 0:
        return float("nan"), float("nan")
    x = np.where(np.isnan(reps), NOT_REACHED, reps)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(x, [a, 1 - a], method="inverted_cdf") if grid else np.quantile(x, [a, 1 - a])
    return tuple(float(v) if v <= 1.0 + 1e-12 else float("inf") for v in (lo, hi))  # type: ignore[return-value]


@dataclass
class GroupResult:
    """A group's curve and thresholds at one checkpoint (point values and percentile intervals)."""

    fractions: np.ndarray
    point: np.ndarray
    reps: np.ndarray
    n_seeds: list[int]
    base_point: float
    base_reps: np.ndarray | None
    n_questions: int


def analyse_runs(runs: Runs, base: Runs | None, *, n_boot: int, rng: np.random.Generator) -> GroupResult:
    """Curve and base replicates of one group (the base's questions share the runs' question draw)."""
    weights = question_weights(rng, n_boot, runs.sums.shape[1])
    points = run_points(runs)
    reps = _rescale(run_replicates(runs, weights, rng), points, runs)
    fr, point, curve, n_seeds = curve_replicates(runs.fraction, reps, points, rng)
    base_point, base_reps = float("nan"), None
    if base is not None and len(base.value):
        b_reps = _rescale(run_replicates(base, weights, rng), run_points(base), base)
        base_reps = np.nanmean(b_reps, axis=1) if b_reps.shape[1] > 1 else b_reps[:, 0]
        base_point = float(np.nanmean(run_points(base)))
    return GroupResult(fr, point, curve, n_seeds, base_point, base_reps, runs.sums.shape[1])


def threshold_rows(
    res: GroupResult, tolerance: float, higher: bool, confidence: float = 0.95
) -> list[dict[str, Any]]:
    """The threshold against the fine-tune and against the base model, each with its intervals."""
    out = []
    fr = res.fractions
    for reference in ("finetune", "base"):
        row: dict[str, Any] = {"reference": reference, "tolerance": tolerance, "note": ""}
        if reference == "finetune":
            if len(fr) < 2:
                row["note"] = "one fraction correct only: no threshold against the fine-tune"
                ref_k = len(fr) - 1
            else:
                ref_k = int(np.flatnonzero(fr == 1.0)[0]) if 1.0 in fr else len(fr) - 1
                if fr[ref_k] != 1.0:
                    row["note"] = f"no 1.0 fraction: the reference is the highest, {fr[ref_k]:g}"
            keep = slice(0, ref_k + 1)
            ref_point = float(res.point[ref_k]) if len(fr) else float("nan")
            ref_reps = res.reps[:, ref_k] if len(fr) else np.full(res.reps.shape[0], np.nan)
            row["reference_fraction"] = float(fr[ref_k]) if len(fr) else float("nan")
            usable = len(fr) >= 2
        else:
            keep = slice(0, len(fr))
            ref_point = res.base_point
            ref_reps = res.base_reps if res.base_reps is not None else np.full(res.reps.shape[0], np.nan)
            row["reference_fraction"] = float("nan")
            usable = res.base_reps is not None and not np.isnan(ref_point)
            if not usable:
                row["note"] = "no base-model (step 0) evaluation for this group"
        row["reference_value"] = ref_point
        lo, hi = percentile_interval(ref_reps[:, None], confidence) if ref_reps.size else (np.nan, np.nan)
        row["reference_lo"], row["reference_hi"] = float(np.ravel(lo)[0]), float(np.ravel(hi)[0])
        row["boundary"] = ref_point - tolerance if higher else ref_point + tolerance
        fk = fr[keep]
        if usable and len(fk):
            g, c = crossing_points(res.point[None, keep], np.array([ref_point]), fk, tolerance, higher)
            row["threshold"], row["crossing"] = float(g[0]), float(c[0])
            if res.reps.shape[0]:
                gr, cr = crossing_points(res.reps[:, keep], ref_reps, fk, tolerance, higher)
                row["threshold_lo"], row["threshold_hi"] = threshold_interval(gr, confidence, grid=True)
                row["crossing_lo"], row["crossing_hi"] = threshold_interval(cr, confidence)
            else:
                row["threshold_lo"] = row["threshold_hi"] = row["crossing_lo"] = row["crossing_hi"] = np.nan
        else:
            for k in ("threshold", "crossing", "threshold_lo", "threshold_hi", "crossing_lo", "crossing_hi"):
                row[k] = np.nan
        out.append(row)
    return out


# --- from metrics files to runs ---------------------------------------------------------------------------

_FILE_CACHE: dict[tuple[str, int, int], tuple[Any, dict[str, Any]]] = {}


def _metrics_file(path: str) -> tuple[Any, dict[str, Any]]:
    from emsweep.analysis.results import _load_metrics, v2_fields

    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _FILE_CACHE:
        from pathlib import Path

        m = _load_metrics(Path(path))
        _FILE_CACHE[key] = (m, v2_fields(path))
    return _FILE_CACHE[key]


def question_counts(paths: str, stat: str) -> tuple[dict[str, tuple[float, float]] | None, str]:
    """Per-question [sum, n] of `stat` merged over the metrics files in `paths` (';'-joined; keys
    `<suite>/<question id>`), and how they were obtained; (None, reason) when a file has none."""
    out: dict[str, tuple[float, float]] = {}
    how = "question bootstrap"
    for p in [x for x in str(paths or "").split(";") if x]:
        m, v2 = _metrics_file(p)
        pq = v2.get("per_question") or {}
        got = False
        if pq:
            for qid, stats in pq.items():
                pair = (stats or {}).get(stat)
                if pair is None:
                    continue
                s, n = float(pair[0]), float(pair[1])
                if n > 0:
                    out[f"{m.suite}/{qid}"] = (s, n)
                    got = True
        elif stat == "misaligned_rate" and m.extra.get("misaligned_rate_by_question") and m.n:
            rates = m.extra["misaligned_rate_by_question"]
            nq = m.n / len(rates)
            for qid, r in rates.items():
                out[f"{m.suite}/{qid}"] = (float(r) * nq, nq)
            got = True
            how = "question bootstrap (v1 file: per-question rates, equal samples per question assumed)"
        if not got:
            return None, f"no per-question {stat} in {p}"
    return (out or None), how


def build_runs(rows: pd.DataFrame, metric: str, stat: str) -> tuple[Runs, list[dict | None]]:
    """Runs of one group from cell-view rows: per-question counts from their metrics files where present."""
    counts = []
    methods = set()
    for _, r in rows.iterrows():
        qc, how = question_counts(r.get(f"{metric}_path", ""), stat)
        counts.append(qc)
        methods.add(
            how if qc is not None else "normal from the metrics file's interval (no per-question data)"
        )
    keys = sorted({k for qc in counts if qc for k in qc})
    kidx = {k: i for i, k in enumerate(keys)}
    c = len(rows)
    sums, ns = np.zeros((c, len(keys))), np.zeros((c, len(keys)))
    for i, qc in enumerate(counts):
        for k, (s, n) in (qc or {}).items():
            sums[i, kidx[k]], ns[i, kidx[k]] = s, n
    value = rows[metric].astype(float).to_numpy()
    lo = pd.to_numeric(rows.get(f"{metric}_lo"), errors="coerce").to_numpy(dtype=float)
    hi = pd.to_numeric(rows.get(f"{metric}_hi"), errors="coerce").to_numpy(dtype=float)
    sd = np.where(np.isfinite(hi - lo) & (hi > lo), (hi - lo) / 3.92, 0.0)
    if any(qc is None and s == 0 for qc, s in zip(counts, sd, strict=True)):
        methods.add("point only (a run has neither per-question data nor an interval)")
    runs = Runs(
        fraction=rows["fraction_correct"].astype(float).to_numpy(),
        sums=sums,
        ns=ns,
        has_q=np.array([qc is not None for qc in counts], dtype=bool),
        value=value,
        sd=sd,
        methods=methods,
    )
    return runs, keys


def _align(base: Runs, base_keys: list[str], keys: list[str]) -> Runs:
    """The base runs re-indexed on the group's question keys (questions only the base has are dropped)."""
    idx = {k: i for i, k in enumerate(base_keys)}
    sums, ns = np.zeros((len(base.value), len(keys))), np.zeros((len(base.value), len(keys)))
    for j, k in enumerate(keys):
        if k in idx:
            sums[:, j], ns[:, j] = base.sums[:, idx[k]], base.ns[:, idx[k]]
    has_q = base.has_q & (ns.sum(axis=1) > 0)
    return Runs(base.fraction, sums, ns, has_q, base.value, base.sd, base.methods)


def _fmt_list(xs: Any, fmt: str) -> str:
    return ", ".join("–" if x is None or np.isnan(x) else format(float(x), fmt) for x in xs)


def analyse(
    cells: pd.DataFrame,
    metric: str,
    tolerance: float,
    *,
    base_rows: pd.DataFrame | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    checkpoint_label: str = "final",
    confidence: float = 0.95,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(thresholds, curves) for every group of `cells` (one row per run at the chosen checkpoint, from
    `cell_view`). `base_rows`: step-0 rows of the cell view, for the base-model reference."""
    higher = HIGHER_IS_BETTER.get(metric, True)
    gcols = _group_cols(cells)
    thr_out: list[dict[str, Any]] = []
    curve_out: list[dict[str, Any]] = []
    if metric not in cells.columns:
        return pd.DataFrame(thr_out), pd.DataFrame(curve_out)
    data = cells[cells[metric].notna() & cells["fraction_correct"].notna()]
    groups = data.groupby(gcols, dropna=False, sort=True) if gcols else [((), data)]
    for gi, (key, g) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        kd = dict(zip(gcols, key, strict=True))
        stat = str(g["domain_stat"].iloc[0]) if metric == "domain_accuracy" and "domain_stat" in g else metric
        stat = STAT_OF.get(stat, stat)
        runs, keys = build_runs(g, metric, stat)
        base = None
        if base_rows is not None and len(base_rows) and metric in base_rows:
            b = base_rows[base_rows[metric].notna()]
            sel = b
            for c, v in kd.items():
                sel = sel[sel[c].isna()] if pd.isna(v) else sel[sel[c] == v]
            if sel.empty:  # the same base model on the same questions, judged alike, from other groups
                sel = b
                for c in ("domain", "model", "judge_id"):
                    if c in kd:
                        sel = sel[sel[c].isna()] if pd.isna(kd[c]) else sel[sel[c] == kd[c]]
            if len(sel):
                braw, bkeys = build_runs(sel.assign(fraction_correct=-1.0), metric, stat)
                base = _align(braw, bkeys, keys)
                runs.methods |= braw.methods
        rng = np.random.default_rng([seed, gi])
        res = analyse_runs(runs, base, n_boot=n_boot, rng=rng)
        lo, hi = percentile_interval(res.reps, confidence)
        lo, hi = np.atleast_1d(lo), np.atleast_1d(hi)
        common = {
            **kd,
            "judge_model": g["judge_model"].iloc[0] if "judge_model" in g else None,
            "metric": metric,
            "checkpoint": checkpoint_label,
            "interval_method": "; ".join(sorted(runs.methods)),
            "n_questions": res.n_questions,
            "n_boot": n_boot,
        }
        for k, f in enumerate(res.fractions):
            curve_out.append(
                {**common, "fraction_correct": f, "value": res.point[k], "lo": lo[k], "hi": hi[k],
                 "n_seeds": res.n_seeds[k]}
            )  # fmt: skip
        paths = ";".join(p for p in g.get(f"{metric}_path", pd.Series(dtype=str)).astype(str) if p)
        for row in threshold_rows(res, tolerance, higher, confidence):
            thr_out.append(
                {
                    **common,
                    **row,
                    "fractions": _fmt_list(res.fractions, "g"),
                    "values": _fmt_list(res.point, ".3f"),
                    "values_lo": _fmt_list(lo, ".3f"),
                    "values_hi": _fmt_list(hi, ".3f"),
                    "n_seeds": ", ".join(str(n) for n in res.n_seeds),
                    "metrics_paths": paths,
                }
            )
    return pd.DataFrame(thr_out), pd.DataFrame(curve_out)


def thresholds(
    cells: pd.DataFrame,
    metric: str,
    tolerance: float,
    *,
    base_rows: pd.DataFrame | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    checkpoint_label: str = "final",
) -> pd.DataFrame:
    """One row per group x reference (fine-tune, base): threshold, crossing and their intervals."""
    return analyse(
        cells,
        metric,
        tolerance,
        base_rows=base_rows,
        n_boot=n_boot,
        seed=seed,
        checkpoint_label=checkpoint_label,
    )[0]


def base_reference(cv: pd.DataFrame) -> pd.DataFrame:
    """Step-0 (base model) rows; a cell without its own step 0 borrows the mean of its model's."""
    return cv[cv["step"] == 0]


def early_stopping(cv: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """Per cell: the best-domain checkpoint whose misaligned rate is within `tolerance` of the base model's."""
    base = base_reference(cv)
    # a cell without its own step 0 borrows the base of the same model judged by the same judge
    bkeys = [c for c in ("model", "judge_id") if c in base]
    by_model = base.groupby(bkeys, dropna=False)["misaligned_rate"].mean() if bkeys else {}
    out = []
    for cell, g in cv.groupby("cell", sort=True):
        g = g.sort_values("step")
        final = g.iloc[-1]
        b = g[g["step"] == 0]
        if not b.empty and not np.isnan(b["misaligned_rate"].iloc[0]):
            base_mis = float(b["misaligned_rate"].iloc[0])
            base_src = "own step 0"
        else:
            key = tuple(g[c].iloc[0] for c in bkeys)
            key = key[0] if len(key) == 1 else key
            try:
                base_mis = float(by_model.loc[key]) if len(by_model) else np.nan
            except (KeyError, TypeError):
                base_mis = np.nan
            base_src = "model's step 0 (mean over cells, same judge)"
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
