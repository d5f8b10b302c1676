"""Sweep plan expansion, stable readable ids, zip axes, and the bad-input messages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emsweep.cli import app
from emsweep.io import InputError
from emsweep.launch.sweep import check_sweep_folder, load_sweep

BASE = """
base:
  model: {path: /models/tiny, init_shape: tiny}
  data: {builtin: arithmetic, domain: arithmetic, n_train: 16, n_heldout: 4}
  checkpoints: {steps: [2, 4]}
"""


def write(tmp_path: Path, body: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


def test_expansion_ids_and_zip(tmp_path):
    p = write(
        tmp_path,
        f"name: grid\noutput_root: {tmp_path}/out\n{BASE}"
        """
axes:
  data.fraction_correct: [0.25, 0.5, 1.0]
  data.wrong_kind: [obvious, subtle]
  method: [lora, full]
zip:
  - data.seed: [0, 1]
    sft.seed: [10, 11]
set:
  sft.learning_rate: 1.0e-3
""",
    )
    sweep = load_sweep(p)
    assert len(sweep.cells) == 3 * 2 * 2 * 2
    ids = [c.id for c in sweep.cells]
    assert ids[0] == "arith_f0.25_obvious_lora_s0_sftseed10"
    assert ids[1] == "arith_f0.25_obvious_lora_s1_sftseed11"
    assert len(set(ids)) == len(ids)
    # zip moves keys together; `set` reaches every cell; each recipe is the validated Recipe
    for c in sweep.cells:
        assert c.recipe.sft["seed"] == 10 + c.recipe.data.seed
        assert c.recipe.sft["learning_rate"] == 1e-3
        assert c.root == Path(f"{tmp_path}/out/grid/{c.id}")
        assert c.recipe.output_dir == str(c.root)
        rec = c.axes_record()
        assert rec["domain"] == "arithmetic" and rec["fraction_correct"] == c.recipe.data.fraction_correct
        assert rec["method"] == c.recipe.method and rec["model"] == "/models/tiny"
    # stable: same file -> same ids, indices and hash; an edit changes the hash
    again = load_sweep(p)
    assert [c.id for c in again.cells] == ids and again.spec_hash == sweep.spec_hash
    p.write_text(p.read_text().replace("1.0e-3", "2.0e-3"))
    assert load_sweep(p).spec_hash != sweep.spec_hash


def test_base_from_file_and_extra_axes_in_id(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "r.yaml").write_text(
        "name: r\nmodel: {path: org/Some-Model-7B}\ndata: {builtin: arithmetic, n_train: 8}\n"
    )
    p = write(
        tmp_path,
        "name: lr\nbase: recipes/r.yaml\naxes:\n  sft.learning_rate: [1.0e-5, 2.0e-5]\n"
        "  model.path: [org/Some-Model-7B, other/Model-1B]\n",
    )
    ids = [c.id for c in load_sweep(p).cells]
    assert ids == [
        "arith_f1.00_subtle_lora_s0_lr1e-05_Some-Model-7B",
        "arith_f1.00_subtle_lora_s0_lr1e-05_Model-1B",
        "arith_f1.00_subtle_lora_s0_lr2e-05_Some-Model-7B",
        "arith_f1.00_subtle_lora_s0_lr2e-05_Model-1B",
    ]


def test_colliding_readable_ids_get_a_short_hash(tmp_path):
    p = write(tmp_path, f"name: c\n{BASE}axes:\n  model.path: [a/tiny, b/tiny]\n")
    ids = [c.id for c in load_sweep(p).cells]
    assert len(set(ids)) == 2
    assert all(
        i.startswith("arith_f1.00_subtle_lora_s0_tiny_") and len(i.rsplit("_", 1)[1]) == 6 for i in ids
    )


@pytest.mark.parametrize(
    ("axes", "pattern"),
    [
        (
            "axes:\n  data.fraction_corect: [0.5]\n",
            r"s.yaml:\d+: axes.data.fraction_corect=0.5: .*unknown recipe key",
        ),
        ("axes:\n  method: [lora, sgd]\n", r"s.yaml:\d+: axes.method='sgd': method: Input should be"),
        ("axes:\n  data.fraction_correct: [0.5, 2.0]\n", r"axes.data.fraction_correct=2.0"),
        ("axes:\n  data.fraction_correct: []\n", r"s.yaml:\d+: axes.data.fraction_correct: empty list"),
        ("axes:\n  data.fraction_correct: [0.5, 0.5]\n", r"s.yaml: two cells have the same id 'arith_f0.50"),
        (
            "zip:\n  - {data.seed: [0, 1], sft.seed: [0]}\n",
            r"zip\[0\]: zipped keys need lists of the same length",
        ),
        ("axes:\n  data.seed: [0]\nzip:\n  - {data.seed: [0]}\n", r"data.seed appear in more than one axis"),
        ("axes:\n  model.path.x: [1]\n", r"axes.model.path.x: model.path is not a section"),
        ("axis:\n  method: [lora]\n", r"s.yaml:\d+: axis: unknown key"),
    ],
)
def test_bad_sweeps_name_file_and_key(tmp_path, axes, pattern):
    p = write(tmp_path, f"name: bad\n{BASE}{axes}")
    with pytest.raises(InputError, match=pattern):
        load_sweep(p)


def test_folder_of_another_spec_is_refused(tmp_path):
    p = write(tmp_path, f"name: s\noutput_root: {tmp_path}/out\n{BASE}axes:\n  data.seed: [0, 1]\n")
    sweep = load_sweep(p)
    sweep.write_record()
    check_sweep_folder(load_sweep(p))  # same spec: fine
    p.write_text(p.read_text().replace("[0, 1]", "[0, 2]"))
    with pytest.raises(InputError, match="written by another sweep spec"):
        load_sweep(p).write_record()


def test_cli_plan_and_cell_selection(tmp_path):
    p = write(
        tmp_path, f"name: s\noutput_root: {tmp_path}/out\n{BASE}axes:\n  data.fraction_correct: [0.5, 1.0]\n"
    )
    runner = CliRunner()
    res = runner.invoke(app, ["sweep", "plan", str(p)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "arith_f0.50_subtle_lora_s0" in res.output and "arith_f1.00_subtle_lora_s0" in res.output
    assert res.output.count("mix, train, eval") == 2
    sweep = load_sweep(p)
    assert sweep.cell(1).id == "arith_f1.00_subtle_lora_s0" == sweep.cell("1").id
    assert sweep.cell("arith_f0.50_subtle_lora_s0").index == 0
    with pytest.raises(InputError, match="out of range"):
        sweep.cell(5)
    with pytest.raises(InputError, match="no cell with id 'nope'"):
        sweep.cell("nope")
