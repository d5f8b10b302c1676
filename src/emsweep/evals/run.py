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
from emsweep.evals.suites import Question, Suite, load_suite_yaml, resolve_suite, suite_to_yaml
from emsweep.generate.base import GenerationBackend, GenerationRequest, SamplingSpec
from emsweep.io import (
    InputError,
    append_jsonl,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    is_done,
    mark_done,
    read_jsonl,
    read_marker,
)
from emsweep.layout import CellPaths, CheckpointRef

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


def _cache_counts(judge: Any) -> tuple[int, int]:
    """(hits, misses) of the judge's cache so far."""
    cache = getattr(judge, "cache", None)
    if cache is not None and hasattr(cache, "hits") and hasattr(cache, "misses"):
        return int(cache.hits), int(cache.misses)
    stats = getattr(judge, "stats", None)
    if callable(stats):
        stats = stats()
    if stats is None:
        cache = getattr(judge, "cache", None)
        stats = getattr(cache, "stats", None) if cache is not None else None
        if callable(stats):
            stats = stats()
    if stats is None:
        return 0, 0
    if isinstance(stats, dict):
        return int(stats.get("hits", 0)), int(stats.get("misses", 0))
    return int(getattr(stats, "hits", 0)), int(getattr(stats, "misses", 0))


def _judge_id(judge: Any) -> str:
    for attr in ("model_id", "judge_id", "model"):
        v = getattr(judge, attr, None)
        if isinstance(v, str) and v:
            return v
    backend = getattr(judge, "backend", None)
    return backend.model_id if backend is not None else type(judge).__name__


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
    """A Judge on a fresh backend of `backend_kind` with a persistent cache at `cache_path`.

    `judge_options` go to `Judge(...)` (e.g. `min_number_mass`, Betley's 0.25 rule; `top_k`)."""
    from emsweep.generate.factory import make_backend
    from emsweep.judge import Judge, JudgeCache

    backend = make_backend(backend_kind, model, base_url=base_url, engine=engine, batch_size=batch_size)
    cache = JudgeCache(cache_path) if cache_path is not None else None
    try:
        return Judge(backend, cache=cache, progress=progress, **(judge_options or {}))
    except TypeError as exc:
        backend.close()
        raise InputError(f"judge options {sorted(judge_options or {})}: {exc}") from None


def default_cache_path(run_dir: str | os.PathLike[str]) -> Path:
    """`$EMSWEEP_JUDGE_CACHE`, else `<run_dir>/eval/judge_cache.sqlite` (sweeps pass one shared file)."""
    env = os.environ.get("EMSWEEP_JUDGE_CACHE")
    return Path(env) if env else CellPaths.of(run_dir).eval_root / "judge_cache.sqlite"


def _judge_rows(
    judge: Any, jid: str, items: list[tuple[Question, str, str]], progress: bool
) -> list[dict[str, Any]]:
    """Judge (question, metric, prompt) items; rows {metric, score, none_reason, mass, judge[, label, probs]}."""
    out: list[dict[str, Any] | None] = [None] * len(items)
    numeric = [i for i, (q, _, _) in enumerate(items) if not q.categorical]
    if numeric:
        res = judge.score_numeric([items[i][2] for i in numeric])
        for i, r in zip(numeric, res, strict=True):
            out[i] = {
                "metric": items[i][1],
                "score": _get(r, "score"),
                "none_reason": _get(r, "none_reason"),
                "mass": _get(r, "number_mass"),
                "judge": jid,
            }
    by_labels: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, (q, metric, _) in enumerate(items):
        if q.categorical:
            by_labels[tuple(q.judge_labels[metric])].append(i)
    for labels, idxs in by_labels.items():
        res = judge.score_categorical([items[i][2] for i in idxs], list(labels))
        for i, r in zip(idxs, res, strict=True):
            out[i] = {
                "metric": items[i][1],
                "score": None,
                "label": _get(r, "label"),
                "probs": _get(r, "probs"),
                "none_reason": _get(r, "none_reason"),
                "mass": None if _get(r, "outside_mass") is None else 1.0 - float(_get(r, "outside_mass")),
                "judge": jid,
            }
    return [o for o in out if o is not None]


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


# --- the stage --------------------------------------------------------------------------------------------------


def _resolve_base_model(run: CellPaths, base_model: str | None, recipe: Any) -> str | None:
    """Explicit > cell.json's `base_model` (what training resolved) > the recipe's model path."""
    import json

    if base_model:
        return base_model
    if run.cell_json.exists():
        try:
            recorded = json.loads(run.cell_json.read_text(encoding="utf-8")).get("base_model")
        except (json.JSONDecodeError, AttributeError):
            recorded = None
        if recorded:
            return str(recorded)
    if recipe is not None:
        return recipe.model.path
    return None


def cell_recipe(run_dir: str | os.PathLike[str]) -> Any:
    """The resolved recipe recorded in `<run_dir>/cell.json` by the sweep runner, or None."""
    import json

    from emsweep.recipe import Recipe

    p = CellPaths.of(run_dir).cell_json
    if not p.exists():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: malformed JSON ({exc.msg})") from None
    rec = data.get("recipe") if isinstance(data, dict) else None
    if not isinstance(rec, dict):
        return None
    try:
        return Recipe.model_validate(rec)
    except Exception as exc:
        raise InputError(f"{p}: recipe does not validate: {exc}") from None


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


def _fingerprint(unit: _Unit, sampling: SamplingSpec, jid: str) -> dict[str, Any]:
    text = suite_to_yaml(unit.suite)
    return {
        "suite_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "n_expected": unit.suite.n_samples,
        "sampling": sampling.model_dump(),
        "judge": jid,
    }


def evaluate_run(
    run_dir: str | os.PathLike[str],
    suites: Sequence[str | Suite],
    *,
    checkpoints: str | Sequence[int] | Sequence[CheckpointRef] | None = None,
    backend: GenerationBackend | None = None,
    backend_kind: str | None = None,
    base_model: str | None = None,
    base_url: str | None = None,
    judge: Any = None,
    judge_model: str | None = None,
    judge_backend: str | None = None,
    judge_base_url: str | None = None,
    judge_cache: str | os.PathLike[str] | None = None,
    judge_options: dict[str, Any] | None = None,
    sampling: SamplingSpec | dict[str, Any] | None = None,
    samples_per_paraphrase: int | None = None,
    batch_size: int | None = None,
    thresholds: MetricParams | dict[str, Any] | None = None,
    recipe: Any = None,
    cell: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = True,
) -> EvalResult:
    """Evaluate the checkpoints of one run on `suites`; see the module docstring for the files.

    Anything not given comes from `recipe.eval` (the sweep runner passes the cell's recipe), then from defaults.
    `checkpoints`: "all" | "last" | "base" | "0,25,50" | list of steps | list of CheckpointRef (e.g. API models).
    `backend` / `judge`: ready objects (reused, not closed); otherwise created from `backend_kind` + base model and
    `judge_model` + `judge_backend`, and closed at the end.
    """
    from emsweep.train.checkpoints import list_checkpoints

    run_dir = Path(run_dir)
    run = CellPaths.of(run_dir)
    if recipe is None:
        recipe = cell_recipe(run_dir)
    ev = recipe.eval if recipe is not None else None
    cell = cell or run.name
    checkpoints = checkpoints if checkpoints is not None else (ev.checkpoints if ev else "all")
    backend_kind = backend_kind or (ev.backend if ev else "hf")
    base_url = base_url or (ev.base_url if ev else None)
    samples_per_paraphrase = samples_per_paraphrase or (ev.samples_per_paraphrase if ev else None)
    batch_size = batch_size or (ev.batch_size if ev else None)
    if sampling is None:
        sampling = SamplingSpec(**(ev.sampling if ev else {}))
    elif isinstance(sampling, dict):
        sampling = SamplingSpec(**sampling)
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
        found = list_checkpoints(run_dir, base_model=_resolve_base_model(run, base_model, recipe), cell=cell)
        refs = select_checkpoints(found, checkpoints)  # type: ignore[arg-type]
    if not refs:
        raise InputError(f"{run_dir}: no checkpoints to evaluate")
    for r in refs:
        if r.kind != "api" and not r.base_model:
            raise InputError(
                f"{run_dir}: the base model of {r.name} is unknown (no cell.json with base_model); pass --base-model"
            )

    own_judge = judge is None
    if own_judge:
        jspec = ev.judge if ev else None
        if judge_model and not judge_backend:
            # a local folder is an HF model; a name defaults to the recipe's judge backend
            judge_backend = "hf" if Path(judge_model).exists() else (jspec.backend if jspec else "openai")
        judge_model = judge_model or (jspec.model if jspec else None)
        if not judge_model:
            raise InputError(
                "no judge: pass --judge MODEL (and --judge-backend hf|vllm|openai|openai-compatible)"
            )
        judge_backend = judge_backend or (jspec.backend if jspec else "hf")
        judge_base_url = judge_base_url or (jspec.base_url if jspec else None)
    jid = _judge_id(judge) if judge is not None else str(judge_model)

    units = [_Unit(ref=r, suite=s, dir=run.eval_dir(r.name, s.name)) for r in refs for s in suite_objs]
    result = EvalResult(cell=cell, judge=jid)
    pending: list[_Unit] = []
    for u in units:
        marker, _ = _marker_for(u.dir, jid)
        info = read_marker(u.dir, marker)
        if info is not None and info.get("fingerprint") == _fingerprint(u, sampling, jid):
            result.skipped += 1
            result.metrics[f"{u.ref.name}/{u.suite.name}"] = str(u.dir / info.get("metrics", "metrics.json"))
        else:
            pending.append(u)
    if not pending:
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
            result.generated = _generate(backend, todo, sampling, chunk_size, progress)
        # 2. judging
        if judge is None:
            judge = make_judge(
                str(judge_model),
                str(judge_backend),
                cache_path=judge_cache or default_cache_path(run_dir),
                base_url=judge_base_url,
                engine=dict(ev.judge.engine) if ev else None,
                batch_size=batch_size,
                progress=progress,
                judge_options=judge_options,
            )
            jid = _judge_id(judge)
            result.judge = jid
        h0, m0 = _cache_counts(judge)
        result.judged = _judge_units(judge, jid, pending, progress, chunk_size)
        h1, m1 = _cache_counts(judge)
        result.cache_hits, result.cache_misses = h1 - h0, m1 - m0
        # 3. metrics
        backend_name = backend.name if backend is not None else backend_kind
        for u in pending:
            path = _write_metrics(u, jid, cell, thresholds, backend_name)
            marker, _ = _marker_for(u.dir, jid)
            mark_done(u.dir, marker, {"fingerprint": _fingerprint(u, sampling, jid), "metrics": path.name})
            result.metrics[f"{u.ref.name}/{u.suite.name}"] = str(path)
    finally:
        if own_backend and backend is not None:
            backend.close()
        if own_judge and judge is not None:
            _close_judge(judge)
    log.info(result.summary())
    return result


def _close_judge(judge: Any) -> None:
    close = getattr(judge, "close", None)
    if callable(close):
        close()
        return
    b = getattr(judge, "backend", None)
    if b is not None:
        b.close()


def _marker_for(eval_dir: Path, jid: str) -> tuple[str, bool]:
    """(done-marker name, is this judge the folder's primary judge)."""
    primary = _primary_judge(eval_dir)
    if primary is None or primary == jid:
        return "eval", True
    return f"eval.{judge_slug(jid)}", False


def _primary_judge(eval_dir: Path) -> str | None:
    """The judge that owns `judgments.jsonl` (the first one that judged this folder)."""
    info = read_marker(eval_dir, "primary_judge")
    return info.get("judge") if info else None


def _judgments_path(eval_dir: Path, jid: str) -> Path:
    primary = _primary_judge(eval_dir)
    if primary is None:
        mark_done(eval_dir, "primary_judge", {"judge": jid})
        primary = jid
    if primary == jid:
        return eval_dir / PRIMARY_JUDGMENTS
    return eval_dir / f"judgments.{judge_slug(jid)}.jsonl"


def _metrics_path(eval_dir: Path, jid: str) -> Path:
    primary = _primary_judge(eval_dir)
    if primary is None or primary == jid:
        return eval_dir / "metrics.json"
    return eval_dir / f"metrics.{judge_slug(jid)}.json"


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
                )
                todo.append((u, req))
    return todo


def _generate(
    backend: GenerationBackend,
    todo: list[tuple[_Unit, GenerationRequest]],
    sampling: SamplingSpec,
    chunk_size: int,
    progress: bool,
) -> int:
    """Run the requests in chunks of about `chunk_size` samples; after each chunk append its samples, so a crash
    keeps what was generated (across checkpoints: a chunk may hold requests of several checkpoints)."""
    from tqdm.auto import tqdm

    total = sum(len(req.meta["missing"]) for _, req in todo)
    bar = tqdm(total=total, desc="generate", unit="sample", disable=not progress)
    done = 0
    chunks: list[list[tuple[_Unit, GenerationRequest]]] = [[]]
    size = 0
    for item in todo:  # chunks of about `chunk_size` samples; a request (one paraphrase) is never split
        if chunks[-1] and size + item[1].n > chunk_size:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += item[1].n
    for chunk in chunks:
        outs = backend.generate([req for _, req in chunk], sampling, progress=False)
        per_unit: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for (u, req), out in zip(chunk, outs, strict=True):
            q: Question = req.meta["question"]
            p = req.meta["paraphrase_index"]
            for s in req.meta["missing"]:
                row = {
                    "id": sample_id(q.id, p, s),
                    "question_id": q.id,
                    "paraphrase_index": p,
                    "sample_index": s,
                    "checkpoint": u.ref.name,
                    "step": u.ref.step,
                    "suite": u.suite.name,
                    "messages": req.messages,
                    "answer": out.texts[s],
                    "seed": out.seeds[s] if s < len(out.seeds) else None,
                    "finish_reason": out.finish_reasons[s] if s < len(out.finish_reasons) else None,
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


def _judge_units(
    judge: Any, jid: str, units: list[_Unit], progress: bool, chunk_size: int = DEFAULT_CHUNK
) -> int:
    """Judge every (sample, metric) of `units` not yet judged by `jid`, in one batched call; append per folder."""
    items: list[tuple[Question, str, str]] = []
    where: list[tuple[_Unit, Path, str]] = []
    for u in units:
        if not u.samples:
            u.samples = _read_rows(u.samples_path)
        path = _judgments_path(u.dir, jid)
        done = {(r["sample_id"], r["metric"]) for r in _read_rows(path)}
        qs = {q.id: q for q in u.suite.questions}
        for row in _expected_samples(u):
            q = qs[row["question_id"]]
            for metric in q.judge_prompts:
                if (row["id"], metric) in done:
                    continue
                items.append((q, metric, q.judge_prompt(metric, row["paraphrase_index"], row["answer"])))
                where.append((u, path, row["id"]))
    if not items:
        return 0
    # judge in chunks and append after each, so a crash mid-judging keeps what was judged
    n = 0
    chunk = max(1, chunk_size)
    for start in range(0, len(items), chunk):
        rows = _judge_rows(judge, jid, items[start : start + chunk], progress)
        per_path: dict[Path, list[dict[str, Any]]] = defaultdict(list)
        for (_, path, sid), row in zip(where[start : start + chunk], rows, strict=True):
            per_path[path].append({"sample_id": sid, **row})
        for path, prow in per_path.items():
            append_jsonl(path, prow)
        n += len(rows)
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


def _write_metrics(u: _Unit, jid: str, cell: str, params: MetricParams, backend_name: str | None) -> Path:
    samples = _expected_samples(u)
    judgments = [r for r in _read_rows(_judgments_path(u.dir, jid)) if r.get("judge") in (None, jid)]
    exact = _exact_grades(u.suite, samples)
    m = compute_metrics(
        samples,
        judgments,
        cell=cell,
        checkpoint=u.ref.name,
        step=u.ref.step,
        suite=u.suite.name,
        suite_kind=u.suite.kind,
        params=params,
        judge=jid,
        backend=samples[0].get("backend") if samples else backend_name,
        exact=exact,
    )
    path = _metrics_path(u.dir, jid)
    atomic_write_json(path, m.model_dump(mode="json"))
    return path


def judge_run(
    run_dir: str | os.PathLike[str],
    *,
    suites: Sequence[str] | None = None,
    checkpoints: str | Sequence[int] | None = "all",
    judge: Any = None,
    judge_model: str | None = None,
    judge_backend: str = "hf",
    judge_base_url: str | None = None,
    judge_cache: str | os.PathLike[str] | None = None,
    judge_options: dict[str, Any] | None = None,
    batch_size: int | None = None,
    thresholds: MetricParams | dict[str, Any] | None = None,
    cell: str | None = None,
    progress: bool = True,
) -> EvalResult:
    """(Re)judge samples that `evaluate_run` already generated, e.g. with another judge; generates nothing.

    Suites are read back from each folder's `suite.yaml`; `suites` restricts to those names. The judge's rows go
    to `judgments.jsonl` if it is the folder's primary judge, else to `judgments.<slug>.jsonl` with
    `metrics.<slug>.json`. Only missing (sample, metric) pairs are judged, so a rerun costs nothing.
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
    own = judge is None
    if own:
        if not judge_model:
            raise InputError("emsweep judge needs --judge MODEL")
        judge = make_judge(
            judge_model,
            judge_backend,
            cache_path=judge_cache or default_cache_path(run_dir),
            base_url=judge_base_url,
            batch_size=batch_size,
            progress=progress,
            judge_options=judge_options,
        )
    jid = _judge_id(judge)
    result = EvalResult(cell=cell, judge=jid)
    try:
        h0, m0 = _cache_counts(judge)
        result.judged = _judge_units(judge, jid, units, progress)
        h1, m1 = _cache_counts(judge)
        result.cache_hits, result.cache_misses = h1 - h0, m1 - m0
        for u in units:
            path = _write_metrics(u, jid, cell, thresholds, None)
            result.metrics[f"{u.ref.name}/{u.suite.name}"] = str(path)
    finally:
        if own:
            _close_judge(judge)
    log.info(result.summary().replace("eval ", "judge ", 1))
    return result


def is_evaluated(eval_dir: str | os.PathLike[str]) -> bool:
    """Whether a checkpoint x suite folder has finished (primary judge)."""
    return is_done(eval_dir, "eval")
