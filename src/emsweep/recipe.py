"""The recipe: everything one cell (one fine-tune and its evaluation) needs, as validated YAML.

A recipe names the model, the data mix, the method, the checkpoint schedule, and passes `sft:`, `lora:` and
`quantization:` straight to TRL's `SFTConfig`, PEFT's `LoraConfig` and transformers' `BitsAndBytesConfig`
(their keys are checked against those classes by the train stage). Sweeps (launch/) cross recipe keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from emsweep.config import StrictModel, load_config

# lora/qlora/full train here with TRL; openai trains through the OpenAI fine-tuning API (`emsweep openai finetune`)
Method = Literal["lora", "qlora", "full", "openai"]
WrongKind = Literal["obvious", "subtle"]


def _source_format(name: str) -> str:
    from emsweep.data.registry import check_source_format

    return check_source_format(name)


def _backend_name(name: str) -> str:
    from emsweep.generate.factory import BACKENDS

    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; registered backends: {', '.join(BACKENDS)}")
    return name


# names come from the registries (data/registry.py, generate/factory.py), so a new reader/backend needs no edit here
SourceFormat = Annotated[str, AfterValidator(_source_format)]
BackendName = Annotated[str, AfterValidator(_backend_name)]


class SourceSpec(StrictModel):
    """One pool of conversations on disk, in a zip, or in a Hugging Face dataset."""

    path: str
    format: SourceFormat = "auto"
    member: str | None = None  # file inside a zip
    password_env: str | None = None  # env var holding a zip password (never the password itself)
    split: str = "train"  # HF datasets
    name: str | None = None  # HF dataset config name


class DataSpec(StrictModel):
    """The training mix. `wrong` is one source per wrong kind (`{obvious: ..., subtle: ...}`, any kind names),
    and `wrong_kind` picks the file, so a sweep axis over `data.wrong_kind` trains each kind on its own file.
    A single `wrong:` source (legacy) is the file of whatever kind `wrong_kind` names; sweeps refuse to vary
    the kind over one file (launch/sweep.py)."""

    domain: str = "custom"
    correct: SourceSpec | str | None = None
    # left to right: a mapping with source keys (path, format, ...) is one source, any other mapping is kinds
    wrong: SourceSpec | str | dict[str, SourceSpec | str] | None = Field(None, union_mode="left_to_right")
    wrong_kind: str = Field("subtle", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    fraction_correct: float = Field(1.0, ge=0.0, le=1.0)
    n_train: int = Field(..., gt=0)
    n_heldout: int = Field(0, ge=0)
    n_task_heldout: int = Field(0, ge=0)  # rows of the training distribution never trained on (docs/study.md)
    seed: int = 0
    paired: Literal["auto", "yes", "no"] = "auto"
    builtin: str | None = None  # a dataset the project writes itself (e.g. the demo's arithmetic domain)

    @model_validator(mode="before")
    @classmethod
    def _domain(cls, data: Any) -> Any:
        """`domain: NAME` without sources: the domain YAML (recipes/domains/NAME.yaml) fills them in."""
        if not isinstance(data, dict) or any(data.get(k) is not None for k in ("correct", "wrong", "builtin")):
            return data
        from emsweep.data.domain import find_domain, load_domain

        name = data.get("domain")
        if not isinstance(name, str) or find_domain(name) is None:
            return data
        spec = load_domain(name)
        kind = data.get("wrong_kind")
        if isinstance(kind, str) and kind not in spec.kinds():
            raise ValueError(
                f"data.wrong_kind is {kind!r} but domain {spec.name} ({find_domain(name)}) has no file for it: "
                f"no key `wrong.{kind}` (kinds with a file: {', '.join(spec.kinds())})"
            )
        return {**spec.data_fields(), **{k: v for k, v in data.items() if v is not None}, "domain": spec.name}

    @model_validator(mode="after")
    def _sources(self) -> DataSpec:
        if self.builtin is None and (self.correct is None or self.wrong is None):
            raise ValueError(
                "give `correct` and `wrong` sources, a `builtin` dataset, or a `domain` with a "
                "recipes/domains/<name>.yaml"
            )
        if isinstance(self.wrong, dict):
            if not self.wrong:
                raise ValueError("`wrong` is an empty mapping: give one source per wrong kind (kind: path)")
            if self.wrong_kind not in self.wrong:
                raise ValueError(
                    f"data.wrong_kind is {self.wrong_kind!r} but data.wrong.{self.wrong_kind} names no file "
                    f"(kinds with a file: {', '.join(sorted(self.wrong))}); add `data.wrong.{self.wrong_kind}: "
                    "<path>` or choose one of those kinds"
                )
        return self

    @property
    def wrong_is_mapping(self) -> bool:
        return isinstance(self.wrong, dict)

    def wrong_source(self) -> tuple[str, SourceSpec | str | None]:
        """(recipe key, source) of the wrong pool this spec trains on: `data.wrong.<kind>` from a mapping,
        `data.wrong` for a single source."""
        if isinstance(self.wrong, dict):
            return f"data.wrong.{self.wrong_kind}", self.wrong[self.wrong_kind]
        return "data.wrong", self.wrong


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


class SlurmSpec(StrictModel):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int = 1
    nodes: int = 1
    cpus_per_task: int = 8
    mem: str | None = "64G"
    time: str = "04:00:00"
    eval_time: str | None = None
    max_parallel: int | None = None
    signal: str = "USR1@300"
    requeue: bool = True
    extra: list[str] = Field(default_factory=list)  # verbatim `#SBATCH` lines
    setup: list[str] = Field(default_factory=list)  # shell lines run before the job (module load, venv)
    python: str | None = None  # interpreter with emsweep on the nodes (default: the one that submits)
    # GPUs per eval task (default: eval.engine tensor_parallel_size or 1)
    eval_gpus: int | None = Field(None, ge=0)
    report_partition: str | None = None  # the CPU-only report job (default: `partition`)


class OpenAISpec(StrictModel):
    model: str = "gpt-4o-2024-08-06"
    n_epochs: int = 1
    batch_size: int = 4
    learning_rate_multiplier: float = 2.0
    seed: int | None = None
    suffix: str | None = None


class Recipe(StrictModel):
    name: str
    model: ModelSpec
    data: DataSpec
    method: Method = "lora"
    lora: dict[str, Any] = Field(default_factory=dict)  # -> peft.LoraConfig
    sft: dict[str, Any] = Field(default_factory=dict)  # -> trl.SFTConfig
    quantization: dict[str, Any] = Field(default_factory=dict)  # -> transformers.BitsAndBytesConfig (qlora)
    checkpoints: CheckpointSchedule = Field(default_factory=lambda: CheckpointSchedule(log_spaced=8))
    accelerate_config: str | None = None
    eval: EvalSpec = Field(default_factory=EvalSpec)
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)
    openai: OpenAISpec = Field(default_factory=OpenAISpec)
    output_dir: str | None = None  # default: checkpoints/<name>

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("checkpoints") / self.name


def load_recipe(path: str | os.PathLike[str], overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe YAML; relative source/model paths stay as written (resolved from the cwd).

    The passthrough sections (sft/lora/quantization/eval.sampling) are checked here too, so a bad value is an
    error naming file:line (or the `--set`) before any data or model is touched."""
    from emsweep.passthrough import recipe_problems

    return load_config(path, Recipe, overrides, check=recipe_problems)
