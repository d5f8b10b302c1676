"""Shared test fixtures. Tests build tiny models offline and read data the repository carries in tests/fixtures/.

Real upstream slices are used in addition, never instead: when `EMSWEEP_UPSTREAM` names a folder of them (CI sets it
in .ci/run), `medical` is parametrised so each test runs on the project's files and on the real ones.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))  # `emsweep_fixtures`, `model_organisms_like`

from emsweep_fixtures import DATA_ORIGINS, EM_FIXTURES, UPSTREAM_MEDICAL, upstream_file
from model_organisms_like import write_medical_pair

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


@pytest.fixture(scope="session")
def em_fixtures() -> Path:
    """Betley et al.'s emergent-misalignment files (MIT) the repository carries; see PROVENANCE.md there."""
    return EM_FIXTURES


@pytest.fixture(scope="session")
def medical_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The project-made (good, bad) medical pair only: for tests where the data is incidental (the pair stands in
    for any paired domain), so they do not run twice."""
    return write_medical_pair(tmp_path_factory.mktemp("model-organisms-like"))


@pytest.fixture(scope="session", params=DATA_ORIGINS)
def medical(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(good, bad) gzip JSONL medical advice: 400 rows each, same prompts in the same order, answers differ.

    `project`: written by tests/fixtures/model_organisms_like.py; `upstream`: the real model-organisms slices.
    """
    if request.param == "upstream":
        return upstream_file(UPSTREAM_MEDICAL[0]), upstream_file(UPSTREAM_MEDICAL[1])
    return write_medical_pair(tmp_path_factory.mktemp("model-organisms-like"))
