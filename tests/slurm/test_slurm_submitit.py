"""The optional submitit launcher on the real test cluster: a cell submitted from Python, preempted mid-training
with submitit's signal, requeued by submitit, resumed from the saved checkpoint."""

from __future__ import annotations

import pytest

from emsweep.io import is_done
from emsweep.launch.slurm import read_ledger
from emsweep.launch.sweep import load_sweep

pytestmark = pytest.mark.slurm


def test_submitit_launcher_trains_and_survives_preemption(slurm_cluster, make_sweep):
    from emsweep.launch.submitit_launcher import run_sweep_submitit
    from emsweep.train.checkpoints import is_complete

    sweep = load_sweep(make_sweep("subm", axes={"data.fraction_correct": [1.0]}, max_steps=16, steps=(2, 16)))
    [cell] = sweep.cells
    entry = run_sweep_submitit(sweep, stages=("mix", "train"), report=False, echo=lambda s: None)
    assert entry["launcher"] == "submitit" and [j["key"] for j in entry["jobs"]] == ["train"]
    job = entry["jobs"][0]["job_id"]
    assert read_ledger(sweep)["submissions"][0]["status"] == "submitted"

    def logs() -> str:
        return "".join(p.read_text() for p in sorted(sweep.root.glob("slurm/submitit/*/*_log.*")))[-4000:]

    slurm_cluster.wait_for(
        lambda: is_complete(cell.root / "checkpoint-2"), 600, "first checkpoint", job=job, logs=logs
    )
    # submitit asks SLURM for SIGUSR2 before the time limit, sent to the job step (not the batch shell)
    r = slurm_cluster.run("scancel", "--signal=USR2", job, check=False)
    assert r.returncode == 0, r.stderr + "\n".join(slurm_cluster.queue())
    slurm_cluster.wait_empty(timeout=600, job_ids=[job])

    assert is_done(cell.root, "train")
    log = (cell.root / "logs" / "train.log").read_text()
    assert "preempted (SIGUSR1) at step " in log, log[-2000:]
    step = int(log.split("preempted (SIGUSR1) at step ", 1)[1].split(":", 1)[0])
    assert f"resuming from checkpoint-{step}" in log
    [states] = slurm_cluster.states(job).values()  # one cell: submitit submits a plain job
    assert states[-1] == "COMPLETED" and len(states) >= 2, states
    assert run_sweep_submitit(sweep, stages=("mix", "train"), report=False, echo=lambda s: None) is None
