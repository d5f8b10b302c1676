"""The model judge kinds: `logprob` (Betley's 0-100 expectation) and `categorical` (declared labels).

Both are views of one `LogprobJudge` engine (one loaded judge model, one cache); see judge/judge.py for the
arithmetic and docs/judge.md for the definitions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar

from emsweep.judge.base import JudgeItem, Judgment
from emsweep.judge.identity import JudgeIdentity
from emsweep.judge.judge import LogprobJudge


class _ModelKind:
    kind: ClassVar[str] = ""
    needs_model: ClassVar[bool] = True

    def __init__(self, engine: LogprobJudge | None) -> None:
        if engine is None:
            raise ValueError(f"judge kind {self.kind!r} needs a judge model")
        self.engine = engine

    def identity(self) -> JudgeIdentity:
        return replace(self.engine.identity, kind=self.kind)


class LogprobKind(_ModelKind):
    """0-100 scores: probability-weighted mean over the numbers the judge may answer; None under the mass rule."""

    kind: ClassVar[str] = "logprob"

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgment]:
        res = self.engine.score_numeric([it.prompt for it in items])
        return [
            Judgment(
                metric=it.metric,
                kind=self.kind,
                score=r.score,
                none_reason=r.none_reason,
                mass=r.number_mass,
                cached=r.cached,
            )
            for it, r in zip(items, res, strict=True)
        ]


class CategoricalKind(_ModelKind):
    """A label among the item's declared labels: probability of each label's token sequence, argmax label."""

    kind: ClassVar[str] = "categorical"

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgment]:
        out: list[Judgment | None] = [None] * len(items)
        groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            if len(it.labels) < 2:
                raise ValueError(f"categorical item for metric {it.metric!r} has fewer than two labels")
            groups[tuple(it.labels)].append(i)
        for labels, idxs in groups.items():
            res = self.engine.score_categorical([items[i].prompt for i in idxs], list(labels))
            for i, r in zip(idxs, res, strict=True):
                out[i] = Judgment(
                    metric=items[i].metric,
                    kind=self.kind,
                    label=r.label,
                    probs=r.probs,
                    none_reason=r.none_reason,
                    mass=1.0 - r.outside_mass,
                    cached=r.cached,
                )
        return [o for o in out if o is not None]
