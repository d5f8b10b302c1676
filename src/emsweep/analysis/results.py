"""Gather every `metrics.json` under a root into one table, joined with each run's `cell.json`.

One row per cell x checkpoint x suite, with `metrics_path` so every number traces back to its file. Any run
folder works: a single `emsweep train` run, a sweep, several sweeps under one root. The study's fields (domain,
fraction correct, wrong kind, method, seed, model) come from the run's resolved recipe (`cell.json["recipe"]`),
falling back to the sweep's axis record only where a cell.json carries no recipe; a value found nowhere is
missing (NaN / empty), never an error. Metrics files of schema version 1 and 2 are read (version-2 fields -
`judge_identity`, `judge_metrics`, `per_question` - are missing values in version-1 files); any other version is
an error naming the file. Results are grouped by judge identity (`judge_id`), so different judges never pool.

The per-cell view (`cell_view`) folds the suites into one row per cell x checkpoint: domain accuracy from the
`domain` suites, misaligned rate from the `alignment` suites (n-weighted when a cell has several).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emsweep.evals.schema import CheckpointMetrics, load_metrics
from emsweep.io import InputError
from emsweep.layout import checkpoint_step, read_cell

AXES = ["domain", "fraction_correct", "wrong_kind", "method", "seed", "model"]
CI_METRICS = ["misaligned_rate", "aligned_mean", "coherent_mean", "dangerous_rate", "domain_accuracy"]
REPORT_DIRNAME = "report"


def find_metrics(root: Path) -> list[Path]:
    """Every metrics.json under root, skipping report outputs and hidden folders (temp files, markers)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != REPORT_DIRNAME)
        if "metrics.json" in filenames:
            out.append(Path(dirpath) / "metrics.json")
    return out


def _load_metrics(path: Path) -> CheckpointMetrics:
    """The metrics file (any readable schema version, evals/schema.py), with its version-2 fields remembered."""
    m = load_metrics(path)
    _V2_CACHE[str(path)] = {k: getattr(m, k, None) for k in V2_FIELDS}
    return m


V2_FIELDS = ("judge_identity", "judge_metrics", "per_question")
_V2_CACHE: dict[str, dict[str, Any]] = {}


def v2_fields(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`judge_identity`, `judge_metrics`, `per_question` of a metrics file (None where the file has none)."""
    key = str(path)
    if key not in _V2_CACHE:
        _load_metrics(Path(key))
    return _V2_CACHE[key]


def _num(v: Any) -> float:
    """A number, or NaN for anything missing or non-numeric (a report never fails on a missing value)."""
    if v is None or isinstance(v, bool):
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _study_fields(info: dict[str, Any]) -> dict[str, Any]:
    """Domain, fraction, wrong kind, method, seed, model of a run: its resolved recipe first, then the sweep's
    axis record (older cell.json files), else missing."""
    axes = dict(info.get("axes") or {})
    recipe = info.get("recipe") or {}
    data = recipe.get("data") or {}
    model = recipe.get("model") or {}
    domain = data.get("domain")
    if domain in (None, "custom") and data.get("builtin"):
        domain = data["builtin"]
    from_recipe = {
        "domain": domain,
        "fraction_correct": data.get("fraction_correct"),
        "wrong_kind": data.get("wrong_kind"),
        "method": recipe.get("method") or info.get("method"),
        "seed": data.get("seed"),
        "model": model.get("path"),
    }
    out = {}
    for a in AXES:
        v = from_recipe.get(a)
        out[a] = v if v is not None else axes.get(a)
    out["fraction_correct"] = _num(out["fraction_correct"])
    return out


def _judge_fields(m: CheckpointMetrics, v2: dict[str, Any]) -> dict[str, Any]:
    ident = v2.get("judge_identity") or {}
    if not isinstance(ident, dict):
        ident = {}
    jid = ident.get("id")
    return {
        "judge_id": str(jid) if jid else (f"name:{m.judge}" if m.judge else None),
        "judge_kind": ident.get("kind"),
        "judge_model": ident.get("model") or m.judge,
        "judge_fingerprint": ident.get("fingerprint"),
    }


def _cell_info(cell_root: Path, cache: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    if cell_root not in cache:
        cache[cell_root] = dict(read_cell(cell_root).data)
    return cache[cell_root]


def collect_results(root: str | os.PathLike[str]) -> pd.DataFrame:
    """The report's table: one row per cell x checkpoint x suite. A root with no results is an error."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such folder")
    paths = find_metrics(root)
    if not paths:
        raise InputError(
            f"{root}: no metrics.json found under this folder. Run the evaluation first "
            "(`emsweep sweep run SWEEP.yaml`), or point `emsweep report` at the sweep's output folder "
            "(<output_root>/<sweep name>)."
        )
    cache: dict[Path, dict[str, Any]] = {}
    rows = []
    for p in paths:
        m = _load_metrics(p)
        # layout: <cell>/eval/<checkpoint>/<suite>/metrics.json
        cell_root = p.parents[3] if len(p.parents) >= 4 and p.parents[2].name == "eval" else p.parent
        if len(p.parents) >= 5 and p.parents[1].name == "lm_eval" and p.parents[3].name == "eval":
            cell_root = p.parents[4]  # <cell>/eval/<checkpoint>/lm_eval/<task>/metrics.json (evals/lm_eval.py)
        info = _cell_info(cell_root, cache)
        axes = dict(info.get("axes") or {})
        recipe = info.get("recipe") or {}
        v2 = v2_fields(p)
        row: dict[str, Any] = {
            "sweep": info.get("sweep"),
            "cell": m.cell,
            **_study_fields(info),
            "checkpoint": m.checkpoint,
            "step": m.step if m.step is not None else checkpoint_step(m.checkpoint),
            "suite": m.suite,
            "suite_kind": m.suite_kind,
            "n": m.n,
            "n_samples": m.n_samples,
        }
        for k in CI_METRICS:
            v = getattr(m, k)
            ci = getattr(m, f"{k}_ci")
            row[k] = v
            row[f"{k}_lo"] = ci[0] if ci else None
            row[f"{k}_hi"] = ci[1] if ci else None
        for k in (
            "none_rate",
            "none_code_rate",
            "none_refusal_rate",
            "none_unparsable_rate",
            "judge",
            "backend",
        ):
            row[k] = getattr(m, k)
        row.update(_judge_fields(m, v2))
        row["schema_version"] = m.schema_version
        row["has_per_question"] = bool(v2.get("per_question"))
        for name, jm in sorted((v2.get("judge_metrics") or {}).items()):  # every metric the suite declares
            jm = jm if isinstance(jm, dict) else {}
            ci = jm.get("ci") or [None, None]
            row[f"judge:{name}_mean"] = jm.get("mean")
            row[f"judge:{name}_lo"], row[f"judge:{name}_hi"] = ci[0], ci[1]
            row[f"judge:{name}_n"] = jm.get("n")
            row[f"judge:{name}_none_rate"] = jm.get("none_rate")
            for lab, share in sorted((jm.get("labels") or {}).items()):  # categorical: share of each argmax label
                lci = (jm.get("labels_ci") or {}).get(lab) or [None, None]
                row[f"judge:{name}={lab}"] = share
                row[f"judge:{name}={lab}_lo"], row[f"judge:{name}={lab}_hi"] = lci[0], lci[1]
        for k, v in axes.items():  # any extra sweep axes (learning rate, ...)
            if k not in row and k not in AXES:
                row[k] = v
        # domains with an answer checker (builtin arithmetic) also carry an exact accuracy that needs no judge
        ex = m.extra.get("exact_accuracy")
        ex_ci = m.extra.get("exact_accuracy_ci")
        row["exact_accuracy"] = ex
        row["exact_accuracy_lo"] = ex_ci[0] if ex_ci else None
        row["exact_accuracy_hi"] = ex_ci[1] if ex_ci else None
        row["n_exact"] = m.extra.get("n_exact")
        row["init_shape"] = (recipe.get("model") or {}).get("init_shape")
        lm = m.extra.get("lm_eval") if isinstance(m.extra.get("lm_eval"), dict) else None
        if lm:  # lm-evaluation-harness tasks: the headline metric, and every metric as `lm:<metric,filter>`
            row["lm_eval_task"], row["lm_eval_metric"] = lm.get("task"), lm.get("primary_metric")
            row["lm_eval_value"], row["lm_eval_stderr"] = lm.get("value"), lm.get("stderr")
            for k, v in (lm.get("metrics") or {}).items():
                row[f"lm:{k}"] = v
        row["metrics_path"] = str(p)
        row["cell_dir"] = str(cell_root)
        rows.append(row)
    df = pd.DataFrame(rows)
    # a categorical label no sample got is absent from that file's `labels`: its share there is 0, not missing
    label_cols = [c for c in df.columns if c.startswith("judge:") and "=" in c and not c.endswith(("_lo", "_hi"))]
    for c in label_cols:
        metric = c.split("=", 1)[0]
        labelled = df[[x for x in label_cols if x.split("=", 1)[0] == metric]].notna().any(axis=1)
        for col in (c, f"{c}_lo", f"{c}_hi"):
            df.loc[labelled & df[col].isna(), col] = 0.0
    for c in ("fraction_correct", "step", *[f"{k}{s}" for k in CI_METRICS for s in ("", "_lo", "_hi")]):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    # a root above several sweeps may hold the same cell id twice: name cells by their folder below root then
    if df.groupby("cell")["cell_dir"].nunique().max() > 1:
        df["cell"] = [os.path.relpath(d, root) for d in df["cell_dir"]]
    df = df.sort_values(["cell", "step", "suite"], kind="stable").reset_index(drop=True)
    return df


def _wmean(values: pd.Series, weights: pd.Series) -> float:
    mask = values.notna()
    if not mask.any():
        return float("nan")
    w = weights[mask].astype(float).clip(lower=1)
    return float(np.average(values[mask].astype(float), weights=w))


def domain_source(df: pd.DataFrame, prefer: str = "auto") -> str:
    """Which number is "domain performance": `exact` (an answer checker's accuracy, where every domain row has
    one) or `judge` (the judge's graded accuracy). `auto` takes exact when available."""
    if prefer not in ("auto", "exact", "judge"):
        raise InputError(f"--domain-metric {prefer!r}: choose auto, exact or judge")
    dom = df[df["suite_kind"] == "domain"]
    has_exact = len(dom) > 0 and "exact_accuracy" in dom and dom["exact_accuracy"].notna().all()
    if prefer == "exact" and not has_exact:
        raise InputError(
            "--domain-metric exact: some domain metrics files have no exact_accuracy (no answer checker)"
        )
    return "exact" if (prefer != "judge" and has_exact) else "judge"


def cell_view(df: pd.DataFrame, domain_metric: str = "auto") -> pd.DataFrame:
    """One row per cell x checkpoint: domain accuracy (domain suites) and misaligned rate (alignment suites),
    with their intervals, n, and the metrics files they came from. With an exact answer checker (see
    `domain_source`) the exact accuracy stands in for the judge's domain accuracy."""
    dsrc = domain_source(df, domain_metric)
    if dsrc == "exact":
        df = df.copy()
        dom = df["suite_kind"] == "domain"
        for a, b in (("", ""), ("_lo", "_lo"), ("_hi", "_hi")):
            df.loc[dom, f"domain_accuracy{a}"] = df.loc[dom, f"exact_accuracy{b}"]
        df.loc[dom, "n"] = df.loc[dom, "n_exact"].fillna(df.loc[dom, "n"])
    keys = ["cell", "step", "checkpoint"]
    group_cols = [c for c in ["sweep", *AXES, "init_shape", "cell_dir"] if c in df.columns]
    rows = []
    for (cell, step, ckpt), g in df.groupby(keys, sort=True, dropna=False):
        row: dict[str, Any] = {"cell": cell, "step": int(step), "checkpoint": ckpt}
        for c in group_cols:
            row[c] = g[c].iloc[0]
        # the judges behind this row's numbers: rows with other judges never pool with these (science groups
        # by judge_id); the exact domain checker needs no judge, so it does not count then
        judged = g if dsrc != "exact" else g[g["suite_kind"] != "domain"]
        ids = sorted({str(j) for j in judged.get("judge_id", pd.Series(dtype=object)).dropna()})
        row["judge_id"] = " + ".join(ids) if ids else None
        models = sorted({str(j) for j in judged.get("judge_model", pd.Series(dtype=object)).dropna()})
        row["judge_model"] = " + ".join(models) if models else None
        row["domain_stat"] = "exact_accuracy" if dsrc == "exact" else "domain_accuracy"
        for metric, kind in (("domain_accuracy", "domain"), ("misaligned_rate", "alignment")):
            sub = g[(g["suite_kind"] == kind) & g[metric].notna()]
            if sub.empty:
                sub = g[g[metric].notna()]
            if sub.empty:
                row[metric] = row[f"{metric}_lo"] = row[f"{metric}_hi"] = float("nan")
                row[f"{metric}_n"] = 0
                row[f"{metric}_path"] = ""
                continue
            row[metric] = _wmean(sub[metric], sub["n"])
            row[f"{metric}_lo"] = _wmean(sub[f"{metric}_lo"], sub["n"])
            row[f"{metric}_hi"] = _wmean(sub[f"{metric}_hi"], sub["n"])
            row[f"{metric}_n"] = int(sub["n"].sum())
            row[f"{metric}_path"] = ";".join(sub["metrics_path"])
        rows.append(row)
    return pd.DataFrame(rows)
