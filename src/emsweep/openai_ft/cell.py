"""One cell of the gpt-4o arm for the executor's train stage: `finetune` + one `poll`, never spending silently.

Why a function of its own: `emsweep sweep run` and `emsweep train` route `method: openai` cells here, where a
stage must end at once (done, or waiting for OpenAI) instead of polling for hours, and where creating a job (money)
needs the same explicit consent as typing `emsweep openai finetune`: the `--create-openai-jobs` flag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emsweep.io import InputError
from emsweep.openai_ft.jobs import (
    CHECKPOINTS_FILE,
    check_key,
    check_lifecycle,
    default_client,
    plan,
    refresh_cell,
    start_job,
)
from emsweep.openai_ft.ledger import Ledger
from emsweep.openai_ft.prices import load_prices

CREATE_FLAG = "--create-openai-jobs"  # the executor's consent to spend (`emsweep sweep run`, `emsweep train`)


class OpenAIJobFailed(RuntimeError):
    """The cell's job failed or was cancelled: this cell fails, the sweep's other cells go on."""


class JobCreationNotAllowed(InputError):
    """A cell has no job and the caller did not consent to creating one (creating a job spends money)."""


@dataclass
class CellTraining:
    """Where one cell's OpenAI training stands after `train_cell`: done (checkpoints registered) or waiting."""

    cell: str
    job_id: str
    status: str | None
    done: bool
    fine_tuned_model: str | None = None

    def waiting(self) -> str:
        return f"waiting for OpenAI job {self.job_id} (status {self.status}); rerun to continue"


def train_cell(
    sweep: Any,
    cell: Any,
    *,
    create_jobs: bool = False,
    client: Any = None,
    prices_path: str | Path | None = None,
    lifecycle_path: str | Path | None = None,
    today: Any = None,
    echo: Callable[[str], None] = print,
) -> CellTraining:
    """`finetune` + one `poll` for one cell whose mix is written: what the executor's train stage runs.

    A cell with a job: one refresh; a succeeded job registers its checkpoints and marks `train` done (`done`), a
    running one is reported (`done` False: rerun later), a failed or cancelled one is `OpenAIJobFailed`, saying how
    to start another. A cell without a job: the lifecycle and OpenAI's limits are checked and the cost estimated
    (free), then a job is created only with `create_jobs` (the CLI's `--create-openai-jobs`), after the same key
    check as `finetune`; without it a `JobCreationNotAllowed` names the flag and the estimate.
    """
    from emsweep.openai_ft import lifecycle as lc

    cid = cell.id
    ledger = Ledger(sweep.root)
    prices = load_prices(prices_path)
    rec = ledger.cell(cid)
    if rec.get("job_id"):
        client = client or default_client()
        rec = refresh_cell(client, ledger, cid, prices)
        status = rec.get("status")
        if status in ("failed", "cancelled"):
            why = f": {rec['error']}" if rec.get("error") else ""
            raise OpenAIJobFailed(
                f"cell {cid}: OpenAI job {rec['job_id']} {status}{why}; start a new one with "
                f"`emsweep openai finetune {sweep.source} --cells {cid} --retry-failed`"
            )
        done = status == "succeeded" and (Path(cell.root) / CHECKPOINTS_FILE).exists()
        return CellTraining(cid, rec["job_id"], status, done, rec.get("fine_tuned_model"))
    day = lc.today(today)
    check_lifecycle(sweep, [cell], day, lc.load_lifecycle(lifecycle_path), echo)
    (p,) = plan(sweep, [cid], prices, mix=None)
    cost = f"{p.billed_tokens:,} billed tokens on {p.model}, est. ${p.estimated_cost_usd:.2f}"
    if not create_jobs:
        raise JobCreationNotAllowed(
            f"{sweep.source}: cell {cid} (`method: openai`) has no OpenAI fine-tuning job yet, and creating one "
            f"spends money ({cost}). Pass {CREATE_FLAG} to create it here, or create the jobs with "
            f"`emsweep openai finetune {sweep.source}` (`--dry-run` first shows every cell's cost)"
        )
    client = client or default_client()
    check_key(client)
    echo(f"cell {cid}: creating an OpenAI fine-tuning job ({cost})")
    job_id = start_job(client, ledger, p, sweep.name, day=day, lifecycle_path=lifecycle_path, echo=echo)
    return CellTraining(cid, job_id, ledger.cell(cid).get("status"), False)
