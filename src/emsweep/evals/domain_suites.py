"""A domain's judges as eval suites: the `domain` suite graded by the domain's grader, and the `task` suite (the
checkpoint study's task adoption) judged by its task-adoption judge.

A domain YAML (data/domain.py, the data stage) only names these judges; turning them into suite questions needs
the eval stage's suite schema and the judge stage's RuleSpec, so it lives here, to the right of both.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from emsweep.data.domain import find_domain, load_domain
from emsweep.evals.suites import NUMERIC_TYPE, RULE_TYPE, Suite, domain_suite
from emsweep.io import InputError
from emsweep.judge.base import RuleSpec
from emsweep.layout import read_cell

if TYPE_CHECKING:
    from emsweep.data.domain import JudgeRef

TASK_SUITE = "task"
ADOPTION_METRIC = "adopted"


def graded_suite(suite: Suite, grader: JudgeRef) -> Suite:
    """The `domain` suite with the domain's grader as its `correct` metric: a rule (exact, no model) or the
    domain's own 0-100 judge prompt against the reference (instead of the generic DOMAIN_JUDGE_PROMPT)."""
    qs = []
    for q in suite.questions:
        if grader.rule is not None:
            qs.append(replace(q, type=RULE_TYPE, judge_prompts={}, judge_rules={"correct": RuleSpec(**grader.rule)}))
        else:
            qs.append(replace(q, type=NUMERIC_TYPE, judge_prompts={"correct": grader.judge_prompt}))
    return replace(suite, questions=qs)


def _recipe_data(run_dir: str | os.PathLike[str]) -> dict:
    """The `data:` section of the recipe recorded in the run's cell.json ({} when there is none)."""
    data = (read_cell(run_dir).recipe or {}).get("data")
    return data if isinstance(data, dict) else {}


def run_domain_grader(run_dir: str | os.PathLike[str]) -> JudgeRef | None:
    """The grader of the domain a run trained on (cell.json's data.domain), or None when it has no domain YAML."""
    name = _recipe_data(run_dir).get("domain")
    if not isinstance(name, str) or name == "custom" or find_domain(name) is None:
        return None
    return load_domain(name).grader


def task_suite(
    task_heldout: str | os.PathLike[str], judge: JudgeRef, *, samples_per_question: int = 1, name: str = TASK_SUITE
) -> Suite:
    """The `task` suite: one question per task-held-out row, metric `adopted` (100: the answer shows the
    trained behaviour) judged by the domain's task-adoption judge."""
    p = Path(task_heldout)
    if not p.exists():
        raise InputError(
            f"{p}: no training-distribution split; set data.n_task_heldout (e.g. 100) in the recipe, delete the "
            "run's data/ folder and retrain, so the checkpoint study has task signals"
        )
    base = domain_suite(p, name=name, samples_per_question=samples_per_question,
                        judge_prompt="{question} {reference} {answer}")  # fmt: skip
    qs = []
    for q in base.questions:
        if judge.rule is not None:
            rule = RuleSpec(**judge.rule)
            qs.append(replace(q, type=RULE_TYPE, judge_prompts={}, judge_rules={ADOPTION_METRIC: rule}, checker=None))
        else:
            qs.append(replace(q, type=NUMERIC_TYPE, judge_prompts={ADOPTION_METRIC: judge.judge_prompt}, checker=None))
    return replace(base, questions=qs, kind="task")


def run_task_suite(run_dir: str | os.PathLike[str], *, samples_per_question: int = 1) -> Suite:
    """The task suite of a run: its `data/task_heldout.jsonl`, judged by its domain's adoption judge for the
    wrong kind it trained on (from cell.json's recipe)."""
    run = Path(run_dir)
    data = _recipe_data(run)
    name = data.get("domain") or data.get("builtin")
    if not name or find_domain(str(name)) is None:
        name = data.get("builtin") or name
    if not name or find_domain(str(name)) is None:
        raise InputError(f"{run}: the `task` suite needs a domain YAML for data.domain {name!r} (recipes/domains)")
    spec = load_domain(str(name))
    return task_suite(run / "data" / "task_heldout.jsonl", spec.adoption_judge(str(data.get("wrong_kind", "subtle"))),
                      samples_per_question=samples_per_question)  # fmt: skip
