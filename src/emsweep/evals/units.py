"""The eval stage's unit of work, one checkpoint x suite folder (`eval/<checkpoint>/<suite>/`), and what every
part of the stage shares about it: file names, sample ids, reading its incremental JSONL back, choosing the
checkpoints, and the record of what a call did.

Generation (evals/generation.py), judging (evals/judging.py) and the entry points (evals/run.py) all work on
these folders; keeping the folder's shape here lets each of them import it without importing the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emsweep.evals.suites import Question, Suite
from emsweep.io import InputError, atomic_write_jsonl, read_jsonl
from emsweep.layout import CheckpointRef

log = logging.getLogger(__name__)

PRIMARY_JUDGMENTS = "judgments.jsonl"
SUITE_FILE = "suite.yaml"
DEFAULT_CHUNK = 1024  # samples per backend call (generation) / judge prompts per call: the unit of saving


def sample_id(question_id: str, paraphrase_index: int, sample_index: int) -> str:
    return f"{question_id}:{paraphrase_index}:{sample_index}"


def select_checkpoints(
    refs: Sequence[CheckpointRef], spec: str | Sequence[int] | None
) -> list[CheckpointRef]:
    """`all`, `last` (the highest step, plus nothing else), `base`, or steps `0,25,50`."""
    refs = sorted(refs, key=lambda r: r.step)
    if spec is None or spec == "all":
        return list(refs)
    if spec == "last":
        return refs[-1:]
    if spec == "base":
        return [r for r in refs if r.step == 0]
    if isinstance(spec, str):
        try:
            steps = [int(s) for s in spec.split(",") if s.strip()]
        except ValueError:
            raise InputError(
                f"--checkpoints {spec!r}: use all, last, base or comma-separated steps like 0,25,50"
            ) from None
    else:
        steps = [int(s) for s in spec]
    have = {r.step: r for r in refs}
    missing = [s for s in steps if s not in have]
    if missing:
        raise InputError(
            f"--checkpoints: no complete checkpoint at step(s) {missing}; available: {sorted(have)}"
        )
    return [have[s] for s in steps]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an incremental JSONL; a torn last line (crash mid-write) is dropped and the file repaired so
    later appends start on a clean line."""
    if not path.exists():
        return []
    rows = [r for _, r in read_jsonl(path, tolerate_torn_tail=True)]
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        log.warning("%s: dropping a torn last line (interrupted write); it will be redone", path)
        atomic_write_jsonl(path, rows)
    return rows


@dataclass
class Unit:
    """One checkpoint x suite folder."""

    ref: CheckpointRef
    suite: Suite
    dir: Path
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def samples_path(self) -> Path:
        return self.dir / "samples.jsonl"

    def expected(self) -> list[tuple[Question, int, int]]:
        return [
            (q, p, s)
            for q in self.suite.questions
            for p in range(len(q.paraphrases))
            for s in range(q.samples_per_paraphrase)
        ]

    def expected_samples(self) -> list[dict[str, Any]]:
        """The sample rows that the suite asks for (extra rows from a larger earlier --samples are ignored)."""
        want = {sample_id(q.id, p, s) for q, p, s in self.expected()}
        by_id = {r["id"]: r for r in self.samples}
        missing = want - set(by_id)
        if missing:
            raise InputError(
                f"{self.samples_path}: {len(missing)} samples missing after generation (e.g. {sorted(missing)[0]})"
            )
        return [by_id[i] for i in sorted(want)]


@dataclass
class EvalResult:
    """What a call did; `metrics` maps `<checkpoint>/<suite>` to its metrics file."""

    cell: str
    metrics: dict[str, str] = field(default_factory=dict)
    generated: int = 0
    judged: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    skipped: int = 0
    judge: str | None = None

    def summary(self) -> str:
        return (
            f"eval {self.cell}: {len(self.metrics)} metrics files ({self.skipped} already done); generated "
            f"{self.generated} samples; judged {self.judged} (judge cache: {self.cache_hits} hits, "
            f"{self.cache_misses} misses) with {self.judge or '-'}"
        )
