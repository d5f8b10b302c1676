"""Sweeps that name a recipe file as their base and change only what differs (`overrides:`), instead of carrying
a copy of the recipe that drifts from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emsweep.io import InputError
from emsweep.launch.sweep import load_sweep
from emsweep.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPE = (
    "name: r\nmodel: {path: org/M-7B}\ndata: {builtin: arithmetic, n_train: 8}\n"
    "sft: {learning_rate: 0.001, max_steps: 5, optim: adamw_torch}\n"
    "eval: {suites: [a.yaml, domain], samples_per_paraphrase: 2}\n"
)


def _files(tmp_path: Path, sweep: str) -> Path:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "r.yaml").write_text(RECIPE)
    (tmp_path / "sweeps").mkdir()
    p = tmp_path / "sweeps" / "s.yaml"
    p.write_text(sweep)
    return p


def test_the_qwen_health_sweep_is_the_model_recipe_plus_its_overrides():
    sweep_path = REPO / "recipes" / "sweeps" / "qwen2.5-7b-health.yaml"
    spec = yaml.safe_load(sweep_path.read_text())
    assert spec["base"] == "../models/qwen2.5-7b-instruct-lora.yaml"
    model = load_recipe(REPO / "recipes" / "models" / "qwen2.5-7b-instruct-lora.yaml")
    sweep = load_sweep(sweep_path)
    assert len(sweep.cells) == 18
    for cell in sweep.cells:
        r = cell.recipe
        # what the sweep does not override is the model recipe's, the settings the old copy had lost included
        assert r.sft["optim"] == "adamw_8bit" and r.sft["activation_checkpointing"] is True
        assert r.checkpoints == model.checkpoints and r.lora == model.lora and r.model == model.model
        fixed = {"fraction_correct", "seed"}
        assert r.data.model_dump(exclude=fixed) == model.data.model_dump(exclude=fixed)
        assert {k: v for k, v in r.sft.items() if k != "seed"} == {
            k: v for k, v in model.sft.items() if k != "seed"
        }
        assert r.eval.suites == model.eval.suites and r.eval.sampling == model.eval.sampling
        # ... and what it overrides is the sweep's, merged key by key
        assert r.eval.samples_per_paraphrase == 50 and r.eval.judge.model == "gpt-4o-2024-08-06"
        assert r.slurm.mem == "96G" and r.slurm.partition == "gpu" and r.slurm.gpus_per_node == 1
        assert (r.data.fraction_correct, r.data.seed, r.sft["seed"]) == (
            cell.values["data.fraction_correct"],
            cell.values["data.seed"],
            cell.values["sft.seed"],
        )


def test_overrides_merge_into_the_base_file_relative_to_the_sweep(tmp_path, monkeypatch):
    p = _files(
        tmp_path,
        "name: s\noutput_root: ck\nbase: ../models/r.yaml\n"
        "overrides:\n  sft: {learning_rate: 0.002}\n  eval: {suites: [domain]}\n"
        "axes:\n  data.fraction_correct: [0.5, 1.0]\n",
    )
    # a different r.yaml in the working directory must not be picked up
    (tmp_path / "cwd" / "models").mkdir(parents=True)
    (tmp_path / "cwd" / "models" / "r.yaml").write_text("name: wrong\nmodel: {path: other/Model}\n")
    monkeypatch.chdir(tmp_path / "cwd")
    sweep = load_sweep(p)
    r = sweep.cells[0].recipe
    assert r.model.path == "org/M-7B"
    assert r.sft == {"learning_rate": 0.002, "max_steps": 5, "optim": "adamw_torch"}  # merged, not replaced
    assert r.eval.suites == ["domain"] and r.eval.samples_per_paraphrase == 2  # a list replaces
    # the spec hash covers the merged recipe: the overrides are in `base`, not beside it
    resolved = sweep.resolved_spec()
    assert "overrides" not in resolved and resolved["base"]["sft"]["learning_rate"] == 0.002
    p.write_text(p.read_text().replace("0.002", "0.003"))
    assert load_sweep(p).spec_hash != sweep.spec_hash


def test_the_snapshot_of_a_sweep_with_overrides_loads_to_the_same_spec(tmp_path):
    from emsweep.launch.slurm_ledger import write_snapshot

    p = _files(
        tmp_path,
        f"name: s\noutput_root: {tmp_path / 'ck'}\nbase: ../models/r.yaml\noverrides:\n  sft: {{max_steps: 7}}\n",
    )
    sweep = load_sweep(p)
    snap = write_snapshot(sweep)
    assert snap.parent == sweep.root.resolve() / "slurm"  # not the fallback to the original file
    again = load_sweep(snap)
    assert again.spec_hash == sweep.spec_hash and again.cells[0].recipe == sweep.cells[0].recipe


def test_a_bad_override_and_a_missing_base_are_named(tmp_path):
    p = _files(tmp_path, "name: s\nbase: ../models/r.yaml\noverrides:\n  data:\n    fraction_correct: 7\n")
    with pytest.raises(InputError, match=rf"{p}:5: overrides\.data\.fraction_correct: data\.fraction_correct"):
        load_sweep(p)
    p.write_text("name: s\nbase: ../models/nope.yaml\n")
    with pytest.raises(InputError, match=rf"{p}:2: base recipe \.\./models/nope\.yaml not found"):
        load_sweep(p)
    p.write_text("name: s\nbase: ../models/r.yaml\nunknown_key: 1\n")
    with pytest.raises(InputError, match=rf"{p}:3.*unknown_key"):
        load_sweep(p)
