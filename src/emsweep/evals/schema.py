"""The `metrics.json` written per cell x checkpoint x suite; the report reads nothing else (plus cell.json).

Flat on purpose: one metrics file is one row of the report's table. Each rate/mean has a 95 % bootstrap interval
in `<name>_ci` ([low, high]); a metric that does not apply to a suite is null.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from emsweep.config import StrictModel

METRICS_SCHEMA_VERSION = 1


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
    judge: str | None = None  # judge model id
    backend: str | None = None  # generation backend
    extra: dict[str, Any] = Field(default_factory=dict)  # per-question breakdowns, categorical label shares
