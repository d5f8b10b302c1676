"""Talking to SLURM's client tools: running them with clear errors, and parsing `squeue` and `sacct` output."""

from __future__ import annotations

import getpass
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from emsweep.io import InputError


def run_client(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a SLURM client (sbatch, squeue, scancel); a missing tool or a silent controller is an InputError."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise InputError(
            f"`{argv[0]}` not found: run this on a SLURM login node (or install the SLURM client tools)"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise InputError(f"`{' '.join(argv)}` did not answer in {timeout:.0f}s: is slurmctld up?") from exc


def cancel_jobs(job_ids: list[str]) -> list[str]:
    """`scancel` the jobs; returns the ids cancelled (none if scancel failed)."""
    if not job_ids:
        return []
    r = run_client(["scancel", *job_ids])
    return job_ids if r.returncode == 0 else []


@dataclass
class TaskState:
    job_id: str  # the array job id (or plain job id)
    task: int | None
    state: str
    reason: str = ""
    elapsed: str = ""
    node: str = ""


def parse_squeue(text: str) -> list[TaskState]:
    """Parse `squeue -h -r -o '%F|%K|%T|%r|%M|%N'` output (one line per array task)."""
    out = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        task = int(parts[1]) if parts[1].isdigit() else None
        out.append(TaskState(parts[0], task, *[p for p in parts[2:6]]))
    return out


def squeue_tasks() -> list[TaskState]:
    """This user's queued and running jobs, one entry per array task."""
    r = run_client(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%F|%K|%T|%r|%M|%N"])
    if r.returncode != 0:
        raise InputError(f"squeue failed: {r.stderr.strip() or r.stdout.strip()}")
    return parse_squeue(r.stdout)


def parse_sacct(text: str) -> dict[tuple[str, int | None], str]:
    """Parse `sacct -n -P -X -o JobID,State` lines (`123_4|COMPLETED`, `125|FAILED`) -> {(job, task): state}."""
    out: dict[tuple[str, int | None], str] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        jid, state = line.strip().split("|", 1)
        state = state.split()[0] if state.strip() else ""
        if "_" in jid:
            base, task = jid.split("_", 1)
            if task.isdigit():
                out[(base, int(task))] = state
            continue  # pending ranges like 123_[4-7]
        out[(jid, None)] = state
    return out


def sacct_states(job_ids: Sequence[str]) -> dict[tuple[str, int | None], str] | None:
    """Final states from accounting, or None when this cluster keeps no accounting (then: done-markers)."""
    if not job_ids or shutil.which("sacct") is None:
        return None
    try:
        r = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return parse_sacct(r.stdout)
