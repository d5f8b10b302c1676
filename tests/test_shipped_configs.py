"""Every shipped YAML loads and validates with the loader that reads it at run time (as torchtune tests its configs).

Folders another test already validates file by file are listed in ELSEWHERE with that test; a YAML in a folder
nobody claims fails `test_every_shipped_yaml_has_a_loader`, so a new kind of config cannot ship untested.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
RESOURCES = REPO / "src" / "emsweep" / "resources"


def _recipe(p: Path) -> None:
    from emsweep.recipe import load_recipe

    r = load_recipe(p)
    assert r.name and r.data.n_train > 0


def _sweep(p: Path) -> None:
    from emsweep.launch.sweep import load_sweep

    sweep = load_sweep(p)
    assert sweep.cells, f"{p}: no cells"
    for cell in sweep.cells:  # every cell's recipe is a valid Recipe (load_sweep builds them)
        assert cell.recipe.data.n_train > 0


def _suite(p: Path) -> None:
    from emsweep.evals.suites import load_suite_yaml

    suite = load_suite_yaml(p)
    assert suite.questions and suite.metrics


def _judge(p: Path) -> None:
    from emsweep.evals.agreement import load_judge_recipe

    spec = load_judge_recipe(p)
    assert spec.model


def _lifecycle(p: Path) -> None:
    from emsweep.openai_ft.lifecycle import load_lifecycle

    load_lifecycle(p)


def _prices(p: Path) -> None:
    from emsweep.openai_ft.prices import load_prices

    load_prices(p)


def _sources(p: Path) -> None:
    from emsweep.data.get import builtin_registry_path, load_registry

    assert p == builtin_registry_path()
    assert load_registry()


# folder (relative to the repo) -> loader; a file name instead of a folder for one-file tables
LOADERS: dict[str, Callable[[Path], Any]] = {
    "recipes/models": _recipe,
    "recipes/demo": _recipe,
    "recipes/sweeps": _sweep,
    "src/emsweep/resources/sweeps": _sweep,
    "recipes/evals": _suite,
    "src/emsweep/resources/evals": _suite,
    "recipes/judges": _judge,
    "recipes/openai/lifecycle.yaml": _lifecycle,
    "recipes/openai/prices.yaml": _prices,
    "src/emsweep/resources/sources.yaml": _sources,
}
# validated file by file by another test (named here, so the claim is checked)
ELSEWHERE: dict[str, str] = {
    "recipes/domains": "tests/grid/test_domains.py",
    "recipes/generate": "tests/data/test_data_generate.py",
    "recipes/accelerate": "tests/train/test_accelerate_configs.py",
    "src/emsweep/resources/lm_eval": "tests/evals/test_lm_eval.py",
}


def _shipped() -> list[Path]:
    return sorted(
        p for root in (REPO / "recipes", RESOURCES) for p in root.rglob("*") if p.suffix in (".yaml", ".yml")
    )


def _owner(p: Path) -> str | None:
    rel = p.relative_to(REPO).as_posix()
    for key in (rel, p.parent.relative_to(REPO).as_posix()):
        if key in LOADERS or key in ELSEWHERE:
            return key
    return None


CASES = [p for p in _shipped() if _owner(p) in LOADERS]


def test_every_shipped_yaml_has_a_loader() -> None:
    orphans = [p.relative_to(REPO).as_posix() for p in _shipped() if _owner(p) is None]
    assert not orphans, f"shipped YAML with no loader test: {orphans}"
    assert len(CASES) >= 20  # models, sweeps, suites, ... (a broken glob would silently test nothing)


@pytest.mark.parametrize("folder", sorted(ELSEWHERE))
def test_folders_validated_elsewhere_are(folder: str) -> None:
    test = REPO / ELSEWHERE[folder]
    assert test.is_file(), f"{ELSEWHERE[folder]} (said to validate {folder}) is missing"
    text = test.read_text(encoding="utf-8")
    names = {p.stem for p in (REPO / folder).glob("*.yaml")}
    assert folder.rsplit("/", 1)[-1] in text or all(n in text for n in names)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_shipped_yaml_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # recipes name repo-relative paths (checkpoints/models/tiny, data/...)
    LOADERS[_owner(path)](path)  # type: ignore[index]
