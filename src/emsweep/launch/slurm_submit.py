"""Submitting a planned sweep: write the scripts, check them all with `sbatch --test-only`, submit them in order
with `sbatch --parsable` (dependencies by job id), and record each step in the ledger. If sbatch refuses a job
half-way, the jobs already accepted are cancelled and the ledger says what happened.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from emsweep.io import InputError, atomic_write_text
from emsweep.launch.slurm_ledger import Ledger, slurm_root, write_snapshot
from emsweep.launch.slurm_plan import JobPlan, SubmissionPlan, plan_submission
from emsweep.launch.slurm_queue import cancel_jobs, run_client, squeue_tasks
from emsweep.launch.slurm_render import submit_script
from emsweep.launch.sweep import STAGES, Sweep, check_sweep_folder


def _parse_job_id(stdout: str) -> str:
    jid = stdout.strip().splitlines()[-1].split(";")[0].strip() if stdout.strip() else ""
    if not jid.isdigit():
        raise InputError(f"sbatch --parsable printed {stdout.strip()!r}, not a job id")
    return jid


def _sbatch_error(job: JobPlan, r: subprocess.CompletedProcess) -> str:
    msg = (r.stderr.strip() or r.stdout.strip() or f"exit code {r.returncode}").replace("\n", " | ")
    hint = ""
    if "partition" in msg.lower():
        hint = " (check slurm.partition in the recipe; `sinfo -s` lists partitions)"
    elif "account" in msg.lower() or "qos" in msg.lower():
        hint = " (check slurm.account / slurm.qos in the recipe; `sacctmgr show assoc user=$USER`)"
    return f"sbatch rejected {job.script.name}: {msg}{hint}"


def _next_number(sweep: Sweep) -> int:
    try:
        return Ledger.read(sweep).next_number
    except InputError:
        return 1


def run_sweep_slurm(
    sweep: Sweep,
    *,
    dry_run: bool = False,
    max_parallel: int | None = None,
    stages: Sequence[str] = STAGES,
    report: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Render, check and submit the sweep's job arrays; record job ids. Returns the ledger entry (None if
    nothing was submitted). `dry_run` prints the scripts and sbatch lines and writes/submits nothing."""
    check_sweep_folder(sweep)
    if dry_run:
        plan = plan_submission(
            sweep, max_parallel=max_parallel, stages=stages, report=report, number=_next_number(sweep)
        )
        _print_plan(plan, echo, dry_run=True)
        return None

    if shutil.which("sbatch") is None:
        raise InputError(
            "`sbatch` not found on PATH: run `emsweep sweep run --executor slurm` on a SLURM login node "
            "(or use --executor local); nothing was submitted"
        )
    ledger = Ledger.read(sweep)
    active = ledger.active_cells(squeue_tasks())
    number = ledger.next_number
    sweep.write_record()
    sweep_file = write_snapshot(sweep)
    plan = plan_submission(
        sweep,
        max_parallel=max_parallel,
        stages=stages,
        report=report,
        active_cells=set(active),
        number=number,
        sweep_file=sweep_file,
    )
    if not plan.jobs:
        _print_plan(plan, echo, dry_run=False)
        return None

    # Render to disk, then let sbatch validate every script (partition, account, qos, resources) before
    # anything is submitted.
    plan.dir.mkdir(parents=True, exist_ok=True)
    (slurm_root(sweep) / "logs").mkdir(parents=True, exist_ok=True)
    for job in plan.jobs:
        atomic_write_text(job.script, job.text)
        for path, text in job.files.items():
            atomic_write_text(path, text)
        job.script.chmod(0o755)
    atomic_write_text(plan.dir / "submit.sh", submit_script(sweep, number, plan.shell_lines()))
    for job in plan.jobs:
        r = run_client(["sbatch", "--test-only", str(job.script)])
        if r.returncode != 0:
            raise InputError(_sbatch_error(job, r) + f"; nothing was submitted (scripts in {plan.dir})")

    entry = ledger.start(dir=plan.dir, sweep_file=sweep_file, cwd=str(Path.cwd()))
    job_ids: dict[str, str] = {}
    for job in plan.jobs:
        argv = job.argv(job_ids)
        rec = {"key": job.key, "kind": job.kind, "script": str(job.script), "cells": job.cells, "argv": argv}
        r = run_client(argv)
        if r.returncode != 0:
            err = _sbatch_error(job, r)
            cancelled = cancel_jobs(list(job_ids.values()))
            entry["jobs"].append({**rec, "job_id": None})
            ledger.finish(entry, "failed", error=err, cancelled=cancelled)
            extra = f"; cancelled the jobs already submitted: {', '.join(cancelled)}" if cancelled else ""
            raise InputError(f"{err}{extra} (recorded in {ledger.path})")
        job_ids[job.key] = _parse_job_id(r.stdout)
        ledger.add_job(entry, {**rec, "job_id": job_ids[job.key]})
    ledger.finish(entry, "submitted")
    _print_plan(plan, echo, dry_run=False, job_ids=job_ids)
    return entry


def _print_plan(
    plan: SubmissionPlan, echo: Callable[[str], None], *, dry_run: bool, job_ids: dict[str, str] | None = None
) -> None:
    n = len(plan.sweep.cells)
    if plan.active:
        echo(f"{len(plan.active)} cell(s) already have a queued or running job, not resubmitted: "
             + ", ".join(plan.active))  # fmt: skip
    if not plan.jobs:
        if plan.active:
            echo(f"nothing new to submit for sweep {plan.sweep.name} ({len(plan.done)}/{n} cells done)")
        else:
            echo(f"nothing to submit: all {n} cells of sweep {plan.sweep.name} are done")
        return
    if dry_run:
        for job in plan.jobs:
            echo(f"# ===== {job.script} =====")
            echo(job.text.rstrip("\n"))
            echo("")
        echo(f"# ===== sbatch commands ({len(plan.todo)} of {n} cells to run; {len(plan.done)} done) =====")
        for line in plan.shell_lines():
            if not line.startswith("echo"):
                echo(line)
        echo("# dry run: nothing written, nothing submitted")
        return
    for job in plan.jobs:
        dep = job.dependency(job_ids or {})
        echo(
            f"submitted {job.key:<14} job {job_ids[job.key] if job_ids else '?':>8}  "
            f"{len(job.cells) or 1:>3} task(s)  {'after ' + dep if dep else ''}".rstrip()
        )
    echo(f"scripts: {plan.dir}   logs: {slurm_root(plan.sweep) / 'logs'}")
    echo(f"follow with: emsweep sweep status {plan.sweep.source}")
