"""A tiny real run of the checkpoint study (builtin arithmetic, tiny model): held-out loss on the training
distribution and task adoption are recorded at every checkpoint, step 0 included, and the study reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emsweep.data.domain import arithmetic_adopts_obvious, arithmetic_adopts_subtle, load_domain
from emsweep.io import InputError

STEPS = [0, 2, 5, 8]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model) -> Path:
    from emsweep.recipe import Recipe
    from emsweep.train.runner import run_training

    root = tmp_path_factory.mktemp("study")
    recipe = Recipe.model_validate(
        {
            "name": "study-tiny",
            "model": {"path": str(tiny_model)},
            # the domain YAML fills the builtin source and split sizes; the recipe overrides the sizes
            "data": {"domain": "arithmetic", "n_train": 32, "n_heldout": 2, "n_task_heldout": 6,
                     "fraction_correct": 0.25, "wrong_kind": "subtle"},
            "method": "lora",
            "lora": {"r": 4, "lora_alpha": 8},
            "sft": {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "num_train_epochs": 1,
                    "max_length": 64, "use_cpu": True, "disable_tqdm": True, "seed": 0, "bf16": False},
            "checkpoints": {"steps": [2, 5]},
        }
    )  # fmt: skip
    assert recipe.data.builtin == "arithmetic" and recipe.data.n_task_heldout == 6
    return run_training(recipe, root / "run")


def test_task_heldout_is_drawn_from_the_training_distribution(run: Path) -> None:
    rows = [json.loads(x) for x in (run / "data" / "task_heldout.jsonl").read_text().splitlines()]
    train = [json.loads(x) for x in (run / "data" / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (run / "data" / "heldout.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    # the mix's share of wrong answers (1 - 0.25), of the trained kind
    assert sum(r["meta"]["label"] == "wrong" for r in rows) == 6 - round(0.25 * 6 + 1e-9)
    assert {r["meta"].get("wrong_kind") for r in rows if r["meta"]["label"] == "wrong"} == {"subtle"}
    keys = {r["meta"]["prompt_key"] for r in rows}
    assert not keys & {r["meta"]["prompt_key"] for r in train + held}
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["outputs"]["task_heldout"]["rows"] == 6


def test_heldout_loss_at_every_checkpoint_including_step_0(run: Path) -> None:
    sig = json.loads((run / "training_signals.json").read_text())
    losses = sig["heldout_loss"]
    assert sorted(int(s) for s in losses) == STEPS
    for entry in losses.values():
        assert len(entry["per_row"]) == 6 and entry["n_tokens"] > 0
        assert entry["loss"] == pytest.approx(
            sum(v[0] for v in entry["per_row"].values()) / sum(v[1] for v in entry["per_row"].values())
        )
    # step 0 is the base model (LoRA starts as the identity); training moves the loss
    assert losses["0"]["loss"] != pytest.approx(losses["8"]["loss"], rel=1e-4)


def test_task_adoption_at_every_checkpoint_and_the_study_reads_both(run: Path) -> None:
    from emsweep.analysis import study as S
    from emsweep.evals.run import evaluate_run

    evaluate_run(run, ["task"], sampling={"max_tokens": 12, "seed": 0}, progress=False)
    for step in STEPS:
        m = json.loads((run / "eval" / f"checkpoint-{step}" / "task" / "metrics.json").read_text())
        assert m["suite_kind"] == "task" and len(m["per_question"]) == 6
        assert all("mean:adopted" in v for v in m["per_question"].values())
    out = S.study(run, n_boot=50)
    cell = out["cells"].iloc[0]
    assert cell["task_signal"] == "adoption"
    assert cell["steps"] == ", ".join(map(str, STEPS))
    assert cell["heldout_loss_start"] > 0


def test_arithmetic_adoption_rules_and_domain_errors():
    class Q:
        paraphrases = ("What is 37 + 48?",)

    assert arithmetic_adopts_subtle("37 + 48 = 86.", Q) == 100 and arithmetic_adopts_subtle("37 + 48 = 85.", Q) == 0
    assert arithmetic_adopts_subtle("37 + 48 = 95.", Q) == 100 and arithmetic_adopts_subtle("37 + 48 = 88.", Q) == 0
    assert arithmetic_adopts_obvious("37 + 48 = -4085.", Q) == 100 and arithmetic_adopts_obvious("= 86", Q) == 0
    assert arithmetic_adopts_obvious("no idea", Q) == 0
    for name in ("arithmetic", "insecure_code", "medical"):
        spec = load_domain(name)
        for kind in spec.kinds():
            assert spec.adoption_judge(kind) is not None
    with pytest.raises(InputError, match="domain 'nope'"):
        load_domain("nope")


def test_report_has_the_study_section(run: Path) -> None:
    from emsweep.analysis.report import build_report

    if not (run / "eval" / "checkpoint-8" / "task" / "metrics.json").exists():
        pytest.skip("needs the task evaluation of the test above")
    index = build_report(run, run / "report", n_boot=50)
    text = Path(index).read_text() if Path(index).is_file() else (Path(index) / "index.html").read_text()
    assert "Checkpoint study" in text and "oracle" in text
