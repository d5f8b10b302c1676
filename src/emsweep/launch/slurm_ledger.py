"""The submissions ledger (`<sweep>/slurm/submissions.json`) and the sweep snapshot the jobs run.

Both SLURM launchers (sbatch in `slurm_submit`, submitit in `submitit_launcher`) record every submission here
through `Ledger`: its scripts or folder, sbatch command lines, job ids, status and errors, written atomically after
each step, so a submission cut off half-way still says which jobs exist. `emsweep sweep status` and a
resubmission read it to find each cell's jobs (a cell with a queued or running job is not submitted again).
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from emsweep.io import InputError, atomic_write_json, atomic_write_text
from emsweep.launch.slurm_queue import TaskState
from emsweep.launch.sweep import Sweep, check_spec_hash, load_sweep

LEDGER = "submissions.json"
SNAPSHOT = "sweep.yaml"


def slurm_root(sweep: Sweep) -> Path:
    """`<sweep>/slurm/`: scripts, logs, ledger and snapshot of the SLURM launchers."""
    return sweep.root.resolve() / "slurm"


@dataclass
class Ledger:
    """The sweep's submissions ledger: `data` is the JSON document; every change is saved at once."""

    sweep: Sweep
    data: dict[str, Any]

    @property
    def path(self) -> Path:
        return slurm_root(self.sweep) / LEDGER

    @classmethod
    def read(cls, sweep: Sweep) -> Ledger:
        """The ledger (empty if none yet); one written for another sweep spec is refused."""
        p = slurm_root(sweep) / LEDGER
        if not p.exists():
            return cls(sweep, {"sweep": sweep.name, "spec_hash": sweep.spec_hash, "submissions": []})
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}: unreadable submissions ledger ({exc.msg}); move it aside") from exc
        check_spec_hash(sweep, data.get("spec_hash"), p, "these jobs were submitted for")
        return cls(sweep, data)

    @property
    def submissions(self) -> list[dict[str, Any]]:
        return self.data["submissions"]

    @property
    def next_number(self) -> int:
        return len(self.submissions) + 1

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def start(self, *, dir: Path, sweep_file: Path | str, **fields: Any) -> dict[str, Any]:
        """Append a new submission (status "submitting", no jobs yet), save, and return its entry."""
        entry: dict[str, Any] = {
            "number": self.next_number,
            **({"launcher": fields.pop("launcher")} if "launcher" in fields else {}),
            "dir": str(dir),
            "submitted_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "status": "submitting",
            "spec_hash": self.sweep.spec_hash,
            "sweep_file": str(sweep_file),
            **fields,
            "jobs": [],
        }
        self.submissions.append(entry)
        self.save()
        return entry

    def add_job(self, entry: dict[str, Any], job: dict[str, Any]) -> None:
        """Record one job of `entry` (`key`, `kind`, `cells`, `job_id` (None if sbatch refused it), ...)."""
        entry["jobs"].append(job)
        self.save()

    def finish(self, entry: dict[str, Any], status: str, **fields: Any) -> None:
        """Close `entry` as "submitted" or "failed" (with `error`, `cancelled`)."""
        entry["status"] = status
        entry.update(fields)
        self.save()

    def job_ids(self) -> list[str]:
        return [j["job_id"] for s in self.submissions for j in s.get("jobs", []) if j.get("job_id")]

    def job_kind(self, job_id: str) -> str:
        for sub in self.submissions:
            for job in sub.get("jobs", []):
                if job.get("job_id") == job_id:
                    return job["kind"]
        return "?"

    def active_cells(self, tasks: list[TaskState]) -> dict[str, TaskState]:
        """cell id -> its queued/running task, for jobs this sweep submitted."""
        by_job: dict[str, list[TaskState]] = {}
        for t in tasks:
            by_job.setdefault(t.job_id, []).append(t)
        out: dict[str, TaskState] = {}
        for sub in self.submissions:
            for job in sub.get("jobs", []):
                jid = job.get("job_id")
                if not jid or jid not in by_job:
                    continue
                for t in by_job[jid]:
                    cells = job.get("cells", [])
                    if t.task is not None and t.task < len(cells):
                        out.setdefault(cells[t.task], t)
        return out


def read_ledger(sweep: Sweep) -> dict[str, Any]:
    """The ledger's JSON document (see `Ledger.read`)."""
    return Ledger.read(sweep).data


def write_snapshot(sweep: Sweep) -> Path:
    """The sweep spec the jobs run, with the base recipe inlined, in the sweep folder: editing the original YAML
    after submitting cannot change what queued jobs do. Falls back to the original file if the round trip
    does not reproduce the spec hash."""
    p = slurm_root(sweep) / SNAPSHOT
    head = (
        f"# The sweep spec these SLURM jobs run (from {sweep.source}, spec hash {sweep.spec_hash[:12]}).\n"
        "# Written by emsweep; edit the original, not this copy.\n"
    )
    text = head + yaml.safe_dump(sweep.resolved_spec(), sort_keys=False, allow_unicode=True)
    if p.exists() and p.read_text(encoding="utf-8") == text:
        return p
    atomic_write_text(p, text)
    try:
        same = load_sweep(p).spec_hash == sweep.spec_hash
    except InputError:
        same = False
    if not same:
        p.unlink()
        if sweep.path is None:
            raise InputError(f"{sweep.source}: cannot write a sweep file the jobs can load")
        return sweep.path.resolve()
    return p
