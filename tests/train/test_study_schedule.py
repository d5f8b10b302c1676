"""The combined checkpoint schedule of the checkpoint study gives exactly the steps docs/study.md documents."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from emsweep.recipe import CheckpointSchedule
from emsweep.train.checkpoints import schedule_steps

DOC = Path(__file__).resolve().parents[2] / "docs" / "study.md"


def documented(total: int, k: int, n: int) -> list[int]:
    """The step list docs/study.md gives for `log_spaced: k, then_every: n` over `total` steps."""
    pat = rf"log_spaced: {k}, then_every: {n}` over {total} steps saves at: ([0-9, ]+)"
    m = re.search(pat, DOC.read_text(encoding="utf-8"))
    assert m, f"docs/study.md documents no steps for {pat!r}"
    return [int(x) for x in m.group(1).split(",")]


def test_combined_schedule_gives_the_documented_steps():
    steps = schedule_steps(375, log_spaced=8, then_every=50)
    assert steps == documented(375, 8, 50)
    late = [s for s in steps if s > 50]
    assert all(b - a == 50 for a, b in itertools.pairwise(late[:-1]))  # evenly spaced late
    assert steps[-1] == 375 and len(set(steps)) == len(steps)
    # pure log spacing puts one checkpoint in the second half of the run (the last); the combined one five
    assert sum(s > 187 for s in schedule_steps(375, log_spaced=8)) == 1
    assert sum(s > 187 for s in steps) == 5


def test_combined_schedule_short_runs_and_validation():
    # a run shorter than N is plain log spacing over the run
    assert schedule_steps(20, log_spaced=8, then_every=50) == schedule_steps(20, log_spaced=8)
    assert CheckpointSchedule(log_spaced=8, then_every=50).then_every == 50
    with pytest.raises(ValidationError, match="then_every"):
        CheckpointSchedule(every=10, then_every=50)
