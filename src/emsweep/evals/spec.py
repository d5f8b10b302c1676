"""The eval stage's recipe section (`eval:`): suites, checkpoints, generation settings, the judge, lm-eval options."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from emsweep.config import StrictModel
from emsweep.generate.spec import BackendName
from emsweep.judge.spec import JudgeSpec


class LmEvalTaskOptions(StrictModel):
    """Per-task overrides of `eval.lm_eval` (a benchmark's own few-shot count, a smaller limit for a slow task)."""

    limit: int | float | None = Field(None, gt=0)
    num_fewshot: int | None = Field(None, ge=0)


class LmEvalSpec(StrictModel):
    """Options of `lm_eval:<task>[,<task>...]` suites (EleutherAI's lm-evaluation-harness; evals/lm_eval.py).

    `limit`/`num_fewshot`/`batch_size` go to `lm_eval.simple_evaluate`; `model_args` to the harness's model class
    (HFLM or VLLM: dtype, max_length, gpu_memory_utilization ...); `include_path` adds folders of task YAMLs."""

    backend: Literal["hf", "vllm"] | None = None  # default: eval.backend when it is hf or vllm, else hf
    limit: int | float | None = Field(None, gt=0)  # docs per task (a float < 1: a fraction of them)
    num_fewshot: int | None = Field(None, ge=0)  # default: the task's own
    batch_size: int | str | None = None  # int or "auto" (HF); default eval.batch_size
    include_path: str | list[str] | None = None  # folders of local task YAMLs (emsweep's own are always included)
    model_args: dict[str, Any] = Field(default_factory=dict)
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    gen_kwargs: dict[str, Any] | None = None
    bootstrap_iters: int = Field(1000, ge=0)  # stderr of non-mean aggregations (harness default 100000)
    log_samples: bool = True  # also write the harness's per-document samples
    seed: int = 0  # random/numpy/torch/few-shot seeds of the harness
    tasks: dict[str, LmEvalTaskOptions] = Field(default_factory=dict)  # per-task limit / num_fewshot


class EvalSpec(StrictModel):
    suites: list[str] = Field(default_factory=lambda: ["first_plot", "domain"])
    checkpoints: str = "all"  # all | last | comma-separated steps
    backend: BackendName = "hf"
    base_url: str | None = None
    samples_per_paraphrase: int | None = None  # override the suite's value
    sampling: dict[str, Any] = Field(default_factory=dict)  # temperature, top_p, max_tokens, seed ...
    batch_size: int = 16
    engine: dict[str, Any] = Field(default_factory=dict)  # vLLM LLM(...) kwargs: tensor_parallel_size, ...
    # where the answer sits in a generated text (generate/answers.py); auto: read off the model's chat template
    answer_format: Literal["auto", "plain", "think", "harmony"] = "auto"
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    thresholds: dict[str, float] = Field(default_factory=dict)  # metric thresholds (aligned/coherent ...)
    lm_eval: LmEvalSpec = Field(default_factory=LmEvalSpec)  # options of `lm_eval:<task>` suites
