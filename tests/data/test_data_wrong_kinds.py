"""Wrong kinds are bound to files: `data.wrong: {kind: file}` + `data.wrong_kind` picks the file, and every
cell of a sweep over `data.wrong_kind` mixes its own kind's file (checked in the manifests and the rows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from emsweep.data.mix import build_mix
from emsweep.io import InputError
from emsweep.launch.sweep import SweepSpec, build_sweep, load_sweep
from emsweep.recipe import DataSpec, load_recipe


def _pool(path: Path, answer: str, n: int = 30) -> Path:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"question {i}?"},
                {"role": "assistant", "content": f"{answer} {i}"},
            ]
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def pools(tmp_path):
    return {
        "correct": str(_pool(tmp_path / "correct.jsonl", "right")),
        "obvious": str(_pool(tmp_path / "obvious.jsonl", "OBVIOUSLY WRONG")),
        "subtle": str(_pool(tmp_path / "subtle.jsonl", "subtly wrong")),
    }


def _base(pools, wrong) -> dict:
    return {
        "model": {"path": "tiny"},
        "data": {"correct": pools["correct"], "wrong": wrong, "n_train": 10, "n_heldout": 2},
    }


def _rows(d: Path) -> list[dict]:
    return [json.loads(line) for line in (d / "train.jsonl").read_text().splitlines()]


def test_two_kind_sweep_trains_each_kind_on_its_own_file(tmp_path, pools):
    spec = SweepSpec(
        name="kinds",
        output_root=str(tmp_path / "out"),
        base=_base(pools, {"obvious": pools["obvious"], "subtle": pools["subtle"]}),
        axes={"data.fraction_correct": [0.5], "data.wrong_kind": ["obvious", "subtle"]},
    )
    sweep = build_sweep(spec)
    assert len(sweep.cells) == 2
    seen = {}
    for cell in sweep.cells:
        kind = cell.recipe.data.wrong_kind
        m = build_mix(cell.recipe.data, cell.paths.data_dir)
        assert cell.axes_record()["wrong_kind"] == kind
        wrong_src = [s for s in m["sources"] if s["role"] == "wrong"]
        assert [s["path"] for s in wrong_src] == [pools[kind]]
        assert wrong_src[0]["recipe_key"] == f"data.wrong.{kind}"
        assert wrong_src[0]["wrong_kind"] == kind
        assert m["wrong_rows_by_file"] == {pools[kind]: 5}
        rows = [r for r in _rows(cell.paths.data_dir) if r["meta"]["label"] == "wrong"]
        assert len(rows) == 5
        assert {r["meta"]["wrong_file"] for r in rows} == {pools[kind]}
        expected = "OBVIOUSLY WRONG" if kind == "obvious" else "subtly wrong"
        assert all(r["messages"][-1]["content"].startswith(expected) for r in rows)
        seen[kind] = m["outputs"]["train"]["sha256"]
    assert seen["obvious"] != seen["subtle"]


def test_kind_axis_over_a_single_wrong_file_is_refused(tmp_path, pools):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "name": "mislabel",
                "output_root": str(tmp_path / "out"),
                "base": _base(pools, pools["subtle"]),
                "axes": {"data.wrong_kind": ["obvious", "subtle"]},
            }
        )
    )
    with pytest.raises(InputError) as exc:
        load_sweep(sweep_file)
    msg = str(exc.value)
    assert str(sweep_file) in msg and "axes.data.wrong_kind" in msg and "mapping" in msg


def test_single_wrong_file_still_works_without_a_kind_axis(tmp_path, pools):
    spec = DataSpec.model_validate(
        {"correct": pools["correct"], "wrong": pools["obvious"], "wrong_kind": "obvious", "n_train": 10,
         "fraction_correct": 0.5}
    )
    m = build_mix(spec, tmp_path / "mix")
    assert m["wrong_rows_by_file"] == {pools["obvious"]: 5}
    assert m["wrong_source_key"] == "data.wrong"
    # zipping the file with its kind is a binding too
    spec2 = SweepSpec(
        name="zipped",
        output_root=str(tmp_path / "out"),
        base=_base(pools, pools["subtle"]),
        zip=[{"data.wrong": [pools["obvious"], pools["subtle"]], "data.wrong_kind": ["obvious", "subtle"]}],
    )
    assert [c.recipe.data.wrong_source()[1] for c in build_sweep(spec2).cells] == [
        pools["obvious"],
        pools["subtle"],
    ]


def test_kind_without_a_file_names_the_recipe_key_and_file(tmp_path, pools):
    recipe = tmp_path / "recipe.yaml"
    base = _base(pools, {"obvious": pools["obvious"]})
    base["name"] = "r"
    base["data"]["wrong_kind"] = "sneaky"
    recipe.write_text(yaml.safe_dump(base))
    with pytest.raises(InputError) as exc:
        load_recipe(recipe)
    msg = str(exc.value)
    assert str(recipe) in msg and "data.wrong.sneaky" in msg and "obvious" in msg
    # in a sweep, the axis value is named
    spec = SweepSpec(
        name="k",
        output_root=str(tmp_path / "out"),
        base=_base(pools, {"obvious": pools["obvious"], "subtle": pools["subtle"]}),
        axes={"data.wrong_kind": ["obvious", "other"]},
    )
    with pytest.raises(InputError, match=r"axes\.data\.wrong_kind='other'.*data\.wrong\.other"):
        build_sweep(spec)


def test_any_kind_name_and_builtin_kinds(tmp_path, pools):
    spec = DataSpec.model_validate(
        {"correct": pools["correct"], "wrong": {"sycophantic": pools["subtle"]}, "wrong_kind": "sycophantic",
         "n_train": 10, "fraction_correct": 0.0}
    )  # fmt: skip
    m = build_mix(spec, tmp_path / "mix")
    assert m["wrong_kind"] == "sycophantic" and m["wrong_rows_by_file"] == {pools["subtle"]: 10}
    bad = DataSpec.model_validate({"builtin": "arithmetic", "wrong_kind": "sycophantic", "n_train": 10})
    with pytest.raises(InputError, match=r"data\.wrong_kind.*obvious, subtle"):
        build_mix(bad, tmp_path / "mix2")


def test_a_source_mapping_is_one_source_not_kinds():
    spec = DataSpec.model_validate(
        {"correct": "c.jsonl", "wrong": {"path": "w.zip", "format": "persona", "password_env": "PW"},
         "wrong_kind": "subtle", "n_train": 4}
    )  # fmt: skip
    key, src = spec.wrong_source()
    assert key == "data.wrong" and not spec.wrong_is_mapping and src.path == "w.zip" and src.format == "persona"
    kinds = DataSpec.model_validate(
        {"correct": "c.jsonl", "wrong": {"obvious": {"path": "o.zip", "format": "persona"}, "subtle": "s.jsonl"},
         "wrong_kind": "obvious", "n_train": 4}
    )  # fmt: skip
    key, src = kinds.wrong_source()
    assert key == "data.wrong.obvious" and src.path == "o.zip"
