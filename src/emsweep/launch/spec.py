"""The SLURM executor's recipe section (`slurm:`): resources and setup of the cells' jobs."""

from __future__ import annotations

from pydantic import Field

from emsweep.config import StrictModel


class SlurmSpec(StrictModel):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int = 1
    nodes: int = 1
    cpus_per_task: int = 8
    mem: str | None = "64G"
    time: str = "04:00:00"
    eval_time: str | None = None
    max_parallel: int | None = None
    signal: str = "USR1@300"
    requeue: bool = True
    extra: list[str] = Field(default_factory=list)  # verbatim `#SBATCH` lines
    setup: list[str] = Field(default_factory=list)  # shell lines run before the job (module load, venv)
    python: str | None = None  # interpreter with emsweep on the nodes (default: the one that submits)
    # GPUs per eval task (default: eval.engine tensor_parallel_size or 1)
    eval_gpus: int | None = Field(None, ge=0)
    report_partition: str | None = None  # the CPU-only report job (default: `partition`)
