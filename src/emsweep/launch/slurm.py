"""The SLURM executor: a sweep as job arrays (train -> eval -> report), preemption-safe, with a ledger.

`run_sweep_slurm` renders readable sbatch scripts from the templates in `slurm/` into
`<sweep>/slurm/submit-NNN/`, checks them with `sbatch --test-only`, submits them with `sbatch --parsable`
and records every job id in `<sweep>/slurm/submissions.json` (atomic). Per resource group (cells whose `slurm:`
section and accelerate config agree) there is one training array over the cells that still need training, one
evaluation array over the same cells that starts task by task (`--dependency=aftercorr`), one evaluation array
for cells trained earlier, and one report job after all evaluation (`afterany`). Only cells with work left and
no job already queued or running are submitted, so resubmitting a finished sweep submits nothing.

The scripts trap the `--signal` SLURM sends before the time limit (SIGUSR1 by default), forward it to training
(which saves a complete checkpoint and exits 99, see `emsweep.train.runner.EXIT_PREEMPTED`) and requeue
themselves; the restart resumes from the last complete checkpoint, evaluation from its done-markers.
`slurm_status` joins the done-markers with `squeue` (and `sacct` where accounting runs).

This module is the executor's front door; the work is split along its seams:
`slurm_render` (templates -> scripts), `slurm_plan` (which jobs, which cells), `slurm_submit` (sbatch, in order),
`slurm_queue` (squeue / sacct / scancel), `slurm_ledger` (submissions.json, shared with the submitit launcher)
and `slurm_status` (the status table).
"""

from __future__ import annotations

from emsweep.launch.slurm_ledger import LEDGER, SNAPSHOT, Ledger, read_ledger, slurm_root, write_snapshot
from emsweep.launch.slurm_plan import EVAL_STAGES, TRAIN_STAGES, JobPlan, SubmissionPlan, plan_submission
from emsweep.launch.slurm_queue import TaskState, parse_sacct, parse_squeue, sacct_states, squeue_tasks
from emsweep.launch.slurm_render import (
    check_time,
    eval_gpus,
    parse_signal,
    render_template,
    sbatch_header,
    template_dir,
)
from emsweep.launch.slurm_status import CellStatus, SweepStatus, slurm_status
from emsweep.launch.slurm_submit import run_sweep_slurm

__all__ = [
    "EVAL_STAGES",
    "LEDGER",
    "SNAPSHOT",
    "TRAIN_STAGES",
    "CellStatus",
    "JobPlan",
    "Ledger",
    "SubmissionPlan",
    "SweepStatus",
    "TaskState",
    "check_time",
    "eval_gpus",
    "parse_sacct",
    "parse_signal",
    "parse_squeue",
    "plan_submission",
    "read_ledger",
    "render_template",
    "run_sweep_slurm",
    "sacct_states",
    "sbatch_header",
    "slurm_root",
    "slurm_status",
    "squeue_tasks",
    "template_dir",
    "write_snapshot",
]
