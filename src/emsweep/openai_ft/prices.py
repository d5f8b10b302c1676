"""The prices/limits table (`recipes/openai/prices.yaml`), loaded at run time so a price change is a YAML edit.

Lookup order: an explicit path, `$EMSWEEP_OPENAI_PRICES`, `./recipes/openai/prices.yaml`, then the table beside the
source checkout. Fine-tuned model ids (`ft:<base>:<org>:<suffix>:<id>[:ckpt-step-N]`) are priced as their base's
fine-tuned inference rates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError

from emsweep.config import StrictModel, _key_lines, format_validation_error, load_yaml
from emsweep.io import InputError

PRICES_ENV = "EMSWEEP_OPENAI_PRICES"


class ModelPrice(StrictModel):
    fine_tunable: bool = False
    training: float | None = None  # $ per `per_tokens` training tokens
    input: float | None = None
    output: float | None = None
    fine_tuned_input: float | None = None
    fine_tuned_output: float | None = None
    max_example_tokens: int | None = None


class Limits(StrictModel):
    max_file_bytes: int = 512 * 1024 * 1024
    min_examples: int = 10


M = TypeVar("M", bound=StrictModel)


class PriceTable(StrictModel):
    as_of: str
    source: str | None = None
    per_tokens: int = 1_000_000
    batch_discount: float = Field(0.5, gt=0, le=1)
    limits: Limits = Field(default_factory=Limits)
    models: dict[str, ModelPrice]
    path: str | None = None  # where it was loaded from (filled by load_prices)

    def model(self, model: str) -> ModelPrice:
        if model in self.models:
            return self.models[model]
        base = base_of(model)
        if base in self.models:
            return self.models[base]
        raise InputError(
            f"{self.path}: no price entry for model {model!r}; add it under `models:` (known: "
            f"{', '.join(sorted(self.models))})"
        )

    def check_fine_tunable(self, model: str, where: str = "openai.model") -> ModelPrice:
        """A clear error before anything is uploaded when the model cannot be fine-tuned."""
        try:
            price = self.model(model)
        except InputError:
            tunable = sorted(k for k, v in self.models.items() if v.fine_tunable)
            raise InputError(
                f"{where}: {model!r} cannot be fine-tuned through the API (not in the prices table "
                f"{self.path}); fine-tunable snapshots: {', '.join(tunable)}"
            ) from None
        if not price.fine_tunable or price.training is None:
            tunable = sorted(k for k, v in self.models.items() if v.fine_tunable)
            raise InputError(
                f"{where}: {model!r} cannot be fine-tuned (use a dated snapshot); fine-tunable: {', '.join(tunable)}"
            )
        return price

    def training_cost(self, model: str, tokens: int) -> float:
        price = self.model(model)
        if price.training is None:
            raise InputError(f"{self.path}: model {model!r} has no `training` price")
        return tokens * price.training / self.per_tokens

    def inference_cost(
        self, model: str, prompt_tokens: int, completion_tokens: int, *, batch: bool = False
    ) -> float | None:
        """Dollars for a request mix; None when the table has no price for the model (e.g. a local server)."""
        try:
            price = self.model(model)
        except InputError:
            return None
        tuned = model.startswith("ft:")
        pin = price.fine_tuned_input if tuned else price.input
        pout = price.fine_tuned_output if tuned else price.output
        if pin is None or pout is None:
            return None
        cost = (prompt_tokens * pin + completion_tokens * pout) / self.per_tokens
        return cost * (self.batch_discount if batch else 1.0)


def base_of(model: str) -> str:
    """`ft:gpt-4o-2024-08-06:org:suffix:abc:ckpt-step-10` -> `gpt-4o-2024-08-06`; other ids unchanged."""
    if model.startswith("ft:"):
        return model.split(":")[1]
    return model


def find_table(path: str | os.PathLike[str] | None, env: str, name: str, what: str, flag: str) -> Path:
    """The table file: `path`, else $`env`, else recipes/openai/`name` from the cwd, else the repository's copy."""
    candidates = [Path(path)] if path else []
    if os.environ.get(env):
        candidates.append(Path(os.environ[env]))
    candidates += [Path("recipes/openai") / name, Path(__file__).resolve().parents[3] / "recipes" / "openai" / name]
    for c in candidates:
        if c.exists():
            return c
    raise InputError(
        f"no OpenAI {what} table found (looked at {', '.join(map(str, candidates))}); pass {flag} or set {env}"
    )


def load_table(model: type[M], path: Path) -> M:
    """A YAML table validated by `model`; errors name the file, line and key. `path` is kept on the table."""
    try:
        table = model.model_validate(load_yaml(path))
    except ValidationError as exc:
        lines = _key_lines(path.read_text(encoding="utf-8"))
        raise InputError(format_validation_error(exc, str(path), lines)) from None
    table.path = str(path)
    return table


def find_prices(path: str | os.PathLike[str] | None = None) -> Path:
    return find_table(path, PRICES_ENV, "prices.yaml", "prices", "--prices")


def load_prices(path: str | os.PathLike[str] | None = None) -> PriceTable:
    return load_table(PriceTable, find_prices(path))
