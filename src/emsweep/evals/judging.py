"""Judging for the eval stage: which judge a call uses, which files it owns in a folder, and the judging and
metrics of a folder's samples.

Judges themselves are built in judge/ (kinds, registry.build_judge, identity, cache); this module renders one
JudgeItem per (sample, metric), asks a JudgePanel for judgments and keeps each row with the judge's id and the
hash of its exact input, so a row is reused only by the same judge on the same prompt. The first judge of a
folder owns `judgments.jsonl` / `metrics.json` / `.done/eval.json`; any other writes `judgments.<slug>.jsonl`,
`metrics.<slug>.json` and `.done/eval.<slug>.json` beside them. Split from evals/run.py so that both entry
points (`evaluate_run`, which generates first, and `judge_run`, which only re-judges) share one judging path.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emsweep.evals.metrics import MetricParams, compute_metrics
from emsweep.evals.suites import Question, Suite
from emsweep.evals.units import DEFAULT_CHUNK, PRIMARY_JUDGMENTS, Unit, read_rows
from emsweep.io import InputError, append_jsonl, atomic_write_json, mark_done, read_marker
from emsweep.judge.base import JudgeItem
from emsweep.judge.registry import JudgePanel, as_panel, build_engine, build_judge, judge_kind_class
from emsweep.judge.spec import JudgeSpec
from emsweep.layout import CellPaths


def judge_slug(judge_id: str) -> str:
    """A file-name-safe name for a judge: `gpt-4o-2024-08-06` stays; a local path becomes `<folder>-<hash8>`."""
    if os.sep in judge_id or judge_id.startswith("."):
        short = Path(judge_id.rstrip(os.sep)).name or "judge"
        return (
            f"{re.sub(r'[^A-Za-z0-9._-]+', '_', short)}-{hashlib.sha256(judge_id.encode()).hexdigest()[:8]}"
        )
    return re.sub(r"[^A-Za-z0-9._-]+", "_", judge_id).strip("_")[:100] or "judge"


JUDGE_OPTION_KEYS = ("min_number_mass", "max_pruned_mass", "top_k")


def make_judge(
    model: str,
    backend_kind: str = "hf",
    *,
    cache_path: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    engine: dict[str, Any] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    judge_options: dict[str, Any] | None = None,
) -> Any:
    """A LogprobJudge on a fresh backend (kept for existing callers; new code: emsweep.judge.build_judge)."""
    spec = resolve_judge_spec(None, model, backend_kind, base_url, judge_options, engine=engine)
    assert spec is not None
    return build_engine(spec, cache_path=cache_path, batch_size=batch_size, progress=progress)


def resolve_judge_spec(
    base: JudgeSpec | None,
    model: str | None,
    backend: str | None,
    base_url: str | None,
    options: dict[str, Any] | None,
    *,
    engine: dict[str, Any] | None = None,
) -> JudgeSpec | None:
    """The JudgeSpec of a call: the recipe's `eval.judge`, overridden by explicit arguments; None = no model
    judge given (a suite of rule questions needs none)."""
    if model and not backend:
        # a local folder is an HF model; a name defaults to the recipe's judge backend, else the OpenAI API
        backend = "hf" if Path(model).exists() else (base.backend if base is not None else "openai")
    if not model and base is None:
        if options:
            _check_options(options)
        return None
    data = base.model_dump() if base is not None else {}
    if model:
        data["model"] = model
        if base is None or (backend and backend != base.backend):
            data["base_url"] = None
            data["engine"] = {}
    if backend:
        data["backend"] = backend
    if base_url:
        data["base_url"] = base_url
    if engine is not None:
        data["engine"] = dict(engine)
    opts = _check_options(options or {})
    data.update(opts)
    try:
        return JudgeSpec.model_validate(data)
    except Exception as exc:
        raise InputError(f"judge settings: {exc}") from None


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    bad = sorted(set(options) - set(JUDGE_OPTION_KEYS))
    if bad:
        raise InputError(f"judge options {bad}: unknown; known: {', '.join(JUDGE_OPTION_KEYS)}")
    return dict(options)


def default_cache_path(run_dir: str | os.PathLike[str]) -> Path:
    """`$EMSWEEP_JUDGE_CACHE`, else `<run_dir>/eval/judge_cache.sqlite` (sweeps pass one shared file)."""
    env = os.environ.get("EMSWEEP_JUDGE_CACHE")
    return Path(env) if env else CellPaths.of(run_dir).eval_root / "judge_cache.sqlite"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _rule_input(rule: Any) -> str:
    """What determines a rule judgment besides the answer: the rule, and a callable's source."""
    import json

    from emsweep.judge.rules import callable_sha256

    d = rule.describe()
    if rule.callable:
        d["source_sha256"] = callable_sha256(rule.callable)
    return json.dumps(d, sort_keys=True)


def _unit_items(u: Unit, default_kind: str) -> list[tuple[str, JudgeItem, str]]:
    """(sample id, item, input hash) for every (sample, metric) the unit's suite asks for."""
    items = []
    qs = {q.id: q for q in u.suite.questions}
    for row in u.expected_samples():
        q = qs[row["question_id"]]
        for metric in q.metrics:
            kind = q.metric_kind(metric, default_kind)
            labels = tuple(q.judge_labels.get(metric, ()))
            if kind == "rule":
                rule = q.judge_rules[metric]
                item = JudgeItem(metric, "", row["answer"], kind, labels, rule, q)
                digest = _sha(f"rule\0{_rule_input(rule)}\0{row['answer']}")
            else:
                prompt = q.judge_prompt(metric, row["paraphrase_index"], row["answer"])
                item = JudgeItem(metric, prompt, row["answer"], kind, labels, None, q)
                digest = _sha(f"{kind}\0{chr(31).join(labels)}\0{prompt}")
            items.append((row["id"], item, digest))
    return items


def needs_model(q: Question) -> bool:
    """Whether a question is judged by a model (rules and model-free registered kinds are not)."""
    if q.type == "rule":
        return False
    kinds = {q.metric_kind(m) for m in q.metrics} or {"logprob"}
    return any(getattr(judge_kind_class(k), "needs_model", True) for k in kinds)


def _default_kind(panel: JudgePanel) -> str:
    k = panel.identity.kind
    return k if k not in ("rule", "categorical") else "logprob"


@dataclass
class Judging:
    """The judge of one call: the panel, its display name and id (the id decides which files it owns)."""

    panel: JudgePanel
    display: str
    id: str
    own: bool

    @property
    def slug(self) -> str:
        return f"{judge_slug(self.display)}-{self.id[:8]}"


def open_judging(
    judge: Any, spec: JudgeSpec | None, cache: Path, batch_size: int | None, progress: bool, chunk: int | None
) -> Judging:
    """The call's judge: a ready `judge` (a JudgePanel or a LogprobJudge; the caller closes it), else one built
    from `spec` (closed by the stage at the end)."""
    if judge is not None:
        panel = as_panel(judge)
        return Judging(panel, panel.display, panel.identity.id, own=False)
    panel = build_judge(spec, cache_path=cache, batch_size=batch_size, progress=progress, chunk_size=chunk)
    return Judging(panel, panel.display, panel.identity.id, own=True)


def marker_for(eval_dir: Path, jg: Judging) -> tuple[str, bool]:
    """(done-marker name, is this judge the folder's primary judge)."""
    primary = _primary_judge(eval_dir)
    if primary is None or primary == jg.id:
        return "eval", True
    return f"eval.{jg.slug}", False


def _primary_judge(eval_dir: Path) -> str | None:
    """The id of the judge that owns `judgments.jsonl` (the first one that judged this folder). A marker from
    before judge identities names only a path: it proves nothing, and the next judge takes the folder over."""
    info = read_marker(eval_dir, "primary_judge")
    return info.get("judge_id") if info else None


def _judgments_path(eval_dir: Path, jg: Judging) -> Path:
    primary = _primary_judge(eval_dir)
    if primary is None:
        mark_done(eval_dir, "primary_judge", {"judge": jg.display, "judge_id": jg.id})
        primary = jg.id
    if primary == jg.id:
        return eval_dir / PRIMARY_JUDGMENTS
    return eval_dir / f"judgments.{jg.slug}.jsonl"


def _metrics_path(eval_dir: Path, jg: Judging) -> Path:
    primary = _primary_judge(eval_dir)
    if primary is None or primary == jg.id:
        return eval_dir / "metrics.json"
    return eval_dir / f"metrics.{jg.slug}.json"


def judge_units(jg: Judging, units: list[Unit], chunk_size: int = DEFAULT_CHUNK) -> int:
    """Judge every (sample, metric) of `units` that this judge has not judged on this exact input; append per
    folder after each chunk, so a crash mid-judging keeps what was judged."""
    todo: list[tuple[Path, str, JudgeItem, str]] = []
    kind = _default_kind(jg.panel)
    for u in units:
        if not u.samples:
            u.samples = read_rows(u.samples_path)
        path = _judgments_path(u.dir, jg)
        done = {
            (r.get("sample_id"), r.get("metric"), r.get("input_sha256"))
            for r in read_rows(path)
            if r.get("judge_id") == jg.id
        }
        for sid, item, digest in _unit_items(u, kind):
            if (sid, item.metric, digest) not in done:
                todo.append((path, sid, item, digest))
    n = 0
    chunk = max(1, chunk_size)
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        res = jg.panel.judge([item for _, _, item, _ in part])
        per_path: dict[Path, list[dict[str, Any]]] = defaultdict(list)
        for (path, sid, _, digest), j in zip(part, res, strict=True):
            per_path[path].append(
                {"sample_id": sid, **j.row(), "judge": jg.display, "judge_id": jg.id, "input_sha256": digest}
            )
        for path, rows in per_path.items():
            append_jsonl(path, rows)
        n += len(part)
    return n


def _exact_grades(suite: Suite, samples: list[dict[str, Any]]) -> dict[str, bool] | None:
    """Exact grades for domain questions whose domain has an answer checker (the builtin arithmetic domain)."""
    from emsweep.data.builtin import answer_checker

    qs = {q.id: q for q in suite.questions}
    out: dict[str, bool] = {}
    for s in samples:
        q = qs.get(s["question_id"])
        if q is None or q.checker is None or q.reference is None:
            continue
        check = answer_checker(q.checker)
        if check is not None:
            out[s["id"]] = bool(check(s["answer"], q.reference))
    return out or None


def write_metrics(u: Unit, jg: Judging, cell: str, params: MetricParams, backend_name: str | None) -> Path:
    """The folder's metrics file for this judge, from its samples and this judge's judgments on the current
    inputs (rows judged on another prompt or by another judge are left out)."""
    samples = u.expected_samples()
    kind = _default_kind(jg.panel)
    want = {(sid, item.metric): digest for sid, item, digest in _unit_items(u, kind)}
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in read_rows(_judgments_path(u.dir, jg)):
        key = (r.get("sample_id"), r.get("metric"))
        if r.get("judge_id") == jg.id and want.get(key) == r.get("input_sha256"):  # type: ignore[arg-type]
            latest[key] = r  # type: ignore[index]
    exact = _exact_grades(u.suite, samples)
    kinds = {m: k for q in u.suite.questions for m in q.metrics for k in [q.metric_kind(m, kind)]}
    prompts = [p for q in u.suite.questions for p in q.judge_prompts.values()]
    prompts += [_rule_input(r) for q in u.suite.questions for r in q.judge_rules.values()]
    ident = jg.panel.identity_for(sorted(set(kinds.values())), prompts).to_dict()
    m = compute_metrics(
        samples,
        list(latest.values()),
        cell=cell,
        checkpoint=u.ref.name,
        step=u.ref.step,
        suite=u.suite.name,
        suite_kind=u.suite.kind,
        params=params,
        judge=jg.display,
        backend=samples[0].get("backend") if samples else backend_name,
        exact=exact,
        judge_identity=ident,
        declared_metrics=u.suite.metrics,
        metric_kinds=kinds,
    )
    path = _metrics_path(u.dir, jg)
    atomic_write_json(path, m.model_dump(mode="json"))
    return path
