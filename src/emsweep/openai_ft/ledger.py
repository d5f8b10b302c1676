"""The ledger: what was paid for on the OpenAI side, per sweep folder (`<sweep>/openai_ledger.json`).

Why a JSON file and not the server: the server is the truth about a job, but only the ledger knows which cell a
file or job belongs to, which content hash was uploaded, and what was estimated. Every change is a read-modify-write
under an exclusive `flock` and an atomic rename, so two `emsweep openai` processes on the same sweep (a `poll` and a
`finetune`) never lose each other's updates, and a crash leaves either the old or the new ledger, never half.

It never holds the API key: records are built from ids, hashes, counts and redacted messages only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from emsweep.io import InputError, atomic_write_json

LEDGER_NAME = "openai_ledger.json"
LEDGER_VERSION = 1
TERMINAL = ("succeeded", "failed", "cancelled")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Ledger:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LEDGER_NAME
        self.lock_path = self.folder / f".{LEDGER_NAME}.lock"

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"version": LEDGER_VERSION, "files": {}, "cells": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{self.path}: unreadable ledger ({exc.msg}); restore it from a backup"
            ) from None
        data.setdefault("files", {})
        data.setdefault("cells", {})
        return data

    def read(self) -> dict[str, Any]:
        with self._locked():
            return self._read()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write under the lock; written only if the block finishes."""
        with self._locked():
            data = self._read()
            yield data
            atomic_write_json(self.path, data)

    # --- convenience ------------------------------------------------------------------------------------------
    def cell(self, cell: str) -> dict[str, Any]:
        return dict(self.read()["cells"].get(cell, {}))

    def update_cell(self, cell: str, **fields: Any) -> dict[str, Any]:
        with self.edit() as data:
            rec = data["cells"].setdefault(cell, {"cell": cell, "created_at": _now(), "history": []})
            old_status = rec.get("status")
            rec.update(fields)
            rec["updated_at"] = _now()
            if "status" in fields and fields["status"] != old_status:
                rec.setdefault("history", []).append({"at": rec["updated_at"], "status": fields["status"]})
            return dict(rec)

    def file_by_hash(self, sha256: str, purpose: str = "fine-tune") -> dict[str, Any] | None:
        rec = self.read()["files"].get(f"{purpose}:{sha256}")
        return dict(rec) if rec else None

    def record_file(self, sha256: str, purpose: str, **fields: Any) -> None:
        with self.edit() as data:
            rec = data["files"].setdefault(f"{purpose}:{sha256}", {"sha256": sha256, "purpose": purpose})
            cells = set(rec.get("cells", [])) | set(fields.pop("cells", []))
            rec.update(fields)
            rec["cells"] = sorted(cells)
