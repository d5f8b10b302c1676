"""The one interface every judge kind implements, and what flows through it.

evals/ renders a `JudgeItem` per (sample, metric) and asks a judge for `Judgment`s; judge kinds (judge/kinds.py,
judge/rules.py, or any class registered in judge/registry.py) turn items into judgments. judge/ never imports
evals/: a rule callable receives the evals `Question` as an opaque `context`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from emsweep.judge.identity import JudgeIdentity


@dataclass(frozen=True)
class RuleSpec:
    """One metric of a rule-judged question: exactly one of `regex` / `exact` / `callable` ("module:function")."""

    regex: str | None = None
    exact: str | None = None
    callable: str | None = None
    match: float | str | None = 100.0
    no_match: float | str | None = 0.0
    ignore_case: bool = False

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v is not False}


@dataclass(frozen=True)
class JudgeItem:
    """One thing to judge: a metric of one answer. `prompt` is the rendered judge prompt (empty for rules)."""

    metric: str
    prompt: str
    answer: str
    kind: str = "logprob"
    labels: tuple[str, ...] = ()  # categorical kinds: the labels the judge may answer
    rule: RuleSpec | None = None  # rule kind
    context: Any = None  # the evals Question (rule callables receive it)


@dataclass
class Judgment:
    """A judge's verdict on one item: a 0-100 `score`, or a `label` (with `probs`), or None with a reason."""

    metric: str
    kind: str
    score: float | None = None
    label: str | None = None
    probs: dict[str, float] | None = None
    none_reason: str | None = None
    mass: float | None = None  # probability on valid answers (numbers 0-100, or the labels); 1 for rules
    cached: bool = False

    def row(self) -> dict[str, Any]:
        """The judgments.jsonl fields (evals adds sample_id, judge and judge_identity)."""
        out: dict[str, Any] = {
            "metric": self.metric,
            "kind": self.kind,
            "score": self.score,
            "none_reason": self.none_reason,
            "mass": self.mass,
        }
        if self.label is not None or self.probs is not None:
            out["label"] = self.label
            out["probs"] = self.probs
        return out


@runtime_checkable
class Judge(Protocol):
    """A judge kind: judges items of its kind, says what it is. Registered in judge/registry.py by name."""

    kind: ClassVar[str]
    needs_model: ClassVar[bool]  # True: built on the model judge (LogprobJudge); False: no model (rules)

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgment]: ...

    def identity(self) -> JudgeIdentity: ...
