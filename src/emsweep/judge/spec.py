"""The judge's recipe section (`eval.judge:`), built into a judge by emsweep.judge.registry.build_judge."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from emsweep.config import StrictModel
from emsweep.generate.spec import BackendName


class JudgeSpec(StrictModel):
    """The model judge (emsweep.judge.registry.build_judge): which model, on which backend, scored how.

    `kind` is the kind of the suite's 0-100 questions (`logprob`, Betley's method, or any registered kind);
    categorical and rule questions are chosen by the suite. `top_k`: logprobs read per position (OpenAI allows
    20); `min_number_mass`: a score is None when numbers 0-100 hold less probability (Betley: 0.25);
    `max_pruned_mass`: probability the digit trie may leave unexplored (exact backends only)."""

    model: str = "gpt-4o-2024-08-06"
    backend: BackendName = "openai"
    base_url: str | None = None
    engine: dict[str, Any] = Field(default_factory=dict)  # vLLM LLM(...) kwargs for the judge engine
    kind: str = "logprob"
    top_k: int = Field(20, ge=1)
    min_number_mass: float = Field(0.25, ge=0.0, le=1.0)
    max_pruned_mass: float = Field(2e-9, ge=0.0, lt=0.01)
    batch_size: int | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "top_logprobs" in data:
            raise ValueError(
                "`top_logprobs` is now `top_k` (the number of logprobs the judge reads per position); rename it"
            )
        return data
