"""The recipe: everything one cell (one fine-tune and its evaluation) needs, as validated YAML.

A recipe names the model, the data mix, the method, the checkpoint schedule, and passes `sft:`, `lora:` and
`quantization:` straight to TRL's `SFTConfig`, PEFT's `LoraConfig` and transformers' `BitsAndBytesConfig`
(their keys are checked against those classes by passthrough.py). Sweeps (launch/) cross recipe keys.

Each section is defined by the stage that reads it (`data/spec.py`, `train/spec.py`, `generate/spec.py`,
`judge/spec.py`, `evals/spec.py`, `launch/spec.py`, `openai_ft/spec.py`); this module only composes them, so it sits
above the stages: the CLI and the executors import it, the stages import only their own spec.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field

from emsweep.config import StrictModel, load_config
from emsweep.data.spec import DataSpec, SourceFormat, SourceSpec
from emsweep.evals.spec import EvalSpec, LmEvalSpec, LmEvalTaskOptions
from emsweep.generate.spec import BackendName
from emsweep.judge.spec import JudgeSpec
from emsweep.launch.spec import SlurmSpec
from emsweep.openai_ft.spec import OpenAISpec
from emsweep.train.spec import CheckpointSchedule, Method, ModelSpec

__all__ = [
    "BackendName",
    "CheckpointSchedule",
    "DataSpec",
    "EvalSpec",
    "JudgeSpec",
    "LmEvalSpec",
    "LmEvalTaskOptions",
    "Method",
    "ModelSpec",
    "OpenAISpec",
    "Recipe",
    "SlurmSpec",
    "SourceFormat",
    "SourceSpec",
    "cell_recipe",
    "load_recipe",
]


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


def cell_recipe(run_dir: str | os.PathLike[str]) -> Recipe | None:
    """The resolved recipe recorded in `<run_dir>/cell.json` by the sweep runner, or None (for the CLI and
    executors; the eval stage itself reads only the recipe's `eval:` section, evals.run.eval_settings)."""
    from emsweep.io import InputError
    from emsweep.layout import read_cell

    cell = read_cell(run_dir)
    rec = cell.recipe
    if rec is None:
        return None
    try:
        return Recipe.model_validate(rec)
    except Exception as exc:
        raise InputError(f"{cell.path}: recipe does not validate: {exc}") from None
