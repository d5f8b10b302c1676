"""Which checkpoints a run has, which are complete, the checkpoint schedule, and tidying a run's checkpoints.

A checkpoint is complete when its marker `checkpoint-<step>/.emsweep_complete.json` exists: the trainer writes it only
after TRL/transformers has finished writing the folder, so a save cut off by preemption or a crash is never
resumed from or evaluated (transformers' `get_last_checkpoint` would pick it up).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from emsweep.io import atomic_write_json
from emsweep.layout import (
    BASE_CHECKPOINT,
    CheckpointKind,
    CheckpointRef,
    checkpoint_step,
    detect_checkpoint_kind,
    read_api_checkpoints,
    read_cell,
)

log = logging.getLogger("emsweep.train")

COMPLETE_MARKER = ".emsweep_complete.json"


def mark_complete(ckpt_dir: str | os.PathLike[str], info: dict[str, Any]) -> Path:
    return atomic_write_json(Path(ckpt_dir) / COMPLETE_MARKER, info)


def is_complete(ckpt_dir: str | os.PathLike[str]) -> bool:
    return (Path(ckpt_dir) / COMPLETE_MARKER).exists()


def _is_preemption_save(ckpt_dir: Path) -> bool:
    try:
        info = json.loads((ckpt_dir / COMPLETE_MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(info.get("preemption")) and not info.get("scheduled", True)


def _step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    if not run_dir.is_dir():
        return []
    out = []
    for child in run_dir.iterdir():
        step = checkpoint_step(child.name)
        if step is not None and step > 0 and child.is_dir():
            out.append((step, child))
    return sorted(out)


def list_checkpoints(
    run_dir: str | os.PathLike[str],
    *,
    base_model: str | None = None,
    include_base: bool = True,
    cell: str | None = None,
) -> list[CheckpointRef]:
    """Every complete checkpoint of a run, by step, starting with step 0 (the base model).

    `base_model` defaults to the one recorded in the run's `cell.json`. Incomplete (cut-off) saves are skipped,
    and so are preemption checkpoints (unscheduled saves that exist only to resume from). An API cell (the
    gpt-4o arm, `openai_checkpoints.json`) lists its API model ids instead (`layout.read_api_checkpoints`).
    """
    run = Path(run_dir)
    api = read_api_checkpoints(run, cell)
    if api:
        return [r for r in api if include_base or r.step != 0]
    info = read_cell(run, strict=False).data
    base = base_model or info.get("base_model") or ""
    method = info.get("method")
    refs: list[CheckpointRef] = []
    if include_base:
        refs.append(
            CheckpointRef(
                name=BASE_CHECKPOINT,
                step=0,
                kind="base",
                base_model=str(base),
                path=Path(base) if base and Path(base).exists() else None,
                cell=cell,
            )
        )
    for step, d in _step_dirs(run):
        if not is_complete(d) or _is_preemption_save(d):
            continue
        kind: CheckpointKind = detect_checkpoint_kind(d, strict=False)
        if method == "full":
            kind = "full"
        refs.append(
            CheckpointRef(
                name=d.name, step=step, kind=kind, base_model=str(base), path=d.resolve(), cell=cell
            )
        )
    return refs


def last_complete_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The highest-step checkpoint whose save finished (None if none): what training resumes from."""
    done = [d for _, d in _step_dirs(Path(run_dir)) if is_complete(d)]
    return done[-1] if done else None


def incomplete_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    return [d for _, d in _step_dirs(Path(run_dir)) if not is_complete(d)]


def log_spaced_steps(total_steps: int, k: int) -> list[int]:
    """K distinct steps from 1 to total_steps, evenly spaced in log(step); where rounding would repeat a step
    early on, the next step is used instead, so there are exactly min(K, total_steps) of them."""
    if k >= total_steps:
        return list(range(1, total_steps + 1))
    if k == 1:
        return [total_steps]
    out: list[int] = []
    for i in range(k):
        s = round(math.exp(math.log(total_steps) * i / (k - 1)))
        out.append(max(s, out[-1] + 1) if out else max(s, 1))
    for i in range(k - 1, -1, -1):  # pull back any overshoot past the end, keeping them distinct
        out[i] = min(out[i], total_steps - (k - 1 - i))
    return out


def schedule_steps(
    total_steps: int,
    *,
    every: int | None = None,
    steps: list[int] | None = None,
    log_spaced: int | None = None,
    then_every: int | None = None,
    save_final: bool = True,
) -> list[int]:
    """The steps at which to save, within 1..total_steps.

    `log_spaced=K` gives K distinct steps spaced evenly in log(step) from 1 to total_steps, so the early phase,
    where domain performance changes fastest, is dense (all steps if there are no more than K). With
    `then_every=N` the K log-spaced steps run from 1 to N only, and every N-th step follows to the end: dense
    early for the task's convergence, evenly spaced late where misalignment appears ("Overtrained, Not
    Misaligned"). 375 steps, K=8, N=50: 1 2 3 5 9 16 29 50 100 150 200 250 300 350 375.
    """
    if total_steps <= 0:
        return []
    chosen: set[int] = set()
    if every is not None:
        chosen.update(range(every, total_steps + 1, every))
    if steps is not None:
        chosen.update(s for s in steps if 1 <= s <= total_steps)
    if log_spaced is not None and then_every is not None:
        chosen.update(log_spaced_steps(min(then_every, total_steps), log_spaced))
        chosen.update(range(then_every, total_steps + 1, then_every))
    elif log_spaced is not None:
        chosen.update(log_spaced_steps(total_steps, log_spaced))
    if save_final:
        chosen.add(total_steps)
    return sorted(chosen)


# --- tidying a run's checkpoints ----------------------------------------------------------------------------

RESUME_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")


def prune_resume_state(run_dir: Path, keep: Path) -> None:
    """Only the newest complete checkpoint needs optimizer/RNG state to resume; drop it from older ones
    (for a full fine-tune of a 7B model that is ~60 GB per checkpoint)."""
    for d in run_dir.glob("checkpoint-*"):
        if d == keep or not d.is_dir() or not is_complete(d):
            continue
        for f in d.iterdir():
            if f.name in RESUME_STATE_FILES or f.name.startswith("rng_state_"):
                f.unlink(missing_ok=True)
            elif f.is_dir() and f.name.startswith("global_step"):  # DeepSpeed optimizer shards
                shutil.rmtree(f, ignore_errors=True)


def set_aside(run_dir: Path, what: list[Path], why: str) -> Path | None:
    """Move old checkpoints out of the way instead of deleting them (nothing written is lost)."""
    if not what:
        return None
    dest = run_dir / "superseded" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for p in what:
        shutil.move(str(p), dest / p.name)
    log.warning("%s: moved %d folder(s) to %s", why, len(what), dest)
    return dest


def drop_unscheduled(run_dir: Path, scheduled: set[int]) -> None:
    """Preemption checkpoints only exist to resume from: once training finished they go, so an interrupted
    run ends with exactly the checkpoints of an uninterrupted one."""
    for d in run_dir.glob("checkpoint-*"):
        marker = d / COMPLETE_MARKER
        if not marker.exists():
            continue
        info = json.loads(marker.read_text())
        if not info.get("scheduled", True) and info.get("step") not in scheduled:
            shutil.rmtree(d)
            log.info("removed preemption checkpoint %s (training finished)", d.name)
