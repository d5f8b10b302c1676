"""The eval stage: generate answers for every checkpoint x suite, judge them, write metrics.json.

Files per checkpoint x suite (`eval/<checkpoint>/<suite>/`):
- `samples.jsonl`   one row per generated answer, appended as generation proceeds (a crash loses at most the
                    chunk in flight; the rerun generates only what is missing);
- `judgments.jsonl` one row per (sample, judge metric), appended likewise, by the folder's primary judge: the
                    first judge that judged it. Any other judge (`emsweep judge --judge OTHER`, or `emsweep eval`
                    with another judge) writes `judgments.<judge-slug>.jsonl` and `metrics.<judge-slug>.json`
                    beside it, so judgments of different judges are never mixed;
- `metrics.json`    computed from the samples and the primary judge's judgments (schema: evals/schema.py);
- `suite.yaml`      the suite as evaluated (so `emsweep judge` can rebuild judge prompts without the source);
- `.done/eval.json` (`.done/eval.<slug>.json` for other judges): written last; a rerun skips the folder when the
                    marker matches the requested configuration.

Generation batches the requests of ALL checkpoints into one backend created once per base model: the HF backend
swaps PEFT adapters on one loaded base, vLLM batches LoRARequests on one engine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emsweep.evals.metrics import MetricParams, compute_metrics
from emsweep.evals.registry import suite_runner
from emsweep.evals.suites import Question, Suite, load_suite_yaml, resolve_suite, suite_to_yaml
from emsweep.generate.base import GenerationBackend, GenerationRequest, SamplingSpec
from emsweep.io import (
    InputError,
    append_jsonl,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    mark_done,
    read_jsonl,
    read_marker,
)
from emsweep.judge.base import JudgeItem
from emsweep.judge.registry import JudgePanel, as_panel, build_judge, judge_kind_class
from emsweep.layout import CellPaths, CheckpointRef, read_cell
from emsweep.lock import locked_stage

log = logging.getLogger(__name__)

PRIMARY_JUDGMENTS = "judgments.jsonl"
SUITE_FILE = "suite.yaml"
DEFAULT_CHUNK = 1024  # samples per backend call (generation) / judge prompts per call: the unit of saving


# --- small helpers ----------------------------------------------------------------------------------------------


def judge_slug(judge_id: str) -> str:
    """A file-name-safe name for a judge: `gpt-4o-2024-08-06` stays; a local path becomes `<folder>-<hash8>`."""
    if os.sep in judge_id or judge_id.startswith("."):
        short = Path(judge_id.rstrip(os.sep)).name or "judge"
        return (
            f"{re.sub(r'[^A-Za-z0-9._-]+', '_', short)}-{hashlib.sha256(judge_id.encode()).hexdigest()[:8]}"
        )
    return re.sub(r"[^A-Za-z0-9._-]+", "_", judge_id).strip("_")[:100] or "judge"


def sample_id(question_id: str, paraphrase_index: int, sample_index: int) -> str:
    return f"{question_id}:{paraphrase_index}:{sample_index}"


def select_checkpoints(
    refs: Sequence[CheckpointRef], spec: str | Sequence[int] | None
) -> list[CheckpointRef]:
    """`all`, `last` (the highest step, plus nothing else), `base`, or steps `0,25,50`."""
    refs = sorted(refs, key=lambda r: r.step)
    if spec is None or spec == "all":
        return list(refs)
    if spec == "last":
        return refs[-1:]
    if spec == "base":
        return [r for r in refs if r.step == 0]
    if isinstance(spec, str):
        try:
            steps = [int(s) for s in spec.split(",") if s.strip()]
        except ValueError:
            raise InputError(
                f"--checkpoints {spec!r}: use all, last, base or comma-separated steps like 0,25,50"
            ) from None
    else:
        steps = [int(s) for s in spec]
    have = {r.step: r for r in refs}
    missing = [s for s in steps if s not in have]
    if missing:
        raise InputError(
            f"--checkpoints: no complete checkpoint at step(s) {missing}; available: {sorted(have)}"
        )
    return [have[s] for s in steps]


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an incremental JSONL; a torn last line (crash mid-write) is dropped and the file repaired so
    later appends start on a clean line."""
    if not path.exists():
        return []
    rows = [r for _, r in read_jsonl(path, tolerate_torn_tail=True)]
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        log.warning("%s: dropping a torn last line (interrupted write); it will be redone", path)
        atomic_write_jsonl(path, rows)
    return rows


@dataclass
class _Unit:
    """One checkpoint x suite folder."""

    ref: CheckpointRef
    suite: Suite
    dir: Path
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def samples_path(self) -> Path:
        return self.dir / "samples.jsonl"

    def expected(self) -> list[tuple[Question, int, int]]:
        return [
            (q, p, s)
            for q in self.suite.questions
            for p in range(len(q.paraphrases))
            for s in range(q.samples_per_paraphrase)
        ]


@dataclass
class EvalResult:
    """What a call did; `metrics` maps `<checkpoint>/<suite>` to its metrics file."""

    cell: str
    metrics: dict[str, str] = field(default_factory=dict)
    generated: int = 0
    judged: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    skipped: int = 0
    judge: str | None = None

    def summary(self) -> str:
        return (
            f"eval {self.cell}: {len(self.metrics)} metrics files ({self.skipped} already done); generated "
            f"{self.generated} samples; judged {self.judged} (judge cache: {self.cache_hits} hits, "
            f"{self.cache_misses} misses) with {self.judge or '-'}"
        )


# --- judge plumbing ---------------------------------------------------------------------------------------------
# Judging itself lives in judge/ (kinds, registry, identity, cache); this stage renders one JudgeItem per
# (sample, metric), asks a JudgePanel for judgments and keeps each row with the judge's id and the hash of its
# exact input, so a row is reused only by the same judge on the same prompt.

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
    from emsweep.judge.registry import build_engine

    spec = _judge_spec(None, model, backend_kind, base_url, judge_options, engine=engine)
    assert spec is not None
    return build_engine(spec, cache_path=cache_path, batch_size=batch_size, progress=progress)


def _judge_spec(
    base: Any,
    model: str | None,
    backend: str | None,
    base_url: str | None,
    options: dict[str, Any] | None,
    *,
    engine: dict[str, Any] | None = None,
) -> Any:
    """The JudgeSpec of a call: the recipe's `eval.judge`, overridden by explicit arguments; None = no model
    judge given (a suite of rule questions needs none)."""
    from emsweep.recipe import JudgeSpec

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


def _unit_items(u: _Unit, default_kind: str) -> list[tuple[str, JudgeItem, str]]:
    """(sample id, item, input hash) for every (sample, metric) the unit's suite asks for."""
    items = []
    qs = {q.id: q for q in u.suite.questions}
    for row in _expected_samples(u):
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


def _needs_model(q: Question) -> bool:
    """Whether a question is judged by a model (rules and model-free registered kinds are not)."""
    if q.type == "rule":
        return False
    kinds = {q.metric_kind(m) for m in q.metrics} or {"logprob"}
    return any(getattr(judge_kind_class(k), "needs_model", True) for k in kinds)


def _default_kind(panel: JudgePanel) -> str:
    k = panel.identity.kind
    return k if k not in ("rule", "categorical") else "logprob"


# --- the stage --------------------------------------------------------------------------------------------------


def _resolve_base_model(run: CellPaths, base_model: str | None, recipe: Any) -> str | None:
    """Explicit > cell.json's `base_model` (what training resolved) > the recipe's model path."""
    if base_model:
        return base_model
    recorded = read_cell(run.root, strict=False).base_model
    if recorded:
        return recorded
    if recipe is not None:
        return recipe.model.path
    return None


def cell_recipe(run_dir: str | os.PathLike[str]) -> Any:
    """The resolved recipe recorded in `<run_dir>/cell.json` by the sweep runner, or None."""
    from emsweep.recipe import Recipe

    cell = read_cell(run_dir)
    rec = cell.recipe
    if rec is None:
        return None
    try:
        return Recipe.model_validate(rec)
    except Exception as exc:
        raise InputError(f"{cell.path}: recipe does not validate: {exc}") from None


def _load_suites(
    suites: Sequence[str | Suite], run_dir: Path, samples_per_paraphrase: int | None
) -> list[Suite]:
    out: list[Suite] = []
    for s in suites:
        suite = (
            s.with_samples(samples_per_paraphrase)
            if isinstance(s, Suite)
            else resolve_suite(s, run_dir=run_dir, samples_per_paraphrase=samples_per_paraphrase)
        )
        if any(x.name == suite.name for x in out):
            raise InputError(f"suite {suite.name!r} given twice")
        out.append(suite)
    if not out:
        raise InputError("no suite given: --suite NAME (a builtin name, a YAML path, NAME=PATH, or domain)")
    return out


def _fingerprint(unit: _Unit, sampling: SamplingSpec, judge_id: str) -> dict[str, Any]:
    text = suite_to_yaml(unit.suite)
    return {
        "suite_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "n_expected": unit.suite.n_samples,
        "sampling": sampling.model_dump(),
        "judge_id": judge_id,
    }


@dataclass
class EvalOptions:
    """What `evaluate_run` may be told; anything left None comes from the run's recipe (`eval:`), then defaults.

    The judge: `judge` (a JudgeSpec) or the shortcuts `judge_model` / `judge_backend` / `judge_base_url` /
    `judge_options` (min_number_mass, max_pruned_mass, top_k) that override the recipe's `eval.judge`."""

    checkpoints: str | Sequence[int] | Sequence[CheckpointRef] | None = None
    backend_kind: str | None = None
    base_model: str | None = None
    base_url: str | None = None
    judge: Any = None  # emsweep.recipe.JudgeSpec
    judge_model: str | None = None
    judge_backend: str | None = None
    judge_base_url: str | None = None
    judge_cache: str | os.PathLike[str] | None = None
    judge_options: dict[str, Any] | None = None
    sampling: SamplingSpec | dict[str, Any] | None = None
    samples_per_paraphrase: int | None = None
    batch_size: int | None = None
    thresholds: MetricParams | dict[str, Any] | None = None
    cell: str | None = None
    chunk_size: int = DEFAULT_CHUNK
    progress: bool = True
    answer_format: str | None = None  # auto | plain | think | harmony (generate/answers.py)

    @classmethod
    def of(cls, options: EvalOptions | None, kwargs: dict[str, Any]) -> EvalOptions:
        """`options` with keyword overrides (the keyword form callers used before EvalOptions)."""
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(kwargs) - known)
        if bad:
            raise TypeError(f"evaluate_run() got unexpected keyword argument(s) {bad}; EvalOptions has {sorted(known)}")
        from dataclasses import replace

        return replace(options or cls(), **kwargs)


@dataclass
class _Judging:
    """The judge of one call: the panel, its display name and id (the id decides which files it owns)."""

    panel: JudgePanel
    display: str
    id: str
    own: bool

    @property
    def slug(self) -> str:
        return f"{judge_slug(self.display)}-{self.id[:8]}"


def _open_judging(judge: Any, spec: Any, cache: Path, batch_size: int | None, progress: bool, chunk: int | None):
    if judge is not None:
        panel = as_panel(judge)
        return _Judging(panel, panel.display, panel.identity.id, own=False)
    panel = build_judge(spec, cache_path=cache, batch_size=batch_size, progress=progress, chunk_size=chunk)
    return _Judging(panel, panel.display, panel.identity.id, own=True)


@locked_stage("eval", "run_dir")  # two evals of one run: one does the work, the other reuses it
def evaluate_run(
    run_dir: str | os.PathLike[str],
    suites: Sequence[str | Suite],
    options: EvalOptions | None = None,
    *,
    backend: GenerationBackend | None = None,
    judge: Any = None,
    recipe: Any = None,
    **kwargs: Any,
) -> EvalResult:
    """Evaluate the checkpoints of one run on `suites`; see the module docstring for the files.

    `options` (EvalOptions, or its fields as keywords): anything not given comes from `recipe.eval` (the sweep
    runner passes the cell's recipe; else cell.json's), then from defaults. `checkpoints`: "all" | "last" |
    "base" | "0,25,50" | list of steps | list of CheckpointRef (e.g. API models). `backend` / `judge`: ready
    objects (reused, not closed; `judge` a JudgePanel or a LogprobJudge); otherwise built from the options and
    closed at the end. The judge model is loaded only if a suite has model-judged questions.
    """
    from emsweep.train.checkpoints import list_checkpoints

    o = EvalOptions.of(options, kwargs)
    runner = suite_runner(suites)
    if runner is not None:
        # a runner format (evals/registry.py; `lm_eval:<task>,...` goes to lm-evaluation-harness) takes the run
        # and calls back (unlocked) for the other suites
        return runner(
            run_dir, suites, o, rest=evaluate_run.__wrapped__, recipe=recipe, backend=backend, judge=judge
        )
    run_dir = Path(run_dir)
    run = CellPaths.of(run_dir)
    if recipe is None:
        recipe = cell_recipe(run_dir)
    ev = recipe.eval if recipe is not None else None
    cell = o.cell or run.name
    checkpoints = o.checkpoints if o.checkpoints is not None else (ev.checkpoints if ev else "all")
    backend_kind = o.backend_kind or (ev.backend if ev else "hf")
    base_url = o.base_url or (ev.base_url if ev else None)
    samples_per_paraphrase = o.samples_per_paraphrase or (ev.samples_per_paraphrase if ev else None)
    batch_size = o.batch_size or (ev.batch_size if ev else None)
    sampling = o.sampling
    if sampling is None:
        sampling = SamplingSpec(**(ev.sampling if ev else {}))
    elif isinstance(sampling, dict):
        sampling = SamplingSpec(**sampling)
    thresholds = o.thresholds
    if not isinstance(thresholds, MetricParams):
        thresholds = MetricParams.from_dict(
            thresholds if thresholds is not None else (ev.thresholds if ev else {})
        )
    engine = dict(ev.engine) if ev else {}

    suite_objs = _load_suites(suites, run_dir, samples_per_paraphrase)
    if (
        checkpoints
        and not isinstance(checkpoints, str)
        and all(isinstance(c, CheckpointRef) for c in checkpoints)
    ):
        refs = list(checkpoints)  # type: ignore[arg-type]
    else:
        found = list_checkpoints(run_dir, base_model=_resolve_base_model(run, o.base_model, recipe), cell=cell)
        refs = select_checkpoints(found, checkpoints)  # type: ignore[arg-type]
    if not refs:
        raise InputError(f"{run_dir}: no checkpoints to evaluate")
    for r in refs:
        if r.kind != "api" and not r.base_model:
            raise InputError(
                f"{run_dir}: the base model of {r.name} is unknown (no cell.json with base_model); pass --base-model"
            )

    spec = o.judge
    if judge is None and spec is None:
        spec = _judge_spec(
            ev.judge if ev else None, o.judge_model, o.judge_backend, o.judge_base_url, o.judge_options
        )
    if judge is None and spec is None and any(_needs_model(q) for s in suite_objs for q in s.questions):
        raise InputError(
            "the suites have questions judged by a model, but no judge model was given: pass --judge MODEL "
            "(or set eval.judge.model in the recipe)"
        )
    jg = _open_judging(
        judge, spec, Path(o.judge_cache or default_cache_path(run_dir)), batch_size, o.progress, None
    )

    units = [_Unit(ref=r, suite=s, dir=run.eval_dir(r.name, s.name)) for r in refs for s in suite_objs]
    result = EvalResult(cell=cell, judge=jg.display)
    pending: list[_Unit] = []
    for u in units:
        marker, _ = _marker_for(u.dir, jg)
        info = read_marker(u.dir, marker)
        if info is not None and info.get("fingerprint") == _fingerprint(u, sampling, jg.id):
            result.skipped += 1
            result.metrics[f"{u.ref.name}/{u.suite.name}"] = str(u.dir / info.get("metrics", "metrics.json"))
        else:
            pending.append(u)
    if not pending:
        if jg.own:
            jg.panel.close()
        log.info(result.summary())
        return result

    own_backend = backend is None
    try:
        # 1. generation, for every pending folder at once
        todo = _plan_generation(pending, sampling)
        if todo:
            if backend is None:
                models = {u.ref.base_model for u, _ in todo if u.ref.kind != "api"}
                if len(models) > 1:
                    raise InputError(
                        f"checkpoints sit on different base models {sorted(models)}; one run at a time"
                    )
                model = next(iter(models)) if models else None
                from emsweep.generate.factory import make_backend

                # vLLM sizes its LoRA slots (max_lora_rank, max_loras) from the checkpoints it will serve
                extra = (
                    {"checkpoints": list(dict.fromkeys(u.ref for u in pending))}
                    if backend_kind == "vllm"
                    else {}
                )
                backend = make_backend(
                    backend_kind, model, base_url=base_url, batch_size=batch_size, engine=engine, **extra
                )
            fmt = o.answer_format or (ev.answer_format if ev else "auto")
            result.generated = _generate(backend, todo, sampling, o.chunk_size, o.progress, fmt)
        # 2. judging
        h0, m0 = jg.panel.cache_counts()
        result.judged = _judge_units(jg, pending, o.chunk_size)
        h1, m1 = jg.panel.cache_counts()
        result.cache_hits, result.cache_misses = h1 - h0, m1 - m0
        # 3. metrics
        backend_name = backend.name if backend is not None else backend_kind
        for u in pending:
            path = _write_metrics(u, jg, cell, thresholds, backend_name)
            marker, _ = _marker_for(u.dir, jg)
            mark_done(u.dir, marker, {"fingerprint": _fingerprint(u, sampling, jg.id), "metrics": path.name})
            result.metrics[f"{u.ref.name}/{u.suite.name}"] = str(path)
    finally:
        if own_backend and backend is not None:
            backend.close()
        if jg.own:
            jg.panel.close()
    log.info(result.summary())
    return result


def _marker_for(eval_dir: Path, jg: _Judging) -> tuple[str, bool]:
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


def _judgments_path(eval_dir: Path, jg: _Judging) -> Path:
    primary = _primary_judge(eval_dir)
    if primary is None:
        mark_done(eval_dir, "primary_judge", {"judge": jg.display, "judge_id": jg.id})
        primary = jg.id
    if primary == jg.id:
        return eval_dir / PRIMARY_JUDGMENTS
    return eval_dir / f"judgments.{jg.slug}.jsonl"


def _metrics_path(eval_dir: Path, jg: _Judging) -> Path:
    primary = _primary_judge(eval_dir)
    if primary is None or primary == jg.id:
        return eval_dir / "metrics.json"
    return eval_dir / f"metrics.{jg.slug}.json"


def _plan_generation(units: list[_Unit], sampling: SamplingSpec) -> list[tuple[_Unit, GenerationRequest]]:
    """Requests (one per paraphrase, n = its samples) for paraphrases with any sample missing."""
    todo = []
    for u in units:
        u.dir.mkdir(parents=True, exist_ok=True)
        suite_text = suite_to_yaml(u.suite)
        sp = u.dir / SUITE_FILE
        if not sp.exists() or sp.read_text(encoding="utf-8") != suite_text:
            atomic_write_text(sp, suite_text)
        u.samples = _read_rows(u.samples_path)
        have = {r["id"] for r in u.samples}
        for q in u.suite.questions:
            for p in range(len(q.paraphrases)):
                missing = [s for s in range(q.samples_per_paraphrase) if sample_id(q.id, p, s) not in have]
                if not missing:
                    continue
                req = GenerationRequest(
                    request_id=f"{u.ref.key}|{u.suite.name}|{q.id}|{p}",
                    checkpoint=u.ref,
                    messages=q.messages(p),
                    n=q.samples_per_paraphrase,
                    meta={"question": q, "paraphrase_index": p, "missing": missing},
                    sample_indices=missing,  # only these are generated (a larger --samples tops up)
                )
                todo.append((u, req))
    return todo


def _generate(
    backend: GenerationBackend,
    todo: list[tuple[_Unit, GenerationRequest]],
    sampling: SamplingSpec,
    chunk_size: int,
    progress: bool,
    answer_format: str = "auto",
) -> int:
    """Run the requests in chunks of about `chunk_size` samples; after each chunk append its samples, so a crash
    keeps what was generated (across checkpoints: a chunk may hold requests of several checkpoints).
    A reasoning model's row keeps the generated text as `raw_answer` and its final answer as `answer`."""
    from tqdm.auto import tqdm

    from emsweep.generate.answers import final_answer

    detect = getattr(backend, "answer_format", None)  # duck-typed backends without it are plain
    style = (detect() if detect else "plain") if answer_format == "auto" else answer_format

    total = sum(len(req.meta["missing"]) for _, req in todo)
    from emsweep.terminal import stage_task

    # a task line on the sweep's live display when there is one (same update/close as a tqdm bar)
    live = stage_task("  generate", total) if progress else None
    bar = live or tqdm(total=total, desc="generate", unit="sample", disable=not progress)
    done = 0
    chunks: list[list[tuple[_Unit, GenerationRequest]]] = [[]]
    size = 0
    for item in todo:  # chunks of about `chunk_size` samples; a request (one paraphrase) is never split
        if chunks[-1] and size + len(item[1].indices()) > chunk_size:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += len(item[1].indices())
    for chunk in chunks:
        outs = backend.generate([req for _, req in chunk], sampling, progress=False)
        per_unit: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for (u, req), out in zip(chunk, outs, strict=True):
            q: Question = req.meta["question"]
            p = req.meta["paraphrase_index"]
            for k, s in enumerate(req.meta["missing"]):  # output k is sample s (req.sample_indices)
                finish = out.finish_reasons[k] if k < len(out.finish_reasons) else None
                answer, finish = final_answer(out.texts[k], style, finish)
                row = {
                    "id": sample_id(q.id, p, s),
                    "question_id": q.id,
                    "paraphrase_index": p,
                    "sample_index": s,
                    "checkpoint": u.ref.name,
                    "step": u.ref.step,
                    "suite": u.suite.name,
                    "messages": req.messages,
                    "answer": answer,
                    **({"raw_answer": out.texts[k], "answer_format": style} if style != "plain" else {}),
                    "seed": out.seeds[k] if k < len(out.seeds) else None,
                    "finish_reason": finish,
                    "backend": backend.name,
                    "model": u.ref.model or (str(u.ref.path) if u.ref.path else u.ref.base_model),
                }
                per_unit[id(u)].append(row)
        units = {id(u): u for u, _ in chunk}
        for key, rows in per_unit.items():
            append_jsonl(units[key].samples_path, rows)
            units[key].samples.extend(rows)
            done += len(rows)
            bar.update(len(rows))
    bar.close()
    return done


def _expected_samples(u: _Unit) -> list[dict[str, Any]]:
    """The unit's sample rows that the suite asks for (extra rows from a larger earlier --samples are ignored)."""
    want = {sample_id(q.id, p, s) for q, p, s in u.expected()}
    by_id = {r["id"]: r for r in u.samples}
    missing = want - set(by_id)
    if missing:
        raise InputError(
            f"{u.samples_path}: {len(missing)} samples missing after generation (e.g. {sorted(missing)[0]})"
        )
    return [by_id[i] for i in sorted(want)]


def _judge_units(jg: _Judging, units: list[_Unit], chunk_size: int = DEFAULT_CHUNK) -> int:
    """Judge every (sample, metric) of `units` that this judge has not judged on this exact input; append per
    folder after each chunk, so a crash mid-judging keeps what was judged."""
    todo: list[tuple[Path, str, JudgeItem, str]] = []
    kind = _default_kind(jg.panel)
    for u in units:
        if not u.samples:
            u.samples = _read_rows(u.samples_path)
        path = _judgments_path(u.dir, jg)
        done = {
            (r.get("sample_id"), r.get("metric"), r.get("input_sha256"))
            for r in _read_rows(path)
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


def _write_metrics(u: _Unit, jg: _Judging, cell: str, params: MetricParams, backend_name: str | None) -> Path:
    samples = _expected_samples(u)
    kind = _default_kind(jg.panel)
    want = {(sid, item.metric): digest for sid, item, digest in _unit_items(u, kind)}
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in _read_rows(_judgments_path(u.dir, jg)):
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


@locked_stage("eval", "run_dir")  # two evals of one run: one does the work, the other reuses it
def judge_run(
    run_dir: str | os.PathLike[str],
    *,
    suites: Sequence[str] | None = None,
    checkpoints: str | Sequence[int] | None = "all",
    judge: Any = None,
    judge_model: str | None = None,
    judge_backend: str | None = None,
    judge_base_url: str | None = None,
    judge_cache: str | os.PathLike[str] | None = None,
    judge_options: dict[str, Any] | None = None,
    judge_spec: Any = None,
    batch_size: int | None = None,
    thresholds: MetricParams | dict[str, Any] | None = None,
    cell: str | None = None,
    progress: bool = True,
) -> EvalResult:
    """(Re)judge samples that `evaluate_run` already generated, e.g. with another judge; generates nothing.

    Suites are read back from each folder's `suite.yaml`; `suites` restricts to those names. The judge's rows go
    to `judgments.jsonl` if it is the folder's primary judge, else to `judgments.<slug>.jsonl` with
    `metrics.<slug>.json`. Only (sample, metric) pairs this judge has not judged on the same input are judged,
    so a rerun costs nothing.
    """
    run = CellPaths.of(run_dir)
    cell = cell or run.name
    if not isinstance(thresholds, MetricParams):
        thresholds = MetricParams.from_dict(thresholds)
    if not run.eval_root.is_dir():
        raise InputError(f"{run_dir}: no eval/ folder; run `emsweep eval` first to generate samples")
    from emsweep.layout import checkpoint_step

    units: list[_Unit] = []
    ck_dirs = sorted(
        (d for d in run.eval_root.iterdir() if d.is_dir() and checkpoint_step(d.name) is not None),
        key=lambda d: checkpoint_step(d.name) or 0,
    )
    steps_avail = [checkpoint_step(d.name) or 0 for d in ck_dirs]
    wanted_refs = select_checkpoints(
        [
            CheckpointRef(name=d.name, step=s, kind="base", base_model="")
            for d, s in zip(ck_dirs, steps_avail, strict=True)
        ],
        checkpoints,
    )
    wanted = {r.name for r in wanted_refs}
    for d in ck_dirs:
        if d.name not in wanted:
            continue
        for sd in sorted(p for p in d.iterdir() if p.is_dir() and (p / "samples.jsonl").exists()):
            if suites and sd.name not in suites:
                continue
            if not (sd / SUITE_FILE).exists():
                raise InputError(f"{sd}: no {SUITE_FILE}; rerun `emsweep eval` for this suite")
            suite = load_suite_yaml(sd / SUITE_FILE, name=sd.name)
            kind = "domain" if any(q.reference is not None for q in suite.questions) else "alignment"
            suite = Suite(name=suite.name, kind=kind, questions=suite.questions, source=suite.source)
            ref = CheckpointRef(name=d.name, step=checkpoint_step(d.name) or 0, kind="base", base_model="")
            units.append(_Unit(ref=ref, suite=suite, dir=sd, samples=_read_rows(sd / "samples.jsonl")))
    if not units:
        raise InputError(f"{run_dir}: no generated samples found for the requested checkpoints/suites")
    spec = judge_spec
    if judge is None and spec is None:
        if not judge_model:
            raise InputError("emsweep judge needs --judge MODEL")
        spec = _judge_spec(None, judge_model, judge_backend, judge_base_url, judge_options)
    jg = _open_judging(
        judge, spec, Path(judge_cache or default_cache_path(run_dir)), batch_size, progress, None
    )
    result = EvalResult(cell=cell, judge=jg.display)
    try:
        h0, m0 = jg.panel.cache_counts()
        result.judged = _judge_units(jg, units)
        h1, m1 = jg.panel.cache_counts()
        result.cache_hits, result.cache_misses = h1 - h0, m1 - m0
        for u in units:
            path = _write_metrics(u, jg, cell, thresholds, None)
            result.metrics[f"{u.ref.name}/{u.suite.name}"] = str(path)
    finally:
        if jg.own:
            jg.panel.close()
    log.info(result.summary().replace("eval ", "judge ", 1))
    return result
