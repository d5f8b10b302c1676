"""The test cluster itself works: a batch job runs, and a self-requeued job restarts and completes."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slurm


def test_cluster_runs_a_job_and_requeues_it(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --output={out}\n#SBATCH --open-mode=append\n#SBATCH --requeue\n"
        'echo "run ${SLURM_RESTART_COUNT:-0}"\n'
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then scontrol requeue "$SLURM_JOB_ID"; sleep 30; fi\n'
    )
    job = slurm_cluster.run("sbatch", "--parsable", str(script)).stdout.strip()
    # CRED_EXPIRE shortens the requeue hold (default 120 s); the wait is generous, the result is what counts
    slurm_cluster.wait_empty(timeout=300, job_ids=[job])
    assert [ln for ln in out.read_text().splitlines() if ln.startswith("run")] == ["run 0", "run 1"]
    # jobcomp/filetxt records the requeued first run as PENDING (the state it went back to)
    assert slurm_cluster.states(job)["-"] == ["PENDING", "COMPLETED"]
