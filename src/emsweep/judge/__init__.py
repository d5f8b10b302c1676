"""Judging: the `Judge` protocol and the registry of judge kinds (logprob 0-100, categorical, rule), Betley's logprob
scoring (multi-token numbers too), judge identity (content fingerprints), the judgment cache.

Entry points: `build_judge(spec)` (a JudgePanel from a recipe's `JudgeSpec`), `JUDGE_KINDS` (name -> "module:Class"),
`JudgeItem` / `Judgment` (what flows through a judge). `Judge` here is the protocol's older namesake, the logprob
engine (`LogprobJudge`), kept under that name for existing callers; the protocol is `emsweep.judge.base.Judge`.
This package imports no heavy library (torch, transformers).
"""

from emsweep.judge.base import JudgeItem, Judgment, RuleSpec
from emsweep.judge.cache import JudgeCache, cache_key
from emsweep.judge.identity import JudgeIdentity, model_fingerprint
from emsweep.judge.judge import (
    NONE_LABELS,
    CategoricalJudgment,
    Judge,
    LogprobJudge,
    NumericJudgment,
    placeholders,
    render_prompt,
)
from emsweep.judge.registry import JUDGE_KINDS, JudgePanel, build_judge, judge_kind_class

__all__ = [
    "JUDGE_KINDS",
    "NONE_LABELS",
    "CategoricalJudgment",
    "Judge",
    "JudgeCache",
    "JudgeIdentity",
    "JudgeItem",
    "JudgePanel",
    "Judgment",
    "LogprobJudge",
    "NumericJudgment",
    "RuleSpec",
    "build_judge",
    "cache_key",
    "judge_kind_class",
    "model_fingerprint",
    "placeholders",
    "render_prompt",
]
