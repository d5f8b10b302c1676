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

This module holds the stage's two entry points (`evaluate_run`, `judge_run`) and the resolution of what a call
was told (EvalOptions over the recipe's `eval:` over defaults). The folder record is evals/units.py, generation
evals/generation.py, judging and metrics evals/judging.py. The stage reads only the `eval:` section (and the
model path) of a recipe: it takes them from the caller's recipe or validates just them from cell.json.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emsweep.evals.generation import generate_samples, plan_generation, resolve_answer_format
from emsweep.evals.judging import (
    default_cache_path,
    judge_units,
    marker_for,
    needs_model,
    open_judging,
    resolve_judge_spec,
    write_metrics,
)
from emsweep.evals.metrics import MetricParams
from emsweep.evals.registry import suite_runner
from emsweep.evals.spec import EvalSpec
from emsweep.evals.suites import Suite, load_suite_yaml, resolve_suite, suite_to_yaml
from emsweep.evals.units import DEFAULT_CHUNK, SUITE_FILE, EvalResult, Unit, read_rows, select_checkpoints
from emsweep.generate.base import GenerationBackend, SamplingSpec
from emsweep.io import InputError, mark_done, read_marker
from emsweep.layout import CellPaths, CheckpointRef, read_cell
from emsweep.lock import locked_stage

if TYPE_CHECKING:
    from emsweep.judge.spec import JudgeSpec
    from emsweep.recipe import Recipe

log = logging.getLogger(__name__)


# --- what a call was told ---------------------------------------------------------------------------------------


def resolve_base_model(run: CellPaths, base_model: str | None, model_path: str | None) -> str | None:
    """Explicit > cell.json's `base_model` (what training resolved) > the recipe's model path."""
    if base_model:
        return base_model
    recorded = read_cell(run.root, strict=False).base_model
    if recorded:
        return recorded
    return model_path


def eval_settings(run_dir: str | os.PathLike[str], recipe: Recipe | None) -> tuple[EvalSpec | None, str | None]:
    """(the `eval:` section, the model path) of a run: from `recipe` when the caller has it (the sweep runner, the
    CLI), else from the recipe recorded in `<run_dir>/cell.json`, of which only those two parts are read (the
    stage does not load whole recipes); (None, None) when cell.json records no recipe."""
    if recipe is not None:
        return recipe.eval, recipe.model.path
    cell = read_cell(run_dir)
    rec = cell.recipe
    if rec is None:
        return None, None
    try:
        ev = EvalSpec.model_validate(rec.get("eval") or {})
    except Exception as exc:
        raise InputError(f"{cell.path}: the recipe's eval section does not validate: {exc}") from None
    model = rec.get("model")
    path = model.get("path") if isinstance(model, dict) else None
    return ev, (str(path) if path else None)


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


def _fingerprint(unit: Unit, sampling: SamplingSpec, judge_id: str, answer_format: str) -> dict[str, Any]:
    """What a done folder was made with; any change reopens it. The answer format is part of it when set
    explicitly (`auto` reads the same model's template every time, and leaves older markers valid)."""
    text = suite_to_yaml(unit.suite)
    return {
        "suite_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "n_expected": unit.suite.n_samples,
        "sampling": sampling.model_dump(),
        "judge_id": judge_id,
        **({"answer_format": answer_format} if answer_format != "auto" else {}),
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
    judge: JudgeSpec | None = None
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


# --- the stage --------------------------------------------------------------------------------------------------


@locked_stage("eval", "run_dir")  # two evals of one run: one does the work, the other reuses it
def evaluate_run(
    run_dir: str | os.PathLike[str],
    suites: Sequence[str | Suite],
    options: EvalOptions | None = None,
    *,
    backend: GenerationBackend | None = None,
    judge: Any = None,
    recipe: Recipe | None = None,
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
    ev, model_path = eval_settings(run_dir, recipe)
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
        found = list_checkpoints(run_dir, base_model=resolve_base_model(run, o.base_model, model_path), cell=cell)
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
        spec = resolve_judge_spec(
            ev.judge if ev else None, o.judge_model, o.judge_backend, o.judge_base_url, o.judge_options
        )
    if judge is None and spec is None and any(needs_model(q) for s in suite_objs for q in s.questions):
        raise InputError(
            "the suites have questions judged by a model, but no judge model was given: pass --judge MODEL "
            "(or set eval.judge.model in the recipe)"
        )
    jg = open_judging(
        judge, spec, Path(o.judge_cache or default_cache_path(run_dir)), batch_size, o.progress, None
    )

    fmt = o.answer_format or (ev.answer_format if ev else "auto")
    units = [Unit(ref=r, suite=s, dir=run.eval_dir(r.name, s.name)) for r in refs for s in suite_objs]
    result = EvalResult(cell=cell, judge=jg.display)
    pending: list[Unit] = []
    for u in units:
        marker, _ = marker_for(u.dir, jg)
        info = read_marker(u.dir, marker)
        if info is not None and info.get("fingerprint") == _fingerprint(u, sampling, jg.id, fmt):
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
        local_models = sorted({u.ref.base_model for u in pending if u.ref.kind != "api"})
        style = resolve_answer_format(fmt, backend, backend_kind, local_models[0] if local_models else None)
        todo = plan_generation(pending, sampling, style)
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
            result.generated = generate_samples(backend, todo, sampling, o.chunk_size, o.progress, style or fmt)
        # 2. judging
        h0, m0 = jg.panel.cache_counts()
        result.judged = judge_units(jg, pending, o.chunk_size)
        h1, m1 = jg.panel.cache_counts()
        result.cache_hits, result.cache_misses = h1 - h0, m1 - m0
        # 3. metrics
        backend_name = backend.name if backend is not None else backend_kind
        for u in pending:
            path = write_metrics(u, jg, cell, thresholds, backend_name)
            marker, _ = marker_for(u.dir, jg)
            mark_done(u.dir, marker, {"fingerprint": _fingerprint(u, sampling, jg.id, fmt), "metrics": path.name})
            result.metrics[f"{u.ref.name}/{u.suite.name}"] = str(path)
    finally:
        if own_backend and backend is not None:
            backend.close()
        if jg.own:
            jg.panel.close()
    log.info(result.summary())
    return result


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
    judge_spec: JudgeSpec | None = None,
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

    units: list[Unit] = []
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
            units.append(Unit(ref=ref, suite=suite, dir=sd, samples=read_rows(sd / "samples.jsonl")))
    if not units:
        raise InputError(f"{run_dir}: no generated samples found for the requested checkpoints/suites")
    spec = judge_spec
    if judge is None and spec is None:
        if not judge_model:
            raise InputError("emsweep judge needs --judge MODEL")
        spec = resolve_judge_spec(None, judge_model, judge_backend, judge_base_url, judge_options)
    jg = open_judging(
        judge, spec, Path(judge_cache or default_cache_path(run_dir)), batch_size, progress, None
    )
    result = EvalResult(cell=cell, judge=jg.display)
    try:
        h0, m0 = jg.panel.cache_counts()
        result.judged = judge_units(jg, units)
        h1, m1 = jg.panel.cache_counts()
        result.cache_hits, result.cache_misses = h1 - h0, m1 - m0
        for u in units:
            path = write_metrics(u, jg, cell, thresholds, None)
            result.metrics[f"{u.ref.name}/{u.suite.name}"] = str(path)
    finally:
        if jg.own:
            jg.panel.close()
    log.info(result.summary().replace("eval ", "judge ", 1))
    return result
