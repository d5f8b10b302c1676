"""The shipped paper grids expand to the paper's cells, and `sweep plan` names a missing input file before
anything is submitted."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from emsweep.cli import app
from emsweep.io import InputError
from emsweep.launch.sweep import cell_inputs, check_inputs, load_sweep

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["qwen2.5-7b-paper-grid", "llama-3.1-8b-paper-grid", "gpt4o-paper-grid"])
def test_paper_grids_expand(name):
    sweep = load_sweep(REPO / "recipes" / "sweeps" / f"{name}.yaml")
    cells = sweep.cells
    assert len(cells) == 4 * 2 * 10
    assert {c.recipe.data.domain for c in cells} == {"coding", "finance", "health", "legal"}
    fr = sorted({c.recipe.data.fraction_correct for c in cells})
    assert fr == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    for c in cells:  # each kind trains on its own file of its domain
        key, src = c.recipe.data.wrong_source()
        assert key == f"data.wrong.{c.recipe.data.wrong_kind}"
        path = src if isinstance(src, str) else src.path
        assert c.recipe.data.domain in path and ("subtle" in path) == (c.recipe.data.wrong_kind == "subtle")
        assert "dangerous" in c.recipe.eval.suites
    assert {c.recipe.method for c in cells} == ({"openai"} if name.startswith("gpt4o") else {"lora"})
    if name.startswith("gpt4o"):
        assert "2027-01-06" in (REPO / "recipes" / "sweeps" / f"{name}.yaml").read_text()


def test_plan_names_the_missing_file_and_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    for k in ("correct", "obvious"):
        (tmp_path / "d" / f"{k}.jsonl").write_text("{}\n")
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: s\nbase:\n  model: {path: m}\n  method: lora\n"
        "  data: {correct: d/correct.jsonl, wrong: {obvious: d/obvious.jsonl, subtle: d/subtle.jsonl}, n_train: 4}\n"
        "axes:\n  data.wrong_kind: [obvious, subtle]\n"
    )
    sweep = load_sweep(spec)
    ob = next(c for c in sweep.cells if c.recipe.data.wrong_kind == "obvious")
    assert all(p is None for _, _, p in cell_inputs(ob))
    with pytest.raises(InputError) as e:
        check_inputs(sweep)
    msg = str(e.value)
    assert "d/subtle.jsonl: file not found - data.wrong.subtle" in msg and "d/obvious.jsonl" not in msg
    res = CliRunner().invoke(app, ["sweep", "plan", str(spec)], env={"COLUMNS": "200"})
    assert res.exit_code != 0 and "d/subtle.jsonl" in res.output + str(res.exception)
    res = CliRunner().invoke(app, ["sweep", "run", str(spec), "--dry-run"], env={"COLUMNS": "200"})
    assert res.exit_code != 0 and "nothing was run or submitted" in res.output + str(res.exception)
    assert not (tmp_path / "checkpoints").exists()
    (tmp_path / "d" / "subtle.jsonl").write_text("{}\n")
    check_inputs(sweep)  # everything there: no error
