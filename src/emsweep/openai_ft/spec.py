"""The OpenAI arm's recipe section (`openai:`): the fine-tuning job's base model and hyperparameters."""

from __future__ import annotations

from emsweep.config import StrictModel


class OpenAISpec(StrictModel):
    model: str = "gpt-4o-2024-08-06"
    n_epochs: int = 1
    batch_size: int = 4
    learning_rate_multiplier: float = 2.0
    seed: int | None = None
    suffix: str | None = None
