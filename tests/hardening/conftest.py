"""Fixtures of the hardening catalogue: a base recipe file, a snapshot of a folder to prove nothing changed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `hardening_kit` (a unique module name)

BASE_RECIPE = """\
name: hard
model: {path: MODEL}
data: {builtin: arithmetic, n_train: 8, n_heldout: 2}
method: lora
sft:
  max_steps: 2
  learning_rate: 1.0e-4
  per_device_train_batch_size: 4
lora:
  r: 8
checkpoints: {steps: [1, 2]}
"""


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(BASE_RECIPE.replace("MODEL", str(tmp_path / "model")))
    return p
