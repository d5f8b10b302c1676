"""OpenAI's fine-tuning wind-down and model retirements (`recipes/openai/lifecycle.yaml`), checked against a date.

Why a table and an injectable clock: the dates are facts OpenAI publishes (and changes), each with its source, so
they live in YAML; and every decision ("may a job still be created?", "how many days are left?") is a function of
the date, so tests and "what if" planning pass one (`today=` or `$EMSWEEP_TODAY=YYYY-MM-DD`) instead of sleeping.

Lookup of the table: an explicit path, `$EMSWEEP_OPENAI_LIFECYCLE`, `./recipes/openai/lifecycle.yaml`, then the table
beside the source checkout. A fine-tuned id (`ft:<base>:...`) has its base's dates: it dies with its base model.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from emsweep.config import StrictModel
from emsweep.io import InputError
from emsweep.openai_ft.prices import base_of, find_table, load_table

log = logging.getLogger(__name__)

LIFECYCLE_ENV = "EMSWEEP_OPENAI_LIFECYCLE"
TODAY_ENV = "EMSWEEP_TODAY"
UNKNOWN = "unknown"


def _parse_date(v: Any, what: str) -> dt.date | Literal["unknown"]:
    if isinstance(v, dt.date):
        return v
    s = str(v).strip()
    if s == UNKNOWN:
        return UNKNOWN
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise ValueError(f"{what}: {v!r} is not a date YYYY-MM-DD (or `unknown`)") from None


class DateFact(StrictModel):
    date: dt.date | Literal["unknown"]
    source: str
    as_of: dt.date

    @field_validator("date", mode="before")
    @classmethod
    def _date(cls, v: Any) -> Any:
        return _parse_date(v, "date")

    @property
    def known(self) -> dt.date | None:
        return None if self.date == UNKNOWN else self.date  # type: ignore[return-value]

    def cite(self) -> str:
        return f"source: {self.source}, as of {self.as_of}"


class OpenFact(StrictModel):
    open: bool | Literal["unknown"]
    source: str
    as_of: dt.date


class ModelLifecycle(StrictModel):
    fine_tuning: OpenFact
    job_creation_cutoff: DateFact | None = None  # none: fine-tuning not open on this id
    inference_retirement: DateFact


class Stage(StrictModel):
    name: str
    date: dt.date
    who: str


class WindDown(StrictModel):
    source: str
    as_of: dt.date
    stages: list[Stage] = Field(min_length=1)


class LifecycleTable(StrictModel):
    wind_down: WindDown
    models: dict[str, ModelLifecycle]
    path: str | None = None

    def lookup(self, model: str) -> tuple[str, ModelLifecycle] | None:
        """(table key, entry) of a model id or of a fine-tuned id's base; None when the table lacks it."""
        for key in (model, base_of(model)):
            if key in self.models:
                return key, self.models[key]
        return None

    def final_cutoff(self) -> Stage:
        return max(self.wind_down.stages, key=lambda s: s.date)


def find_lifecycle(path: str | os.PathLike[str] | None = None) -> Path:
    return find_table(path, LIFECYCLE_ENV, "lifecycle.yaml", "lifecycle", "--lifecycle")


def load_lifecycle(path: str | os.PathLike[str] | None = None) -> LifecycleTable:
    return load_table(LifecycleTable, find_lifecycle(path))


def today(value: dt.date | str | None = None) -> dt.date:
    """The date decisions are made for: `value`, else `$EMSWEEP_TODAY` (YYYY-MM-DD), else the system date."""
    raw = value if value is not None else os.environ.get(TODAY_ENV)
    if raw is None or raw == "":
        return dt.date.today()
    if isinstance(raw, dt.date):
        return raw
    try:
        return dt.date.fromisoformat(str(raw).strip())
    except ValueError:
        raise InputError(f"${TODAY_ENV}={raw!r}: expected a date YYYY-MM-DD") from None


def _days(n: int) -> str:
    return f"{n} day{'s' if abs(n) != 1 else ''}"


@dataclass
class Verdict:
    """What the table says about creating a fine-tuning job on `model` on `day`."""

    model: str
    day: dt.date
    allowed: bool
    known: bool  # False: the model is not in the table (a warning, never a silent pass)
    lines: list[str]  # human-readable, printed by finetune / timeline
    error: str | None = None  # set when not allowed
    days_to_job_cutoff: int | None = None
    days_to_retirement: int | None = None


def check_job_creation(table: LifecycleTable, model: str, day: dt.date) -> Verdict:
    """May a job on `model` be created on `day`? Refused after the job-creation cutoff or the base's retirement."""
    hit = table.lookup(model)
    final = table.final_cutoff()
    if hit is None:
        days = (final.date - day).days
        msg = (
            f"WARNING: {model!r} is not in the lifecycle table {table.path}; its dates are unknown to emsweep. "
            f"OpenAI's wind-down closes job creation for every organisation on {final.date} "
            f"({_days(days) + ' left' if days > 0 else 'passed'}; {table.wind_down.source}). Add the model to the "
            "table with its dates and sources."
        )
        log.warning(msg)
        if days <= 0:
            return Verdict(model, day, False, False, [msg], error=_closed_msg(model, final.date, table, final.who))
        return Verdict(model, day, True, False, [msg], days_to_job_cutoff=days)
    key, entry = hit
    lines: list[str] = []
    ret = entry.inference_retirement
    days_ret = (ret.known - day).days if ret.known else None
    if entry.fine_tuning.open is False:
        err = (
            f"{model} cannot be fine-tuned: fine-tuning is not open on {key} ({entry.fine_tuning.source}, as of "
            f"{entry.fine_tuning.as_of}); pick a fine-tunable snapshot from {table.path}"
        )
        return Verdict(model, day, False, True, [err], error=err, days_to_retirement=days_ret)
    if ret.known and days_ret is not None and days_ret <= 0:
        err = (
            f"{model}: its base model {key} was scheduled to be retired on {ret.known} ({ret.cite()}); a job "
            f"created now could not be used for inference. Refusing on {day}."
        )
        return Verdict(model, day, False, True, [err], error=err, days_to_retirement=days_ret)
    cut = entry.job_creation_cutoff
    cut_date = cut.known if cut is not None else None
    if cut_date is None:
        cut_date, cut_src = final.date, f"source: {table.wind_down.source}, as of {table.wind_down.as_of}"
    else:
        cut_src = cut.cite()  # type: ignore[union-attr]
    days_cut = (cut_date - day).days
    if days_cut <= 0:
        err = _closed_msg(model, cut_date, table, final.who, cut_src)
        return Verdict(model, day, False, True, [err], error=err, days_to_retirement=days_ret)
    lines.append(
        f"{model}: job creation closes on {cut_date}: {_days(days_cut)} left ({cut_src}). "
        + stage_note(table, day)
    )
    if ret.known:
        lines.append(
            f"{model}: base model retirement scheduled for {ret.known}: {_days(days_ret or 0)} left to train AND "
            f"evaluate every checkpoint ({ret.cite()})."
        )
    else:
        lines.append(
            f"{model}: retirement date of inference: unknown ({ret.cite()}); fine-tuned models stop answering "
            "when it comes, so evaluate checkpoints as soon as jobs finish."
        )
    if entry.fine_tuning.open == UNKNOWN:
        lines.append(f"{model}: whether fine-tuning is open is unknown ({entry.fine_tuning.source}).")
    return Verdict(
        model, day, True, True, lines, days_to_job_cutoff=days_cut, days_to_retirement=days_ret
    )


def _closed_msg(model: str, when: dt.date, table: LifecycleTable, who: str, src: str | None = None) -> str:
    src = src or f"source: {table.wind_down.source}, as of {table.wind_down.as_of}"
    return (
        f"{model}: OpenAI closed fine-tuning job creation on {when} ({who}; {src}). No job can be created; "
        "evaluate the models you already have (`emsweep openai eval --pending`) or move the sweep to an open model."
    )


def stages_in_force(table: LifecycleTable, day: dt.date) -> list[Stage]:
    return sorted((s for s in table.wind_down.stages if s.date <= day), key=lambda s: s.date)


def stage_note(table: LifecycleTable, day: dt.date) -> str:
    """One sentence: which earlier stages may already have closed job creation for this organisation."""
    gone = stages_in_force(table, day)
    if not gone:
        return ""
    return "Already closed for " + "; ".join(f"{s.who} (since {s.date})" for s in gone) + "."


# --- the job-creation refusal OpenAI gives a gated organisation ----------------------------------------------------

_GATE_CODES = ("fine_tuning_not_available", "fine_tuning_disabled", "fine_tuning_unavailable")
_GATE_RE = re.compile(
    r"fine[- _]?tuning\b.*\b(not available|no longer available|disabled|not enabled|no longer|not allowed)"
    r".*\b(organi[sz]ation|org|account|project)\b|\b(organi[sz]ation|org|account|project)\b.*fine[- _]?tuning",
    re.IGNORECASE | re.DOTALL,
)


def is_gated_org_error(status: int | None, code: str | None, message: str) -> bool:
    """The organisation may not create jobs (the wind-down), as opposed to an unknown snapshot or a bad file.

    OpenAI's exact wording is not in the table's sources, so this matches what such a refusal must say: a known
    error code, or a 403 / a message that names both fine-tuning and the organisation. "Model X is not available for
    fine-tuning or does not exist" (a snapshot problem) is not a gate."""
    if code in _GATE_CODES:
        return True
    if re.search(r"\bmodel\b.*(not available for fine-?tuning|does not exist)", message, re.IGNORECASE):
        return False
    return status == 403 or bool(_GATE_RE.search(message))


def explain_gate(table: LifecycleTable, day: dt.date) -> str:
    """Which stage of the wind-down the refusal belongs to, on `day`, and what the user can still do."""
    gone = stages_in_force(table, day)
    stages = sorted(table.wind_down.stages, key=lambda s: s.date)
    final = stages[-1]
    src = f"{table.wind_down.source}, as of {table.wind_down.as_of}"
    if not gone:
        head = (
            f"On {day} no stage of OpenAI's fine-tuning wind-down had started (the first closes job creation on "
            f"{stages[0].date}); this refusal is about your organisation's access, not the wind-down."
        )
    elif final in gone:
        head = (
            f"On {day} job creation is closed for every organisation (stage '{final.name}', since {final.date}; "
            f"{src})."
        )
    else:
        which = " or ".join(f"'{s.name}' ({s.who}, since {s.date})" for s in gone)
        head = (
            f"On {day} your organisation is gated by a stage of OpenAI's fine-tuning wind-down: {which} ({src}). "
            f"Stage '{final.name}' closes job creation for everyone else on {final.date}."
        )
    return (
        head + " Models fine-tuned earlier still answer until their base model is retired: register them "
        "(`emsweep openai import MODEL_ID --cell NAME`) and evaluate them now (`emsweep openai eval --pending`), "
        "or run the sweep on an open model (recipes/models/)."
    )
