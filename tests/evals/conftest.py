"""Make tests/evals/fakes.py importable as `fakes` (pytest runs with --import-mode=importlib, which adds no
test folder to sys.path); rule-judge suites in these tests name `fakes:length_score` as their callable."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
