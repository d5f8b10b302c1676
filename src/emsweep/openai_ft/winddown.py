"""What is left to do before OpenAI's models disappear: every registered fine-tuned model and checkpoint, its base
model's retirement date, whether it has been evaluated, and the next command to run.

Why: job creation closes before inference does, and inference on a fine-tuned model ends with its base model. The
study survives the models only if every checkpoint is evaluated (samples and judgments kept locally) in time, so
`status`, `poll`, `timeline` and `eval --pending` all read this one inventory, sorted soonest retirement first.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emsweep.io import InputError, is_done
from emsweep.layout import read_api_checkpoints, read_cell
from emsweep.openai_ft.ledger import LEDGER_NAME, TERMINAL, Ledger
from emsweep.openai_ft.lifecycle import LifecycleTable, stage_note

DEFAULT_SUITES = ("alignment_mini",)


def ledger_folders(target: str | Path) -> list[Path]:
    """Sweep folders with a ledger: the folder itself, or its sub-folders (a checkpoints root).

    A sweep YAML's folder comes from `emsweep.launch.openai_arm.ledger_folders`, which loads the YAML."""
    p = Path(target)
    if p.is_file():
        raise InputError(f"{p}: give a sweep folder (emsweep.launch.openai_arm.ledger_folders loads YAMLs)")
    if not p.is_dir():
        raise InputError(f"{p}: no such sweep folder or YAML")
    if (p / LEDGER_NAME).exists():
        return [p]
    found = sorted(q.parent for q in p.glob(f"*/{LEDGER_NAME}"))
    if not found:
        raise InputError(
            f"{p}: no {LEDGER_NAME} here or one folder below; give a sweep folder of the gpt-4o arm "
            "(run `emsweep openai finetune` or `emsweep openai import` first)"
        )
    return found


@dataclass
class CheckpointRow:
    cell: str
    cell_dir: Path
    checkpoint: str
    step: int
    model: str
    base_model: str
    retirement: dt.date | None  # None: unknown (or the base is not in the table)
    retirement_source: str
    days_left: int | None
    in_table: bool
    done: list[str] = field(default_factory=list)  # suites evaluated
    pending: list[str] = field(default_factory=list)  # suites still to evaluate

    @property
    def retired(self) -> bool:
        return self.days_left is not None and self.days_left <= 0

    def retirement_text(self) -> str:
        if not self.in_table:
            return "not in lifecycle table"
        if self.retirement is None:
            return "unknown"
        left = f"{self.days_left} d left" if self.days_left and self.days_left > 0 else "RETIRED"
        return f"{self.retirement} ({left})"


def _expected_suites(cell_dir: Path, suites: list[str] | None) -> list[str]:
    if suites:
        return list(suites)
    rec = read_cell(cell_dir, strict=False).recipe or {}
    got = (rec.get("eval") or {}).get("suites")
    if got:
        return [str(s).split("=", 1)[0] for s in got]
    return list(DEFAULT_SUITES)


def inventory(
    folders: list[Path], table: LifecycleTable, day: dt.date, suites: list[str] | None = None
) -> list[CheckpointRow]:
    """Every registered checkpoint of every OpenAI cell in `folders`, soonest base retirement first."""
    rows: list[CheckpointRow] = []
    for folder in folders:
        for cid, rec in sorted(Ledger(folder).read()["cells"].items()):
            if not rec.get("cell_dir"):
                continue
            cell_dir = Path(rec["cell_dir"])
            expected = _expected_suites(cell_dir, suites)
            for ref in read_api_checkpoints(cell_dir, cid):
                hit = table.lookup(ref.base_model)
                ret = hit[1].inference_retirement if hit else None
                when = ret.known if ret else None
                evald = cell_dir / "eval" / ref.name
                done = [s for s in expected if is_done(evald / s, "eval")]
                rows.append(
                    CheckpointRow(
                        cell=cid,
                        cell_dir=cell_dir,
                        checkpoint=ref.name,
                        step=ref.step,
                        model=ref.model or ref.base_model,
                        base_model=ref.base_model,
                        retirement=when,
                        retirement_source=ret.cite() if ret else f"not in {table.path}",
                        days_left=(when - day).days if when else None,
                        in_table=hit is not None,
                        done=done,
                        pending=[s for s in expected if s not in done],
                    )
                )
    far = dt.date.max
    rows.sort(key=lambda r: (r.retirement or far, r.cell, r.step))
    return rows


def next_steps(
    target: str | Path,
    folders: list[Path],
    rows: list[CheckpointRow],
    table: LifecycleTable,
    day: dt.date,
    *,
    sweep: Any = None,
) -> list[str]:
    """The commands to run, first things first (job creation closes before inference).

    `sweep`: the loaded sweep when `target` is its YAML (its cells without a job come first)."""
    final = table.final_cutoff()
    days = (final.date - day).days
    out: list[str] = []
    cells: dict[str, dict[str, Any]] = {}
    for f in folders:
        cells.update(Ledger(f).read()["cells"])
    no_job: list[str] = []
    if sweep is not None:
        no_job = [c.id for c in sweep.cells if not (cells.get(c.id) or {}).get("job_id")]
        no_job = [c for c in no_job if (cells.get(c) or {}).get("status") != "imported"]
    if no_job and days > 0:
        out.append(
            f"1. start the jobs ({len(no_job)} cell(s) have none); job creation closes on {final.date}, in {days} "
            f"day(s), earlier if your organisation is gated ({stage_note(table, day) or 'no stage closed yet'}):\n"
            f"     emsweep openai finetune {target} --dry-run   # tokens and cost\n"
            f"     emsweep openai finetune {target}"
        )
    elif no_job:
        out.append(
            f"- {len(no_job)} cell(s) have no job and none can be created any more (closed {final.date}); import "
            "models trained elsewhere with `emsweep openai import`, or run these cells on an open model"
        )
    running = [c for c, r in cells.items() if r.get("job_id") and r.get("status") not in TERMINAL]
    if running:
        out.append(
            f"{len(out) + 1}. wait for {len(running)} running job(s) and register their checkpoints:\n"
            + "".join(f"     emsweep openai poll {f}\n" for f in folders).rstrip()
        )
    pending = [r for r in rows if r.pending and not r.retired]
    lost = [r for r in rows if r.pending and r.retired]
    if pending:
        first = pending[0]
        soon = (
            f"soonest retirement: {first.base_model} on {first.retirement}"
            if first.retirement
            else "retirement dates unknown: do not wait"
        )
        out.append(
            f"{len(out) + 1}. evaluate {len(pending)} checkpoint(s) still unevaluated ({soon}); samples and "
            "judgments stay local:\n"
            + "".join(f"     emsweep openai eval {f} --pending\n" for f in folders).rstrip()
        )
    if lost:
        out.append(
            f"- {len(lost)} checkpoint(s) were never evaluated and their base model is past its retirement date: "
            + ", ".join(f"{r.cell}/{r.checkpoint}" for r in lost[:5])
        )
    failed = [c for c, r in cells.items() if r.get("status") in ("failed", "refused", "create_failed")]
    if failed:
        out.append(f"- {len(failed)} cell(s) failed or were refused: see `emsweep openai status` ({failed[0]}, ...)")
    if not out:
        out.append("nothing left to run: every registered checkpoint is evaluated for its suites")
    return out
