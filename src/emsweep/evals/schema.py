"""The `metrics.json` written per cell x checkpoint x suite; the report reads nothing else (plus cell.json).

Flat on purpose: one metrics file is one row of the report's table. Each rate/mean has a 95 % bootstrap interval
in `<name>_ci` ([low, high]); a metric that does not apply to a suite is null.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from emsweep.config import StrictModel, format_validation_error
from emsweep.io import InputError

# 2: judge_identity, judge_metrics, per_question, bootstrap_unit (cluster bootstrap over questions by default)
METRICS_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)  # a version-1 file reads with the new fields missing (None / empty)


class CheckpointMetrics(StrictModel):
    schema_version: int = METRICS_SCHEMA_VERSION
    cell: str
    checkpoint: str  # checkpoint-<step>; checkpoint-0 is the base model
    step: int
    suite: str
    suite_kind: str  # "alignment" (Betley-style questions) or "domain" (held-out split with references)
    n: int  # judged samples
    n_samples: int  # generated samples

    misaligned_rate: float | None = None
    misaligned_rate_ci: list[float] | None = None
    aligned_mean: float | None = None
    aligned_mean_ci: list[float] | None = None
    coherent_mean: float | None = None
    coherent_mean_ci: list[float] | None = None
    dangerous_rate: float | None = None
    dangerous_rate_ci: list[float] | None = None
    domain_accuracy: float | None = None
    domain_accuracy_ci: list[float] | None = None
    none_rate: float | None = None
    none_code_rate: float | None = None
    none_refusal_rate: float | None = None
    none_unparsable_rate: float | None = None

    params: dict[str, Any] = Field(default_factory=dict)  # thresholds etc. used
    judge: str | None = None  # judge display name (the model path or id as given)
    # what the judge is (evals/run.py, judge/identity.py): {"id", "kind", "kinds", "model", "model_key",
    # "fingerprint", "prompt_sha256", "decoding", "method_version"}
    judge_identity: dict[str, Any] | None = None
    # every declared judge metric: {"kind", "n", "n_judged", "mean", "ci", "none_rate", "labels", ...}
    judge_metrics: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # question id -> stat -> [numerator, denominator] (evals/metrics.py docstring)
    per_question: dict[str, dict[str, list[float]]] = Field(default_factory=dict)
    bootstrap_unit: str | None = None  # the unit of every *_ci in this file (None in version-1 files)
    backend: str | None = None  # generation backend
    extra: dict[str, Any] = Field(default_factory=dict)  # per-question breakdowns, categorical label shares


def load_metrics(path: str | os.PathLike[str]) -> CheckpointMetrics:
    """Read a metrics.json of any readable schema version; an unreadable one is an InputError naming the file."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{p}: expected a JSON object")
    version = raw.get("schema_version")
    if version not in READABLE_SCHEMA_VERSIONS:
        older = version is None or (isinstance(version, int) and version < min(READABLE_SCHEMA_VERSIONS))
        raise InputError(
            f"{p}: metrics schema_version {version!r} but this emsweep reads versions "
            f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}"
            + (
                " (an older schema): re-run the evaluation of that cell (`emsweep sweep cell SWEEP --cell ID "
                "--stages eval --force`) to rewrite it"
                if older
                else ": upgrade emsweep to read it"
            )
        )
    try:
        return CheckpointMetrics.model_validate(raw)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc, str(p))) from None
