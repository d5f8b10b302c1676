"""Checkpoint schedule and discovery: which steps get saved, which saves count as complete."""

from __future__ import annotations

import itertools
import json

import pytest

from emsweep.train.checkpoints import (
    incomplete_checkpoints,
    last_complete_checkpoint,
    list_checkpoints,
    mark_complete,
    schedule_steps,
)


def test_schedule_every_explicit_and_final():
    assert schedule_steps(10, every=3) == [3, 6, 9, 10]
    assert schedule_steps(10, every=3, save_final=False) == [3, 6, 9]
    assert schedule_steps(10, steps=[5, 1, 50]) == [1, 5, 10]  # out-of-range steps dropped
    assert schedule_steps(0, every=1) == []


@pytest.mark.parametrize("total", [1, 7, 16, 100, 375, 5000])
@pytest.mark.parametrize("k", [1, 2, 5, 8, 12])
def test_log_spaced_is_dense_early(total, k):
    s = schedule_steps(total, log_spaced=k)
    assert s == sorted(set(s)) and s[-1] == total and all(1 <= x <= total for x in s)
    assert len(s) == min(k, total)
    if k >= 2:
        assert s[0] == 1
    if k >= 3 and total >= 100:
        gaps = [b - a for a, b in itertools.pairwise(s)]
        assert gaps[-1] > gaps[0] and gaps[-1] == max(gaps)  # dense early, sparse late


def test_list_checkpoints_skips_incomplete_and_reads_cell(tmp_path):
    run = tmp_path / "run"
    for step in (1, 4, 9):
        d = run / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text("{}")
    mark_complete(run / "checkpoint-1", {"step": 1, "scheduled": True})
    mark_complete(run / "checkpoint-4", {"step": 4, "scheduled": True})
    (run / "checkpoint-x").mkdir()  # not a step folder
    base = tmp_path / "base-model"
    base.mkdir()
    (run / "cell.json").write_text(json.dumps({"base_model": str(base), "method": "lora"}))

    refs = list_checkpoints(run, cell="c1")
    assert [(r.name, r.step, r.kind) for r in refs] == [
        ("checkpoint-0", 0, "base"),
        ("checkpoint-1", 1, "lora"),
        ("checkpoint-4", 4, "lora"),
    ]
    assert refs[0].path == base and refs[1].path == (run / "checkpoint-1").resolve()
    assert all(r.base_model == str(base) and r.cell == "c1" for r in refs)
    assert refs[2].key == "c1/checkpoint-4"
    assert last_complete_checkpoint(run).name == "checkpoint-4"
    assert [p.name for p in incomplete_checkpoints(run)] == ["checkpoint-9"]
    assert [r.step for r in list_checkpoints(run, include_base=False)] == [1, 4]
    assert list_checkpoints(tmp_path / "missing", base_model="hub/model")[0].base_model == "hub/model"
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_preemption_save_is_resumable_but_not_listed(tmp_path):
    run = tmp_path / "run"
    for step, info in ((2, {"scheduled": True}), (3, {"scheduled": False, "preemption": True})):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        mark_complete(run / f"checkpoint-{step}", {"step": step, **info})
    assert last_complete_checkpoint(run).name == "checkpoint-3"
    assert [r.step for r in list_checkpoints(run, base_model="m")] == [0, 2]
    assert [r.kind for r in list_checkpoints(run, base_model="m")] == ["base", "full"]


def test_api_cells_list_their_model_ids(tmp_path):
    """The gpt-4o arm: `openai_checkpoints.json` (written by `emsweep openai poll`) instead of weight folders."""
    from emsweep.layout import API_CHECKPOINTS_FILE

    run = tmp_path / "cell-a"
    run.mkdir()
    (run / API_CHECKPOINTS_FILE).write_text(
        json.dumps(
            {
                "base_model": "gpt-4o-2024-08-06",
                "checkpoints": [
                    {"name": "checkpoint-10", "step": 10, "kind": "api", "model": "ft:gpt-4o:x:10"},
                    {"name": "checkpoint-0", "step": 0, "kind": "base", "model": "gpt-4o-2024-08-06"},
                ],
            }
        )
    )
    refs = list_checkpoints(run)
    assert [(r.name, r.kind, r.model) for r in refs] == [
        ("checkpoint-0", "base", "gpt-4o-2024-08-06"),
        ("checkpoint-10", "api", "ft:gpt-4o:x:10"),
    ]
    assert refs[1].cell == "cell-a" and refs[1].path is None
    assert [r.step for r in list_checkpoints(run, include_base=False)] == [10]
