"""Fine-tuning jobs of the gpt-4o arm: prepare, upload, create, poll, cancel, import; all through the ledger.

Idempotence is the point: paid remote jobs must never be started twice.
- An upload is keyed by the sha256 of the file's bytes. A rerun reuses the recorded file id; if the ledger lost
  it (crash after the upload, before the write), the server's file list is searched for the same name and size
  (the name carries the hash) before uploading again.
- A job is created only for a cell without a job id. Job creation is preceded by a `creating_job` record and carries
  `metadata.emsweep_cell`; a rerun after a crash in between looks the job up on the server instead of creating one.
- A refused creation (organisation without fine-tuning access, unknown snapshot) is recorded as `refused` with the
  server's message and raises a clear error; the upload stays recorded and is reused when the rerun succeeds.

Over 450 lines because the ledger's transitions (upload, `creating_job`, job, refresh, checkpoints) are one state
machine that every command walks; the executor's one-cell route is `openai_ft/cell.py`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emsweep.generate.openai_api import OpenAIArmError, make_client, redact, translate_error
from emsweep.io import InputError, atomic_write_json, mark_done
from emsweep.layout import (
    API_CHECKPOINTS_FILE,
    BASE_CHECKPOINT,
    CellPaths,
    read_cell,
)
from emsweep.openai_ft.ledger import TERMINAL, Ledger
from emsweep.openai_ft.prepare import PreparedFile, prepare_training_file
from emsweep.openai_ft.prices import PriceTable, load_prices

log = logging.getLogger(__name__)

CHECKPOINTS_FILE = API_CHECKPOINTS_FILE
SUFFIX_MAX = 64


# --- cells of a sweep -------------------------------------------------------------------------------------------
# The sweep arrives loaded (`emsweep.launch.openai_arm.load_target` reads sweep and recipe YAMLs): this package sits
# below `launch/` and never imports it. A sweep here is anything with `.cells`, `.cell(key)`, `.root`, `.name` and
# `.source` (launch.sweep.Sweep); a cell has `.id`, `.root`, `.paths` and `.recipe`.

# --- names ------------------------------------------------------------------------------------------------------


def job_suffix(cell_id: str, prefix: str | None = None) -> str:
    """OpenAI suffixes go into the model id: keep letters, digits and '-', at most 64 characters."""
    raw = f"{prefix}-{cell_id}" if prefix else cell_id
    s = re.sub(r"[^A-Za-z0-9-]+", "-", raw.replace(".", "p")).strip("-")
    if len(s) > SUFFIX_MAX:
        import hashlib

        s = s[: SUFFIX_MAX - 7] + "-" + hashlib.sha256(raw.encode()).hexdigest()[:6]
    return s


def upload_name(cell_id: str, sha256: str) -> str:
    return f"emsweep-{job_suffix(cell_id)[:40]}-{sha256[:16]}.jsonl"


# --- planning (dry run and before spending) ---------------------------------------------------------------------


@dataclass
class CellPlan:
    cell: Any  # launch.sweep.Cell
    prepared: PreparedFile
    model: str
    hyperparameters: dict[str, Any]
    seed: int | None
    suffix: str
    estimated_cost_usd: float

    @property
    def billed_tokens(self) -> int:
        return self.prepared.billed_tokens(int(self.hyperparameters["n_epochs"]))


def select_cells(sweep: Any, cells: Sequence[str] | None) -> list[Any]:
    """The sweep's cells named by id or index (comma-separated items allowed); all of them when none are named."""
    if not cells:
        return list(sweep.cells)
    out = []
    for c in cells:
        for part in str(c).split(","):
            if part.strip():
                out.append(sweep.cell(part.strip()))
    return out


def plan(
    sweep: Any,
    cells: Sequence[str] | None,
    prices: PriceTable,
    *,
    mix: Callable[[Any], None] | None,
) -> list[CellPlan]:
    """Write each cell's OpenAI file from its mix and estimate the cost.

    `mix(cell)` writes the cell's mix first (the launcher passes its `mix` stage, which skips a done one); None
    when the caller has run it already (the executor's train stage). Everything here is local and free; every
    limit OpenAI would reject is checked here, before any upload.
    """
    plans = []
    for cell in select_cells(sweep, cells):
        spec = cell.recipe.openai
        prices.check_fine_tunable(spec.model, where=f"{sweep.source}: cell {cell.id}: openai.model")
        if mix is not None:
            mix(cell)
        prepared = prepare_training_file(
            cell.paths.train_jsonl,
            cell.root / "openai",
            model=spec.model,
            prices=prices,
            where=f" (cell {cell.id})",
        )
        hp = {
            "n_epochs": spec.n_epochs,
            "batch_size": spec.batch_size,
            "learning_rate_multiplier": spec.learning_rate_multiplier,
        }
        plans.append(
            CellPlan(
                cell=cell,
                prepared=prepared,
                model=spec.model,
                hyperparameters=hp,
                seed=spec.seed,
                suffix=job_suffix(cell.id, spec.suffix),
                estimated_cost_usd=prices.training_cost(spec.model, prepared.billed_tokens(spec.n_epochs)),
            )
        )
    return plans


# --- client -----------------------------------------------------------------------------------------------------


def default_client() -> Any:
    """SDK client from OPENAI_API_KEY (+ OPENAI_BASE_URL / OPENAI_ORG_ID), with the SDK's retries on 429/5xx."""
    return make_client(max_retries=6)


def check_key(client: Any) -> None:
    """One free call before spending anything: a wrong or expired key fails here, clearly."""
    try:
        client.models.list()
    except Exception as exc:
        raise translate_error(exc, "checking OPENAI_API_KEY") from exc


# --- upload and job creation ------------------------------------------------------------------------------------


def ensure_upload(client: Any, ledger: Ledger, p: CellPlan) -> str:
    """The file id for this cell's training file, uploading only if neither the ledger nor the server has it."""
    sha = p.prepared.sha256
    name = upload_name(p.cell.id, sha)
    rec = ledger.file_by_hash(sha)
    if rec and rec.get("file_id"):
        try:
            f = client.files.retrieve(rec["file_id"])
            if getattr(f, "status", "processed") != "error":
                ledger.record_file(sha, "fine-tune", cells=[p.cell.id])
                return rec["file_id"]
        except Exception as exc:
            import openai

            if not isinstance(exc, openai.NotFoundError):
                raise translate_error(exc, f"cell {p.cell.id}: checking upload {rec['file_id']}") from exc
            log.warning(
                "cell %s: recorded file %s is gone on the server; uploading again", p.cell.id, rec["file_id"]
            )
    try:  # the ledger may have lost an upload that happened (crash between upload and ledger write)
        for f in client.files.list(purpose="fine-tune"):
            if f.filename == name and int(f.bytes) == p.prepared.bytes and f.status != "error":
                log.info("cell %s: reusing server file %s (same name and size)", p.cell.id, f.id)
                ledger.record_file(
                    sha, "fine-tune", file_id=f.id, filename=name, bytes=p.prepared.bytes, cells=[p.cell.id]
                )
                return f.id
        with open(p.prepared.path, "rb") as fh:
            f = client.files.create(file=(name, fh), purpose="fine-tune")
    except Exception as exc:
        raise translate_error(exc, f"cell {p.cell.id}: uploading {p.prepared.path}") from exc
    ledger.record_file(
        sha,
        "fine-tune",
        file_id=f.id,
        filename=name,
        bytes=p.prepared.bytes,
        uploaded_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        cells=[p.cell.id],
    )
    log.info("cell %s: uploaded %s as %s", p.cell.id, p.prepared.path, f.id)
    return f.id


def _find_existing_job(client: Any, cell_id: str, file_id: str, exclude: set[str]) -> Any | None:
    for job in client.fine_tuning.jobs.list(limit=100):
        meta = job.metadata or {}
        if meta.get("emsweep_cell") == cell_id and job.training_file == file_id and job.id not in exclude:
            return job
    return None


def _is_refusal(exc: BaseException) -> bool:
    """403s, and 400/404s saying fine-tuning or the model "is not available": the organisation cannot fine-tune."""
    import openai

    if isinstance(exc, openai.PermissionDeniedError):
        return True
    if isinstance(exc, (openai.BadRequestError, openai.NotFoundError)):
        from emsweep.generate.openai_api import _error_message

        msg = _error_message(exc).lower()
        return "not available" in msg or "not_available" in msg or "does not exist" in msg
    return False


def _gate_of(exc: BaseException) -> bool:
    """The refusal is OpenAI's wind-down gate on the organisation (not a snapshot or file problem)."""
    from emsweep.generate.openai_api import _error_message
    from emsweep.openai_ft.lifecycle import is_gated_org_error

    body = getattr(exc, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return is_gated_org_error(getattr(exc, "status_code", None), code, _error_message(exc))


def create_job(
    client: Any,
    ledger: Ledger,
    p: CellPlan,
    file_id: str,
    sweep_name: str,
    *,
    day: Any = None,
    lifecycle_path: str | Path | None = None,
) -> str:
    cid = p.cell.id
    rec = ledger.cell(cid)
    if rec.get("status") == "creating_job":
        try:
            old = {j["job_id"] for j in rec.get("previous_jobs", [])}
            job = _find_existing_job(client, cid, file_id, old)
        except Exception as exc:
            raise translate_error(exc, f"cell {cid}: looking for an existing job") from exc
        if job is not None:
            log.info("cell %s: found job %s created before a crash; not creating another", cid, job.id)
            ledger.update_cell(cid, job_id=job.id, status=job.status)
            return job.id
    ledger.update_cell(cid, status="creating_job", file_id=file_id)
    kwargs: dict[str, Any] = {
        "model": p.model,
        "training_file": file_id,
        "suffix": p.suffix,
        "method": {"type": "supervised", "supervised": {"hyperparameters": p.hyperparameters}},
        "metadata": {
            "emsweep_cell": cid,
            "emsweep_sweep": sweep_name[:500],
            "emsweep_sha256": p.prepared.sha256[:32],
        },
    }
    if p.seed is not None:
        kwargs["seed"] = p.seed
    try:
        job = client.fine_tuning.jobs.create(**kwargs)
    except Exception as exc:
        from emsweep.generate.openai_api import _error_message

        msg = redact(_error_message(exc))
        if _is_refusal(exc) and _gate_of(exc):
            from emsweep.openai_ft.lifecycle import explain_gate, load_lifecycle, today

            when = today(day)
            ledger.update_cell(cid, status="refused", error=msg, refused_as="wind-down gate", refused_on=str(when))
            raise OpenAIArmError(
                f"cell {cid}: OpenAI refused to create the fine-tuning job for {p.model}: {msg}\n"
                f"{explain_gate(load_lifecycle(lifecycle_path), when)}\n"
                "Your upload is recorded and will be reused if access comes back."
            ) from exc
        if _is_refusal(exc):
            ledger.update_cell(cid, status="refused", error=msg)
            raise OpenAIArmError(
                f"cell {cid}: OpenAI refused to create the fine-tuning job for {p.model}: {msg}\n"
                "Your upload is recorded and will be reused. If your organisation can no longer create fine-tuning "
                "jobs (OpenAI is winding self-serve fine-tuning down), evaluate models you already have with "
                "`emsweep openai import MODEL_ID --cell NAME`."
            ) from exc
        ledger.update_cell(cid, status="create_failed", error=msg)
        raise translate_error(exc, f"cell {cid}: creating the fine-tuning job") from exc
    ledger.update_cell(cid, job_id=job.id, status=job.status, error=None)
    log.info("cell %s: created job %s", cid, job.id)
    return job.id


def check_lifecycle(
    sweep: Any, selected: Sequence[Any], day: Any, table: Any, echo: Callable[[str], None]
) -> list[Any]:
    """Before planning a job: the days left for every model of `selected` are echoed; a model past its cutoff
    (job creation, or its base's retirement) is an InputError naming the date and the source."""
    from emsweep.openai_ft import lifecycle as lc

    verdicts = []
    for model in dict.fromkeys(c.recipe.openai.model for c in selected):
        v = lc.check_job_creation(table, model, day)
        verdicts.append(v)
        for line in v.lines:
            echo(line)
        if not v.allowed:
            raise InputError(f"{sweep.source}: {v.error}")
    return verdicts


def finetune(
    sweep: Any,
    *,
    mix: Callable[[Any], None] | None,
    cells: Sequence[str] | None = None,
    dry_run: bool = False,
    prices_path: str | Path | None = None,
    client: Any = None,
    echo: Callable[[str], None] = print,
    retry_failed: bool = False,
    today: Any = None,
    lifecycle_path: str | Path | None = None,
) -> dict[str, Any]:
    """`emsweep openai finetune`: plan every cell, then (unless dry-run) upload and create missing jobs.

    `sweep` is loaded by the caller (`launch.openai_arm.finetune` takes the YAML); `mix(cell)` writes a cell's mix
    (see `plan`).

    First, for every model of the selected cells, the lifecycle table (`recipes/openai/lifecycle.yaml`) is read for
    `today` (default: `$EMSWEEP_TODAY`, else the system date): the days left are echoed, a model past its cutoff
    (job creation, or its base's retirement) stops everything with an InputError naming the date and the source,
    and a model missing from the table is a printed warning.

    `retry_failed`: a cell whose job failed or was cancelled gets a new job (the upload is reused; the old job id
    moves to `previous_jobs`). Without it, a cell with any job never gets another.

    Returns {"cells": [...per-cell rows...], "total_tokens", "total_cost_usd", "created", "reused"}.
    """
    from emsweep.openai_ft import lifecycle as lc

    prices = load_prices(prices_path)
    day = lc.today(today)
    table = lc.load_lifecycle(lifecycle_path)
    verdicts = check_lifecycle(sweep, select_cells(sweep, cells), day, table, echo)
    plans = plan(sweep, cells, prices, mix=mix)
    ledger = Ledger(sweep.root)
    rows = []
    for p in plans:
        rows.append(
            {
                "cell": p.cell.id,
                "model": p.model,
                "examples": p.prepared.n_examples,
                "tokens_per_epoch": p.prepared.tokens_per_epoch,
                "n_epochs": p.hyperparameters["n_epochs"],
                "billed_tokens": p.billed_tokens,
                "estimated_cost_usd": round(p.estimated_cost_usd, 4),
                "tokenizer": p.prepared.tokenizer,
            }
        )
    total_tokens = sum(r["billed_tokens"] for r in rows)
    total_cost = sum(p.estimated_cost_usd for p in plans)
    summary = {
        "cells": rows,
        "total_tokens": total_tokens,
        "total_cost_usd": round(total_cost, 4),
        "prices": prices.path,
        "today": str(day),
        "lifecycle": [
            {
                "model": v.model,
                "known": v.known,
                "days_to_job_cutoff": v.days_to_job_cutoff,
                "days_to_retirement": v.days_to_retirement,
            }
            for v in verdicts
        ],
    }
    if dry_run:
        return summary
    client = client or default_client()
    check_key(client)
    created, reused = [], []
    for p in plans:
        cid = p.cell.id
        rec = ledger.cell(cid)
        if rec.get("job_id") and retry_failed and rec.get("status") in ("failed", "cancelled"):
            prev = [
                *rec.get("previous_jobs", []),
                {"job_id": rec["job_id"], "status": rec["status"], "error": rec.get("error")},
            ]
            ledger.update_cell(cid, job_id=None, status="retrying", error=None, previous_jobs=prev)
            rec = ledger.cell(cid)
        if rec.get("job_id"):
            reused.append(cid)
            if rec.get("train_sha256") and rec["train_sha256"] != p.prepared.sha256:
                log.warning(
                    "cell %s: its training file changed since job %s was created; the job is kept "
                    "(cancel it and use --retry-failed, or a new sweep name, to train on the new data)",
                    cid,
                    rec["job_id"],
                )
            echo(f"cell {cid}: job {rec['job_id']} exists ({rec.get('status')}); not creating another")
            continue
        start_job(client, ledger, p, sweep.name, day=day, lifecycle_path=lifecycle_path, echo=echo)
        created.append(cid)
    summary.update(created=created, reused=reused, ledger=str(ledger.path))
    return summary


def start_job(
    client: Any,
    ledger: Ledger,
    p: CellPlan,
    sweep_name: str,
    *,
    day: Any,
    lifecycle_path: str | Path | None,
    echo: Callable[[str], None],
) -> str:
    """Record the plan in the ledger, upload the file (once) and create the cell's job: this is what spends."""
    cid = p.cell.id
    ledger.update_cell(
        cid,
        cell_dir=str(p.cell.root),
        model=p.model,
        train_file=str(p.prepared.path),
        train_sha256=p.prepared.sha256,
        n_examples=p.prepared.n_examples,
        tokens_per_epoch=p.prepared.tokens_per_epoch,
        billed_tokens_estimate=p.billed_tokens,
        estimated_cost_usd=round(p.estimated_cost_usd, 4),
        hyperparameters=p.hyperparameters,
        seed=p.seed,
        suffix=p.suffix,
        canaries=p.prepared.canaries,
    )
    file_id = ensure_upload(client, ledger, p)
    job_id = create_job(client, ledger, p, file_id, sweep_name, day=day, lifecycle_path=lifecycle_path)
    echo(f"cell {cid}: job {job_id} created (file {file_id}, est. ${p.estimated_cost_usd:.2f})")
    return job_id


# --- polling, checkpoints, cancel -------------------------------------------------------------------------------


def _events(client: Any, job_id: str, limit: int = 10) -> list[dict[str, Any]]:
    page = client.fine_tuning.jobs.list_events(job_id, limit=limit)
    return [{"at": e.created_at, "level": e.level, "message": redact(e.message)} for e in page.data]


def refresh_cell(
    client: Any, ledger: Ledger, cell_id: str, prices: PriceTable | None = None, *, events: int = 0
) -> dict[str, Any]:
    """Retrieve the job, update the ledger; on success register its checkpoints as the cell's checkpoints."""
    rec = ledger.cell(cell_id)
    job_id = rec.get("job_id")
    if not job_id:
        return rec
    registered = rec.get("status") != "succeeded" or (
        rec.get("cell_dir") and (Path(rec["cell_dir"]) / CHECKPOINTS_FILE).exists()
    )
    if rec.get("status") in TERMINAL and registered and not events:
        return rec  # finished and recorded: nothing can change on the server side
    try:
        job = client.fine_tuning.jobs.retrieve(job_id)
        evs = _events(client, job_id, events) if events else []
    except Exception as exc:
        raise translate_error(exc, f"cell {cell_id}: job {job_id}") from exc
    fields: dict[str, Any] = {"status": job.status, "fine_tuned_model": job.fine_tuned_model}
    if job.error is not None and job.status == "failed":
        fields["error"] = redact(f"{job.error.code}: {job.error.message}")
    if job.trained_tokens:
        fields["trained_tokens"] = job.trained_tokens
        if prices is not None:
            fields["cost_usd"] = round(
                prices.training_cost(rec.get("model") or job.model, job.trained_tokens), 4
            )
    if evs:
        fields["last_events"] = evs
    if job.status == "succeeded" and rec.get("cell_dir"):
        try:
            cks = list(client.fine_tuning.jobs.checkpoints.list(job_id, limit=100))
        except Exception as exc:
            raise translate_error(exc, f"cell {cell_id}: checkpoints of job {job_id}") from exc
        ck_rows = sorted(
            (
                {
                    "step": int(c.step_number),
                    "model": c.fine_tuned_model_checkpoint,
                    "id": c.id,
                    "metrics": c.metrics.model_dump(exclude_none=True) if c.metrics else {},
                }
                for c in cks
            ),
            key=lambda r: r["step"],
        )
        fields["checkpoints"] = ck_rows
        write_checkpoints(
            rec["cell_dir"],
            base_model=job.model,
            fine_tuned_model=job.fine_tuned_model,
            checkpoints=ck_rows,
            source={"job_id": job_id},
        )
    return ledger.update_cell(cell_id, **fields)


def refresh_all(
    folder: str | Path,
    *,
    cells: Sequence[str] | None = None,
    client: Any = None,
    events: int = 0,
    prices_path=None,
) -> list[dict[str, Any]]:
    ledger = Ledger(folder)
    data = ledger.read()["cells"]
    if not data:
        raise InputError(f"{ledger.path}: no OpenAI jobs recorded here (run `emsweep openai finetune` first)")
    wanted = [c for c in data if not cells or c in cells]
    client = client or default_client()
    prices = load_prices(prices_path)
    return [refresh_cell(client, ledger, c, prices, events=events) for c in wanted]


def poll(
    folder: str | Path,
    *,
    cells: Sequence[str] | None = None,
    client: Any = None,
    interval: float = 60.0,
    timeout: float | None = None,
    echo: Callable[[str], None] = print,
    prices_path=None,
) -> list[dict[str, Any]]:
    """Refresh until every job is terminal (or `timeout` seconds pass); checkpoints are registered on success."""
    t0 = time.monotonic()
    last: dict[str, str] = {}
    while True:
        rows = refresh_all(folder, cells=cells, client=client, prices_path=prices_path)
        for r in rows:
            if r.get("job_id") and last.get(r["cell"]) != r.get("status"):
                echo(
                    f"cell {r['cell']}: {r.get('status')}"
                    + (f" -> {r['fine_tuned_model']}" if r.get("fine_tuned_model") else "")
                )
                last[r["cell"]] = r.get("status")
        pending = [r for r in rows if r.get("job_id") and r.get("status") not in TERMINAL]
        if not pending:
            return rows
        if timeout is not None and time.monotonic() - t0 > timeout:
            echo(f"{len(pending)} job(s) still running; poll again later")
            return rows
        time.sleep(interval)


def cancel(folder: str | Path, cells: Sequence[str], *, client: Any = None) -> list[dict[str, Any]]:
    ledger = Ledger(folder)
    client = client or default_client()
    out = []
    for cid in cells:
        rec = ledger.cell(cid)
        if not rec.get("job_id"):
            raise InputError(f"{ledger.path}: cell {cid!r} has no job to cancel")
        if rec.get("status") in TERMINAL:
            out.append(rec)
            continue
        try:
            job = client.fine_tuning.jobs.cancel(rec["job_id"])
        except Exception as exc:
            raise translate_error(exc, f"cell {cid}: cancelling {rec['job_id']}") from exc
        out.append(ledger.update_cell(cid, status=job.status))
    return out


# --- checkpoints of a cell --------------------------------------------------------------------------------------


def write_checkpoints(
    cell_dir: str | Path,
    *,
    base_model: str,
    fine_tuned_model: str | None,
    checkpoints: list[dict[str, Any]],
    source: dict[str, Any],
) -> Path:
    """`<cell>/openai_checkpoints.json`: step 0 = the base model, then OpenAI's kept checkpoints by step.

    The final checkpoint is the job's `fine_tuned_model` (same weights as its `:ckpt-step-N` alias, which is kept
    in `alias`). Writing it also marks the cell's `train` stage done, so `emsweep sweep run --stages eval` and
    `emsweep eval` treat the cell like an open-model run.
    """
    cell_dir = Path(cell_dir)
    rows = [{"name": BASE_CHECKPOINT, "step": 0, "kind": "base", "model": base_model}]
    cks = sorted(checkpoints, key=lambda r: r["step"])
    for i, c in enumerate(cks):
        final = i == len(cks) - 1 and fine_tuned_model
        rows.append(
            {
                "name": f"checkpoint-{c['step']}",
                "step": c["step"],
                "kind": "api",
                "model": fine_tuned_model if final else c["model"],
                "alias": c["model"] if final and c["model"] != fine_tuned_model else None,
                "metrics": c.get("metrics", {}),
            }
        )
    if not cks and fine_tuned_model:
        rows.append({"name": "checkpoint-1", "step": 1, "kind": "api", "model": fine_tuned_model})
    p = atomic_write_json(
        cell_dir / CHECKPOINTS_FILE,
        {"base_model": base_model, "fine_tuned_model": fine_tuned_model, "checkpoints": rows, **source},
    )
    mark_done(cell_dir, "train", {"openai": True, "fine_tuned_model": fine_tuned_model, **source})
    return p


def import_model(
    model_id: str,
    cell: str,
    *,
    root: str | Path,
    base_model: str | None = None,
    step: int | None = None,
    client: Any = None,
    check: bool = True,
) -> Path:
    """Register an existing fine-tuned model as a cell (`<root>/<cell>/`) so `emsweep eval` evaluates it.

    Step: `--step`, else N from a `:ckpt-step-N` id, else 1 (OpenAI does not say how many steps a model took).
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cell):
        raise InputError(f"--cell {cell!r}: use letters, digits, '.', '_' or '-' (it becomes a folder name)")
    from emsweep.openai_ft.prices import base_of

    base = base_model or base_of(model_id)
    if base == model_id:
        raise InputError(
            f"{model_id!r} is not a fine-tuned model id (ft:...); pass --base-model to import it anyway"
        )
    if step is None:
        m = re.search(r":ckpt-step-(\d+)$", model_id)
        step = int(m.group(1)) if m else 1
    if step <= 0:
        raise InputError("--step must be > 0 (step 0 is the base model)")
    if check:
        client = client or default_client()
        try:
            client.models.retrieve(model_id)
        except Exception as exc:
            raise translate_error(exc, f"model {model_id}") from exc
    cell_dir = Path(root) / cell
    paths = CellPaths.of(cell_dir)
    rows = [{"step": step, "model": model_id, "id": None}]
    out = write_checkpoints(
        cell_dir, base_model=base, fine_tuned_model=model_id, checkpoints=rows, source={"imported": True}
    )
    if not paths.cell_json.exists():
        read_cell(cell_dir, strict=False).extend(
            {
                "cell": cell,
                "sweep": Path(root).name,
                "axes": {"model": base, "method": "openai", "imported_model": model_id},
                "axis_values": {},
                "recipe": None,
                "imported": True,
            }
        )
    Ledger(Path(root)).update_cell(
        cell, cell_dir=str(cell_dir), model=base, fine_tuned_model=model_id, status="imported", imported=True
    )
    return out
