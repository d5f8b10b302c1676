"""`emsweep sweep status --executor slurm`: each cell's done stages joined with the state of its latest job.

Job states come from `squeue` (queued and running), and from `sacct` where the cluster keeps accounting; without
accounting, or when the controller cannot be reached, the done-markers say what finished.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emsweep.io import InputError, is_done
from emsweep.launch.slurm_ledger import Ledger, slurm_root
from emsweep.launch.slurm_queue import TaskState, sacct_states, squeue_tasks
from emsweep.launch.sweep import STAGES, Sweep


@dataclass
class CellStatus:
    cell: str
    stages: dict[str, bool]
    job: str  # e.g. "train RUNNING (job 12_0)", "eval PENDING (Dependency)", "-"
    log: str | None = None


@dataclass
class SweepStatus:
    sweep: str
    cells: list[CellStatus]
    accounting: bool
    submissions: int
    note: str = ""  # why job states are missing (squeue unavailable)

    def __rich__(self):
        from rich.table import Table

        t = Table(
            title=f"sweep {self.sweep}: {sum(all(c.stages.values()) for c in self.cells)}/{len(self.cells)} "
            f"cells done, {self.submissions} submission(s)"
            + ("" if self.accounting else " (no SLURM accounting: finished jobs shown by done-markers)")
            + (f"\n[yellow]{self.note}[/yellow]" if self.note else "")
        )
        t.add_column("cell", no_wrap=True)
        for s in STAGES:
            t.add_column(s, justify="center")
        t.add_column("job")
        t.add_column("log", overflow="fold")
        for c in self.cells:
            marks = ["[green]done[/green]" if c.stages[s] else "-" for s in STAGES]
            t.add_row(c.cell, *marks, c.job, c.log or "")
        return t

    def __str__(self) -> str:
        return "\n".join(
            f"{c.cell}\t{','.join(s for s, d in c.stages.items() if d) or '-'}\t{c.job}" for c in self.cells
        )


def slurm_status(sweep: Sweep) -> SweepStatus:
    """Each cell's done stages and the state of its latest job (squeue; sacct when accounting is there)."""
    ledger = Ledger.read(sweep)
    queue_note = "" if shutil.which("squeue") else "squeue not found: job states unknown"
    tasks: list[TaskState] = []
    if not queue_note:
        try:
            tasks = squeue_tasks()
        except InputError as exc:  # the controller is down or unreachable: still show the done-markers
            queue_note = str(exc)
    active = ledger.active_cells(tasks)
    # (cell, kind) -> (job record, array index) of the cell's last job of that kind
    latest: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
    for sub in ledger.submissions:
        for job in sub.get("jobs", []):
            for i, cid in enumerate(job.get("cells", [])):
                latest[(cid, job["kind"])] = (job, i)
    acct = sacct_states(ledger.job_ids())
    logs = slurm_root(sweep) / "logs"
    rows = []
    for c in sweep.cells:
        stages = {s: is_done(c.root, s) for s in STAGES}
        # the job that matters: the one for the first stage not done (a failed training explains a missing eval)
        kind = "train" if not (stages["mix"] and stages["train"]) else "eval"
        rec = latest.get((c.id, kind)) or latest.get((c.id, "eval")) or latest.get((c.id, "train"))
        job_txt, log = "-", None
        if c.id in active:
            t = active[c.id]
            k = ledger.job_kind(t.job_id)
            reason = f" {t.reason}" if t.reason not in ("", "None") else ""
            job_txt = f"{k} {t.state} ({t.job_id}_{t.task}){reason}"
            log = _rel(logs / f"{k}-{t.job_id}_{t.task}.out")
        elif rec is not None:
            job, i = rec
            jid = job.get("job_id")
            if jid:
                log = _rel(logs / f"{job['kind']}-{jid}_{i}.out")
            if not jid:
                job_txt = "submission failed"
            elif acct is not None and (jid, i) in acct:
                job_txt = f"{job['kind']} {acct[(jid, i)]} ({jid}_{i})"
            elif all(stages.values()):
                job_txt = "finished"
            else:
                job_txt = f"{job['kind']} ended, not done: see log"
        rows.append(CellStatus(c.id, stages, job_txt, log))
    return SweepStatus(sweep.name, rows, acct is not None, len(ledger.submissions), queue_note)


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)
