"""The cell runner: mix -> train -> eval for one cell, with done-markers; and the local executor.

`run_cell` does not care who launched it (a loop here, a SLURM array task, a user at a shell): it reads the
cell's recipe, skips every stage whose marker exists, and lets each stage resume its own partial work (TRL
resumes from the last complete checkpoint; evaluation appends and skips finished samples). A killed run
therefore loses at most the stage that was in flight, never a finished one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from emsweep.io import InputError, is_done, mark_done, read_marker, sha256_file
from emsweep.launch.sweep import STAGES, Cell, Sweep
from emsweep.layout import read_cell
from emsweep.provenance import provenance

log = logging.getLogger(__name__)

EXIT_PENDING = 75  # EX_TEMPFAIL: a cell waits on remote work (an OpenAI job); nothing failed, rerun later


class StagePending(Exception):
    """A stage waits on remote work (an OpenAI fine-tuning job): not done and not failed; a rerun continues it."""


def parse_stages(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """`mix,train,eval` -> ("mix", "train", "eval"), in pipeline order; unknown names are an error."""
    if text is None:
        return STAGES
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    bad = [s for s in items if s not in STAGES]
    if bad or not items:
        raise InputError(f"--stages {text!r}: unknown stage(s) {bad}; choose from {','.join(STAGES)}")
    return tuple(s for s in STAGES if s in items)


def write_cell_json(sweep: Sweep, cell: Cell) -> Path:
    """cell.json: resolved recipe, axes (what the report groups by), versions, git sha, sweep hash. Merged
    into what is there: the train stage adds its own keys (resolved config, truncation counts)."""
    return (
        read_cell(cell.paths.root, strict=False)
        .extend(
            {
                "cell": cell.id,
                "index": cell.index,
                "sweep": sweep.name,
                "sweep_spec_hash": sweep.spec_hash,
                "sweep_file": sweep.source,
                "axes": cell.axes_record(),
                "axis_values": cell.values,
                "base_model": cell.recipe.model.path,
                "method": cell.recipe.method,
                "recipe": cell.recipe.model_dump(mode="json"),
                **provenance(),
                "data_manifest_sha256": sha256_file(cell.paths.manifest)
                if cell.paths.manifest.exists()
                else None,
            },
            stamp=True,
        )
        .path
    )


@contextlib.contextmanager
def _stage_log(cell: Cell, stage: str) -> Iterator[None]:
    """Append this stage's log records to logs/<stage>.log (across restarts), so a cluster user can read it."""
    cell.paths.logs_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(cell.paths.logs_dir / f"{stage}.log", mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


# --- the stages ----------------------------------------------------------------------------------------------


def _jsonable(x: Any) -> Any:
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "model_dump"):
        return _jsonable(x.model_dump(mode="json"))
    import dataclasses

    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    return str(x)


def stage_mix(sweep: Sweep, cell: Cell) -> dict[str, Any]:
    from emsweep.data.mix import build_mix

    manifest = build_mix(cell.recipe.data, cell.paths.data_dir)
    return {
        "manifest_sha256": sha256_file(cell.paths.manifest) if cell.paths.manifest.exists() else None,
        "fraction_correct_realized": manifest.get("fraction_correct_realized"),
        "counts": _jsonable(manifest.get("counts")),
    }


def stage_train(sweep: Sweep, cell: Cell, *, create_openai_jobs: bool = False) -> dict[str, Any]:
    """TRL on this machine; a `method: openai` cell goes to the OpenAI arm (`launch.openai_arm`), which creates a
    job only with `create_openai_jobs` and raises `StagePending` while it runs."""
    if cell.recipe.method == "openai":
        from emsweep.launch.openai_arm import train_openai_cell

        return train_openai_cell(sweep, cell, create_jobs=create_openai_jobs)
    from emsweep.train.model_init import ensure_model
    from emsweep.train.runner import run_training

    m = cell.recipe.model
    if m.init_shape:  # a recipe may name a model to build offline on first use; cells may race for it
        import fcntl

        lock = Path(m.path).parent / f".{Path(m.path).name}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            ensure_model(m.path, m.init_shape)
    out = run_training(cell.recipe, cell.root, resume=True)
    return {"result": _jsonable(out)}


def stage_eval(sweep: Sweep, cell: Cell) -> dict[str, Any]:
    """Generate, judge and write metrics.json for every checkpoint x suite of the cell.

    The judge cache is shared by the sweep's cells (`<sweep>/judge_cache.sqlite`), so the base model's answers,
    identical in every cell, are judged once."""
    from emsweep.evals.run import evaluate_run

    cache = Path(os.environ.get("EMSWEEP_JUDGE_CACHE") or sweep.root / "judge_cache.sqlite")
    out = evaluate_run(
        cell.root,
        cell.recipe.eval.suites,
        recipe=cell.recipe,
        judge_cache=cache,
        cell=cell.id,
        judge_options=dict(sweep.spec.judge_options) or None,
    )
    return {"result": _jsonable(out)}


STAGE_FUNCS: dict[str, Callable[[Sweep, Cell], dict[str, Any]]] = {
    "mix": stage_mix,
    "train": stage_train,
    "eval": stage_eval,
}


class CellBusy(RuntimeError):
    """Another process is running this cell right now (its lock is held)."""


@contextlib.contextmanager
def cell_lock(cell: Cell) -> Iterator[None]:
    """An exclusive lock on `<cell>/.lock` for the whole run: two launchers (a local run and a SLURM task, two
    terminals) must never append to the same cell's files at once. Released by the OS if the process dies."""
    import fcntl

    cell.root.mkdir(parents=True, exist_ok=True)
    path = cell.root / ".lock"
    fh = open(path, "a+")  # noqa: SIM115 (held for the whole block)
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise CellBusy(
                f"cell {cell.id} is being run by another process ({holder}); wait for it, or stop it first "
                f"(if that process is gone, delete {path})"
            ) from None
        fh.seek(0)
        fh.truncate()
        since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        fh.write(f"pid {os.getpid()} on {platform.node()} since {since}")
        fh.flush()
        yield
    finally:
        fh.close()


def run_cell(
    sweep: Sweep,
    cell: Cell,
    stages: Sequence[str] = STAGES,
    *,
    force: bool = False,
    on_stage: Callable[[Cell, str, str], None] | None = None,
    create_openai_jobs: bool = False,
) -> dict[str, str]:
    """Run the cell's stages in pipeline order, skipping done ones. Returns {stage: "done"|"skipped"|"pending"}.

    `on_stage(cell, stage, event)` is called with event "start", "skip", "done" or "pending" (progress displays).
    A stage that needs an earlier one (train needs mix) runs only if that one is done or in `stages`. A stage
    waiting on remote work (`StagePending`: an OpenAI job still running) is "pending"; the stages after it are left
    out of the result, not run. `create_openai_jobs`: a `method: openai` cell without a job may create one (spends).
    """
    stages = parse_stages(list(stages))
    sweep.write_record()
    with cell_lock(cell):
        return _run_cell_locked(
            sweep, cell, stages, force=force, on_stage=on_stage, create_openai_jobs=create_openai_jobs
        )


def _run_cell_locked(
    sweep: Sweep,
    cell: Cell,
    stages: tuple[str, ...],
    *,
    force: bool,
    on_stage: Callable[[Cell, str, str], None] | None,
    create_openai_jobs: bool = False,
) -> dict[str, str]:
    write_cell_json(sweep, cell)
    result: dict[str, str] = {}
    for stage in stages:
        needed = STAGES[: STAGES.index(stage)]
        missing = [s for s in needed if not is_done(cell.root, s) and s not in stages]
        if missing:
            raise InputError(
                f"cell {cell.id}: stage {stage!r} needs {missing} first "
                f"(run with --stages {','.join((*missing, stage))})"
            )
        if is_done(cell.root, stage) and not force:
            result[stage] = "skipped"
            if on_stage:
                on_stage(cell, stage, "skip")
            continue
        if on_stage:
            on_stage(cell, stage, "start")
        t0 = time.time()
        # train keeps its own logs/train.log; the runner tees mix and eval into logs/<stage>.log
        with _stage_log(cell, stage) if stage != "train" else contextlib.nullcontext():
            log.info("cell %s: stage %s starts", cell.id, stage)
            opts = {"create_openai_jobs": True} if stage == "train" and create_openai_jobs else {}
            try:
                info = STAGE_FUNCS[stage](sweep, cell, **opts)
            except StagePending as exc:
                log.warning("%s", exc)
                result[stage] = "pending"
                if on_stage:
                    on_stage(cell, stage, "pending")
                return result
            log.info("cell %s: stage %s done in %.1fs", cell.id, stage, time.time() - t0)
        own = read_marker(cell.root, stage) or {}  # a stage may write its own marker (train does): keep it
        mark_done(cell.root, stage, {**own, **info, "seconds": round(time.time() - t0, 2), "cell": cell.id})
        if stage == "mix":
            write_cell_json(sweep, cell)
        result[stage] = "done"
        if on_stage:
            on_stage(cell, stage, "done")
    return result


# --- the local executor --------------------------------------------------------------------------------------


def run_sweep_local(
    sweep: Sweep,
    stages: Sequence[str] = STAGES,
    *,
    max_parallel: int = 1,
    cells: Sequence[Cell] | None = None,
    show_progress: bool = True,
    create_openai_jobs: bool = False,
) -> dict[str, dict[str, str]]:
    """Run every (given) cell here, in order. With `max_parallel` > 1 cells run as `emsweep sweep cell`
    subprocesses, K at a time (each one still skips what is done, so a rerun after a kill picks up).

    A cell waiting for its OpenAI job has "pending" in its result (see `pending_cells`); the other cells go on.
    `method: openai` cells without a job stop the run before anything starts unless `create_openai_jobs`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from emsweep.launch.openai_arm import check_consent
    from emsweep.terminal import console, live_display

    stages = parse_stages(list(stages))
    todo = list(cells if cells is not None else sweep.cells)
    check_consent(sweep, todo, stages, create_openai_jobs)  # nothing is paid for silently
    sweep.write_record()
    results: dict[str, dict[str, str]] = {}
    total = len(todo) * len(stages)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not show_progress,
        transient=False,
        console=console(),  # the console the log handler writes to: log lines print above the bar
    ) as progress, live_display(progress):  # stages add their steps (train, generate, judge) to this display
        task = progress.add_task(f"sweep {sweep.name}", total=total)

        def on_stage(cell: Cell, stage: str, event: str) -> None:
            if event == "start":
                progress.update(task, description=f"{cell.id}: {stage}")
            elif event != "pending":  # a pending stage is not progress
                progress.advance(task)

        if max_parallel <= 1:
            failed_local: list[str] = []
            for cell in todo:
                try:
                    results[cell.id] = run_cell(
                        sweep, cell, stages, on_stage=on_stage, create_openai_jobs=create_openai_jobs
                    )
                except InputError:
                    raise  # a config problem: every cell would fail the same way
                except Exception:
                    # one broken cell must not stop the others; its finished stages keep their markers
                    log.exception("cell %s failed; going on with the next cells", cell.id)
                    failed_local.append(cell.id)
                    results[cell.id] = {s: ("done" if is_done(cell.root, s) else "failed") for s in stages}
            if failed_local:
                raise RuntimeError(
                    f"cells failed: {', '.join(failed_local)} (see <cell>/logs/ under {sweep.root}); "
                    "rerun the same command to retry them, finished stages are skipped"
                    + _pending_note(results)
                )
        else:
            if sweep.path is None:
                raise InputError("--max-parallel > 1 needs a sweep loaded from a YAML file")
            running: list[tuple[Cell, subprocess.Popen]] = []
            queue = list(todo)
            failed: list[str] = []
            while queue or running:
                while queue and len(running) < max_parallel:
                    cell = queue.pop(0)
                    cmd = [
                        sys.executable,
                        "-m",
                        "emsweep",
                        "sweep",
                        "cell",
                        str(sweep.path),
                        "--cell",
                        cell.id,
                        "--stages",
                        ",".join(stages),
                        *(["--create-openai-jobs"] if create_openai_jobs else []),
                    ]
                    cell.paths.logs_dir.mkdir(parents=True, exist_ok=True)
                    fh = open(cell.paths.logs_dir / "cell.out", "a")  # noqa: SIM115 (closed with the process)
                    running.append((cell, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)))
                    progress.update(task, description=f"{len(running)} cells running")
                time.sleep(0.5)
                for cell, proc in list(running):
                    if proc.poll() is None:
                        continue
                    running.remove((cell, proc))
                    progress.advance(task, len(stages))
                    waiting = proc.returncode == EXIT_PENDING
                    if proc.returncode not in (0, EXIT_PENDING):
                        failed.append(cell.id)
                    res: dict[str, str] = {}
                    for s in stages:
                        res[s] = "done" if is_done(cell.root, s) else "pending" if waiting else "failed"
                        if res[s] == "pending":
                            break  # the stages after a waiting one did not run (as in run_cell)
                    results[cell.id] = res
            if failed:
                raise RuntimeError(
                    f"cells failed: {', '.join(failed)} (see <cell>/logs/cell.out under {sweep.root})"
                    + _pending_note(results)
                )
    return results


def pending_cells(results: dict[str, dict[str, str]]) -> list[str]:
    """Cells with a stage waiting on remote work (an OpenAI job still running)."""
    return [cid for cid, r in results.items() if "pending" in r.values()]


def _pending_note(results: dict[str, dict[str, str]]) -> str:
    waiting = pending_cells(results)
    return f"; {len(waiting)} cell(s) wait for OpenAI jobs: {', '.join(waiting)}" if waiting else ""


def env_cell_index() -> int | None:
    """The SLURM array index, when launched from an array task without --index."""
    v = os.environ.get("SLURM_ARRAY_TASK_ID")
    return int(v) if v and v.isdigit() else None
