"""submitit as an alternative SLURM launcher, for users who prefer submitting from Python (`pip install
emsweep[slurm]`). The sbatch executor (launch/slurm.py) is the primary one: readable scripts, multi-GPU.
Both record their submissions in the same ledger (`slurm_ledger.Ledger`), so status and resubmission see both.

The same pipeline: a training array over the cells that need training, an evaluation array after it
(`aftercorr`), a report job after that (`afterany`); the same cell runner (`emsweep sweep cell`), run as a
subprocess of submitit's worker. Preemption: submitit asks SLURM for SIGUSR2 before the time limit and, on it,
calls `CellTask.checkpoint`, which forwards SIGUSR1 to the cell's process (training saves a complete checkpoint
and exits 99) and hands submitit the same task to requeue; the restart resumes from that checkpoint. The cell's
process ignores SIGUSR2 itself (SLURM signals every process of the step), so only the forwarded SIGUSR1 counts.

Single-process cells only (`nodes * gpus_per_node <= 1`); multi-GPU training needs the sbatch executor.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from emsweep.io import InputError, is_done
from emsweep.launch.slurm_ledger import Ledger, slurm_root, write_snapshot
from emsweep.launch.slurm_plan import TRAIN_STAGES
from emsweep.launch.slurm_queue import cancel_jobs, squeue_tasks
from emsweep.launch.slurm_render import check_time, eval_gpus, parse_signal
from emsweep.launch.spec import SlurmSpec
from emsweep.launch.sweep import STAGES, Cell, Sweep, check_sweep_folder

_RUNNING: dict[str, subprocess.Popen] = {}  # cell id -> its process, for `checkpoint` (same worker process)


def _ignore_usr2() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class CellTask:
    """What each array task runs: `emsweep sweep cell SWEEP --cell ID --stages ...` (picklable: plain fields)."""

    def __init__(self, python: str, sweep_file: str, stages: str, grace_s: float = 600.0) -> None:
        self.python = python
        self.sweep_file = sweep_file
        self.stages = stages
        self.grace_s = grace_s

    def __call__(self, cell_id: str) -> dict[str, Any]:
        cmd = [self.python, "-m", "emsweep", "sweep", "cell", self.sweep_file, "--cell", cell_id]
        proc = subprocess.Popen([*cmd, "--stages", self.stages], preexec_fn=_ignore_usr2)
        _RUNNING[cell_id] = proc
        while proc.poll() is None:  # poll, not wait(): `checkpoint` may run in a signal handler meanwhile
            time.sleep(0.5)
        _RUNNING.pop(cell_id, None)
        if proc.returncode != 0:
            raise RuntimeError(
                f"cell {cell_id}: `emsweep sweep cell` exited {proc.returncode} (stages {self.stages})"
            )
        return {"cell": cell_id, "stages": self.stages}

    def checkpoint(self, cell_id: str) -> Any:
        """submitit calls this on the pre-timeout / preemption signal: let training save, then requeue."""
        import submitit

        proc = _RUNNING.get(cell_id)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + self.grace_s
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if proc.poll() is None:
                proc.kill()
        return submitit.helpers.DelayedSubmission(self, cell_id)


def _minutes(t: str) -> int:
    """SLURM time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) -> whole minutes (submitit's `timeout_min`)."""
    days, rest = t.split("-", 1) if "-" in t else ("0", t)
    parts = [int(p) for p in rest.split(":")]
    if "-" in t:
        h, m, sec = [*parts, 0, 0][:3]
    else:
        h, m, sec = {1: [0, parts[0], 0], 2: [0, *parts]}.get(len(parts), parts)
    return max(1, int(days) * 1440 + h * 60 + m + (1 if sec else 0))


def _params(
    spec: SlurmSpec, *, name: str, gpus: int, time_: str, k: int | None, dep: str | None
) -> dict[str, Any]:
    _, secs = parse_signal(spec)
    p: dict[str, Any] = {
        "name": name,
        "timeout_min": _minutes(time_),
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": spec.cpus_per_task,
        "slurm_signal_delay_s": secs,
        "slurm_setup": list(spec.setup),
        # submitit appends to its logs already (--open-mode=append)
        "slurm_additional_parameters": {("requeue" if spec.requeue else "no_requeue"): True},
    }
    if gpus:
        p["gpus_per_node"] = gpus
    for key, value in (("slurm_partition", spec.partition), ("slurm_account", spec.account),
                       ("slurm_qos", spec.qos), ("slurm_mem", spec.mem), ("slurm_dependency", dep)):  # fmt: skip
        if value:
            p[key] = value
    if k:
        p["slurm_array_parallelism"] = k
    return p


def run_sweep_submitit(
    sweep: Sweep,
    *,
    max_parallel: int | None = None,
    stages: Sequence[str] = STAGES,
    report: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Submit the sweep's cells with submitit (train array -> eval array -> report), record the job ids in the
    same ledger as the sbatch executor, and return the ledger entry (None when there is nothing to do)."""
    try:
        import submitit
    except ImportError as exc:
        raise InputError("the submitit launcher needs submitit: pip install 'emsweep[slurm]'") from exc

    check_sweep_folder(sweep)
    stages = tuple(s for s in STAGES if s in stages)
    for c in sweep.cells:
        if c.recipe.slurm.nodes * c.recipe.slurm.gpus_per_node > 1:
            raise InputError(
                f"{sweep.source}: cell {c.id}: slurm.nodes x gpus_per_node > 1; multi-GPU training needs the "
                "sbatch executor (emsweep sweep run --executor slurm)"
            )
    specs = {c.recipe.slurm.model_dump_json() for c in sweep.cells}
    if len(specs) > 1:
        raise InputError(f"{sweep.source}: cells ask for different slurm resources; use --executor slurm")
    ledger = Ledger.read(sweep)
    active = ledger.active_cells(squeue_tasks())
    todo = [c for c in sweep.cells if c.id not in active and any(not is_done(c.root, s) for s in stages)]
    if not todo:
        echo(f"nothing to submit for sweep {sweep.name}")
        return None
    sweep.write_record()
    sweep_file = str(write_snapshot(sweep))
    spec = sweep.cells[0].recipe.slurm
    k = max_parallel or spec.max_parallel
    folder = slurm_root(sweep) / "submitit"
    python = spec.python or sys.executable

    def executor(kind: str, gpus: int, time_: str, dep: str | None) -> Any:
        ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
        ex.update_parameters(
            **_params(spec, name=f"{sweep.name}-{kind}", gpus=gpus, time_=time_, k=k, dep=dep)
        )
        return ex

    need_train = [c for c in todo if any(s in stages and not is_done(c.root, s) for s in TRAIN_STAGES)]
    need_eval = [c for c in todo if "eval" in stages and not is_done(c.root, "eval")]
    entry = ledger.start(launcher="submitit", dir=folder, sweep_file=sweep_file)

    def record(kind: str, key: str, cells: list[Cell], job_id: str) -> None:
        ledger.add_job(entry, {"key": key, "kind": kind, "cells": [c.id for c in cells], "job_id": job_id})

    try:
        _submit_all(sweep, spec, executor, need_train, need_eval, stages, report, python, sweep_file, record)
    except Exception as exc:
        ids = [j["job_id"] for j in entry["jobs"]]
        ledger.finish(entry, "failed", error=str(exc), cancelled=cancel_jobs(ids))
        raise InputError(
            f"submitit submission failed: {exc}; cancelled the jobs already submitted: {ids}"
        ) from exc
    ledger.finish(entry, "submitted")
    for j in entry["jobs"]:
        echo(f"submitted {j['key']:<14} job {j['job_id']:>8}  {len(j['cells']) or 1:>3} task(s)")
    echo(f"submitit folder: {folder}")
    return entry


def _submit_all(
    sweep, spec, executor, need_train, need_eval, stages, report, python, sweep_file, record
) -> None:
    where = f"{sweep.source}: slurm"
    train_stages = ",".join(s for s in TRAIN_STAGES if s in stages)
    train_id = None
    if need_train:
        ex = executor("train", spec.gpus_per_node, check_time(spec.time, f"{where}.time"), None)
        jobs = ex.map_array(CellTask(python, sweep_file, train_stages), [c.id for c in need_train])
        train_id = jobs[0].job_id.split("_")[0]
        record("train", "train", need_train, train_id)
    eval_ids = []
    if need_eval:
        groups = [[c for c in need_eval if c in need_train], [c for c in need_eval if c not in need_train]]
        for key, cells in zip(("eval", "eval-trained"), groups, strict=True):
            if not cells:
                continue
            dep = f"aftercorr:{train_id}" if key == "eval" and train_id else None
            t = check_time(spec.eval_time or spec.time, f"{where}.eval_time")
            ex = executor("eval", eval_gpus(cells[0]), t, dep)
            jobs = ex.map_array(CellTask(python, sweep_file, "eval"), [c.id for c in cells])
            eval_ids.append(jobs[0].job_id.split("_")[0])
            record("eval", key, cells, eval_ids[-1])
    if report and eval_ids:
        ex = executor("report", 0, "01:00:00", "afterany:" + ":".join(eval_ids))
        job = ex.submit(_report, python, str(sweep.root.resolve()))
        record("report", "report", [], job.job_id)


def _report(python: str, root: str) -> None:
    """The report job (a plain function: submitit pickles it by reference)."""
    subprocess.run([python, "-m", "emsweep", "report", root], check=True)
