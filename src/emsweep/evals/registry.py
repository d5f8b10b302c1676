"""Suite formats by name (lazy "module:function" entries, as lm-evaluation-harness registers models and tasks).

A loader is `fn(request: SuiteRequest) -> Suite` (questions that the eval stage generates answers for and judges).
`resolve_suite` picks the format of a `--suite` value: `FORMAT:ARG` (or `NAME=FORMAT:ARG`) for any registered
format; `task`; `domain` or `NAME=PATH.jsonl`; else `yaml` (Betley's schema: a path, `NAME=PATH`, a builtin
name or one found in $EMSWEEP_SUITE_PATH). A runner (`SUITE_RUNNERS`) is not loaded as questions: `evaluate_run`
hands the run to it (`lm_eval:<task>`: lm-evaluation-harness). Adding a format is one module with a loader plus
one line here (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emsweep.registry import load_entry

SUITE_LOADERS: dict[str, str] = {
    "yaml": "emsweep.evals.suites:load_yaml_request",  # Betley et al.'s question YAML (+ emsweep extensions)
    "domain": "emsweep.evals.suites:load_domain_request",  # a held-out JSONL split, graded against references
    "task": "emsweep.evals.suites:load_task_request",  # the checkpoint study's task adoption (data/task_heldout)
}
SUITE_RUNNERS: dict[str, str] = {
    "lm_eval": "emsweep.evals.lm_eval:evaluate_with_lm_eval",  # EleutherAI's lm-evaluation-harness tasks
}


@dataclass(frozen=True)
class SuiteRequest:
    """What a loader gets: the `--suite` value, the suite's name (its results folder), the argument (a path, or
    what follows `FORMAT:`), the run folder when there is one, and the sample-count overrides."""

    spec: str
    name: str
    arg: str
    run_dir: Path | None = None
    samples_per_paraphrase: int | None = None
    domain_samples: int | None = None


def _load(table: dict[str, str], what: str, name: str) -> Callable[..., Any]:
    return load_entry(table, what, name)


def suite_loader(name: str) -> Callable[[SuiteRequest], Any]:
    """The loader registered under `name`."""
    return _load(SUITE_LOADERS, "suite format", name)


def split_format(value: str) -> tuple[str, str] | None:
    """`FORMAT:ARG` -> (FORMAT, ARG) when FORMAT is a registered loader or runner, else None."""
    head, sep, tail = value.partition(":")
    if sep and (head in SUITE_LOADERS or head in SUITE_RUNNERS):
        return head, tail
    return None


def suite_runner(suites: Sequence[object]) -> Callable[..., Any] | None:
    """The runner that takes over a run whose suite list names one (`lm_eval:...`), else None."""
    for s in suites:
        if isinstance(s, str) and (fmt := split_format(s)) is not None and fmt[0] in SUITE_RUNNERS:
            return _load(SUITE_RUNNERS, "suite runner", fmt[0])
    return None
