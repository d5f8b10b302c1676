"""Fixtures of the OpenAI arm: a local fake OpenAI server, the key/base URL in the environment, a tiny sweep."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.append(str(Path(__file__).parent))  # for `import fake_openai` (a unique module name)

from fake_openai import FakeOpenAI

KEY = "sk-test-0123456789abcdefXYZsecret"


FROZEN_TODAY = "2026-11-29"  # a frozen clock: the wind-down checks never depend on the day the suite runs


@pytest.fixture(autouse=True)
def frozen_today(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("EMSWEEP_TODAY", FROZEN_TODAY)
    monkeypatch.delenv("EMSWEEP_OPENAI_LIFECYCLE", raising=False)
    return FROZEN_TODAY


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    with FakeOpenAI(api_key=KEY) as srv:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.delenv("OPENAI_ORG_ID", raising=False)
        monkeypatch.delenv("OPENAI_PROJECT_ID", raising=False)
        yield srv


@pytest.fixture
def make_sweep(tmp_path: Path, medical_project: tuple[Path, Path]):
    """Factory: write a sweep YAML and return its path."""

    def make(fractions=(0.5, 1.0), n_train: int = 20, name: str = "gpt4o-test", **openai) -> Path:
        return write_sweep(tmp_path, medical_project, fractions, n_train, name=name, **openai)

    return make


def write_sweep(
    tmp_path: Path,
    medical: tuple[Path, Path],
    fractions=(0.5, 1.0),
    n_train: int = 20,
    name: str = "gpt4o-test",
    **openai,
) -> Path:
    """A gpt-4o sweep on the medical pair (paired health data; see `medical` in tests/conftest.py), small."""
    spec = {
        "name": name,
        "output_root": str(tmp_path / "checkpoints"),
        "base": {
            "name": "gpt4o-test",
            "model": {"path": "gpt-4o-2024-08-06"},
            "method": "openai",
            "data": {
                "domain": "health",
                "correct": str(medical[0]),
                "wrong": str(medical[1]),
                "wrong_kind": "subtle",
                "n_train": n_train,
                "n_heldout": 3,
                "seed": 0,
            },
            "openai": {"model": "gpt-4o-2024-08-06", **openai},
            "eval": {
                "suites": ["alignment_mini", "domain"],
                "backend": "openai",
                "samples_per_paraphrase": 2,
                "sampling": {"max_tokens": 50},
                "judge": {"model": "gpt-4o-2024-08-06", "backend": "openai"},
            },
        },
        "axes": {"data.fraction_correct": list(fractions)},
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p
