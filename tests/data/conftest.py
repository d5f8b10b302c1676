"""Fixtures for the data tests (helpers in emsweep_data_testkit.py, importable from the tests in this folder)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from emsweep_data_testkit import PASSWORD, jsonl_bytes, persona_rows, write_zipcrypto


@pytest.fixture()
def persona_zips(tmp_path: Path) -> dict[str, Path]:
    """`health_correct.zip` and `health_incorrect_subtle.zip`, 60 paired rows each, locked with PASSWORD."""
    out = {}
    for kind in ("correct", "incorrect_subtle"):
        name = f"health_{kind}"
        out[kind] = write_zipcrypto(
            tmp_path / f"{name}.zip", {f"{name}.jsonl": jsonl_bytes(persona_rows(60, kind))}, PASSWORD
        )
    return out


@pytest.fixture()
def persona_jsonl(tmp_path: Path) -> Path:
    p = tmp_path / "health_correct.jsonl"
    p.write_bytes(jsonl_bytes(persona_rows(12, "correct")))
    return p

# `medical` (the good/bad medical advice pair, project-made and, with EMSWEEP_UPSTREAM, the real slices) and
# `em_fixtures` live in tests/conftest.py.
