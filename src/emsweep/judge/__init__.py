"""Judge prompts, Betley's logprob scoring (multi-token numbers too), categorical judges, the judgment cache.

Import what you need from the submodules; this package imports no heavy library (torch, transformers).
"""

from emsweep.judge.cache import JudgeCache, cache_key
from emsweep.judge.judge import (
    NONE_LABELS,
    CategoricalJudgment,
    Judge,
    NumericJudgment,
    placeholders,
    render_prompt,
)

__all__ = [
    "NONE_LABELS",
    "CategoricalJudgment",
    "Judge",
    "JudgeCache",
    "NumericJudgment",
    "cache_key",
    "placeholders",
    "render_prompt",
]
