"""The train stage's recipe sections: `model:`, `method:` and the `checkpoints:` schedule.

(`sft:`, `lora:` and `quantization:` are passed through to TRL, PEFT and transformers and checked against their
classes by emsweep/passthrough.py.)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from emsweep.config import StrictModel

# lora/qlora/full train here with TRL; openai trains through the OpenAI fine-tuning API (the executor routes it)
Method = Literal["lora", "qlora", "full", "openai"]


class ModelSpec(StrictModel):
    path: str  # local folder or hub id
    init_shape: str | None = None  # if `path` does not exist, build it with `emsweep model init --shape`
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    trust_remote_code: bool = False
    attn_implementation: str | None = None


class CheckpointSchedule(StrictModel):
    """When to save. Exactly one of: `every` N steps, an explicit `steps` list, or `log_spaced` K steps
    (dense early, where the task converges). `log_spaced: K` with `then_every: N` combines the two phases of
    "Overtrained, Not Misaligned": K log-spaced steps from 1 to N, then every N steps to the end (375 steps,
    K=8, N=50: 1 2 3 5 9 16 29 50 100 150 200 250 300 350 375; docs/study.md)."""

    every: int | None = Field(None, gt=0)
    steps: list[int] | None = None
    log_spaced: int | None = Field(None, gt=0)
    then_every: int | None = Field(None, gt=0)
    save_final: bool = True

    @model_validator(mode="after")
    def _one(self) -> CheckpointSchedule:
        given = [k for k in ("every", "steps", "log_spaced") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of `every`, `steps`, `log_spaced`")
        if self.then_every is not None and self.log_spaced is None:
            raise ValueError("`then_every` continues a `log_spaced` schedule: set `log_spaced` too")
        return self
