"""The data stage's recipe section (`data:`): the sources of a mix and how to mix them.

The recipe (emsweep/recipe.py) composes this with the other stages' specs; the data stage needs only this one.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from emsweep.config import StrictModel


def _source_format(name: str) -> str:
    from emsweep.data.registry import check_source_format

    return check_source_format(name)



# names come from the registry (data/registry.py), so a new reader needs no edit here
SourceFormat = Annotated[str, AfterValidator(_source_format)]


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
