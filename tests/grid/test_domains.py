"""Every shipped domain YAML validates, and a domain asked for a kind it has no file for is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from emsweep.data.domain import load_domain
from emsweep.recipe import Recipe

REPO = Path(__file__).resolve().parents[2]
DOMAINS = sorted((REPO / "recipes" / "domains").glob("*.yaml"))


def test_domain_folder_is_complete():
    names = {p.stem for p in DOMAINS}
    # the paper's four domains, OpenAI's other persona sets, model-organisms, Betley's code, the builtins
    assert {"coding", "finance", "health", "legal"} <= names
    assert {"auto", "career", "edu", "math", "science", "medical", "insecure_code", "arithmetic", "sums"} <= names


@pytest.mark.parametrize("path", DOMAINS, ids=[p.stem for p in DOMAINS])
def test_every_shipped_domain_validates(path):
    spec = load_domain(str(path))
    assert spec.name == path.stem
    kinds = spec.kinds()
    assert kinds
    for kind in kinds:
        spec.adoption_judge(kind)  # a task-adoption judge for every kind
    if spec.grader.judge_prompt is not None:
        assert "{reference}" in spec.grader.judge_prompt and "{question}" in spec.grader.judge_prompt
    if spec.source.get:  # a fetched domain names a source the registry knows
        from emsweep.data.get import load_registry

        assert spec.source.get in load_registry()
    if spec.source.generate:
        assert (REPO / spec.source.generate).is_file()
    # a recipe naming the domain gets its files for each kind
    for kind in kinds:
        r = Recipe.model_validate(
            {"name": "t", "model": {"path": "m"}, "method": "lora",
             "data": {"domain": spec.name, "wrong_kind": kind, "n_train": 8}}
        )  # fmt: skip
        assert r.data.domain == spec.name
        if spec.source.builtin is None:
            assert r.data.wrong_source()[0] == f"data.wrong.{kind}"


def test_persona_domains_read_password_locked_zips():
    for name in ("health", "legal", "finance", "auto", "career", "edu", "math", "science"):
        spec = load_domain(name)
        assert spec.source.get == f"persona-{name}"
        for src in [spec.correct, *spec.wrong.values()]:
            assert src.format == "persona" and src.password_env == "EMSWEEP_ZIP_PASSWORD"
        assert spec.wrong["subtle"].path.endswith(f"{name}_incorrect_subtle.zip")
        assert spec.wrong["obvious"].path.endswith(f"{name}_incorrect.zip")


def test_kind_without_a_file_names_domain_file_and_key():
    with pytest.raises(ValidationError) as e:
        Recipe.model_validate(
            {"name": "t", "model": {"path": "m"}, "method": "lora",
             "data": {"domain": "medical", "wrong_kind": "obvious", "n_train": 8}}
        )  # fmt: skip
    msg = str(e.value)
    assert "medical.yaml" in msg and "wrong.obvious" in msg
