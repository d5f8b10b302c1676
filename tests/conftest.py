"""Shared test fixtures. Tests build tiny models offline and read the real upstream slices from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = Path(os.environ.get("EMSWEEP_UPSTREAM", REPO.parent / "shared" / "fixtures" / "upstream"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


@pytest.fixture(scope="session")
def upstream() -> Path:
    """The real upstream slices (../shared/fixtures/upstream). CI always has them beside the clone."""
    assert UPSTREAM.is_dir(), f"missing {UPSTREAM}: clone the repo next to shared/ (see README)"
    return UPSTREAM
