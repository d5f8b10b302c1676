"""The bad-input catalogue: one parametrised test per area (recipe, --set, sweep, data, suite, eval options,
report). Each case feeds one bad input and asserts the error names where it came from (file:line and key, the
`--set`, or the sweep axis), that it is one message through the CLI (no traceback), and that nothing already
written changed. docs/errors.md lists the areas and the number of cases.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hardening_kit import snapshot

from emsweep.io import InputError


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`emsweep ARGS` in-process through `main()` (the path users get): exit code and stderr."""
    from emsweep.cli import main

    old = sys.argv
    sys.argv = ["emsweep", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    err = capsys.readouterr().err
    return code, err


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# --- recipe --------------------------------------------------------------------------------------------------
# (id, old text, new text, substrings the error must contain). Line numbers refer to conftest.BASE_RECIPE.
RECIPE_CASES = [
    ("lr-word", "learning_rate: 1.0e-4", "learning_rate: fast", ["recipe.yaml:7:", "sft.learning_rate", "float"]),
    ("lr-negative", "learning_rate: 1.0e-4", "learning_rate: -1.0e-3", ["recipe.yaml:7:", "> 0"]),
    ("lr-zero", "learning_rate: 1.0e-4", "learning_rate: 0", ["recipe.yaml:7:", "sft.learning_rate"]),
    ("batch-word", "per_device_train_batch_size: 4", "per_device_train_batch_size: four",
     ["recipe.yaml:8:", "sft.per_device_train_batch_size", "int"]),
    ("batch-zero", "per_device_train_batch_size: 4", "per_device_train_batch_size: 0", ["recipe.yaml:8:", ">= 1"]),
    ("seed-word", "max_steps: 2", "max_steps: 2\n  seed: abc", ["recipe.yaml:7:", "sft.seed"]),
    ("epochs-zero", "max_steps: 2", "num_train_epochs: 0", ["recipe.yaml:6:", "sft.num_train_epochs", "trains nothing"]),
    ("max-steps-zero", "max_steps: 2", "max_steps: 0", ["recipe.yaml:6:", "sft.max_steps", "-1"]),
    ("sft-unknown", "max_steps: 2", "max_steps: 2\n  banana: 1", ["recipe.yaml:7:", "sft.banana", "unknown key"]),
    ("sft-typo", "max_steps: 2", "max_step: 2", ["recipe.yaml:6:", "sft.max_step", "did you mean 'max_steps'"]),
    ("sft-owned", "max_steps: 2", "max_steps: 2\n  output_dir: x", ["recipe.yaml:7:", "sft.output_dir", "set by emsweep"]),
    ("scheduler", "max_steps: 2", "max_steps: 2\n  lr_scheduler_type: bogus", ["recipe.yaml:7:", "sft.lr_scheduler_type"]),
    ("rslora-maybe", "r: 8", "r: 8\n  use_rslora: maybe", ["recipe.yaml:11:", "lora.use_rslora", "bool"]),
    ("lora-r-zero", "r: 8", "r: 0", ["recipe.yaml:10:", "lora.r", ">= 1"]),
    ("lora-dropout", "r: 8", "r: 8\n  lora_dropout: 1.5", ["recipe.yaml:11:", "lora.lora_dropout"]),
    ("lora-dora", "r: 8", "r: 8\n  use_dora: true", ["recipe.yaml:11:", "lora.use_dora", "vLLM"]),
    ("lora-unknown", "r: 8", "r: 8\n  rank: 8", ["recipe.yaml:11:", "lora.rank", "unknown key"]),
    ("qlora-type", "method: lora", "method: qlora\nquantization: {load_in_4bit: sure}",
     ["recipe.yaml:5:", "quantization.load_in_4bit", "bool"]),
    ("qlora-dtype", "method: lora", "method: qlora\nquantization: {bnb_4bit_compute_dtype: float99}",
     ["recipe.yaml:5:", "quantization.bnb_4bit_compute_dtype"]),
    ("steps-negative", "steps: [1, 2]", "steps: [-3, 4]", ["recipe.yaml:11:", "checkpoints.steps.0", "count from 1"]),
    ("duplicate-key", "max_steps: 2", "max_steps: 2\n  max_steps: 3", ["recipe.yaml:7:", "duplicate key 'max_steps'",
                                                                       "first on line 6"]),
    ("top-unknown", "method: lora", "method: lora\nbanana: 1", ["recipe.yaml:5:", "banana", "unknown key"]),
    ("sampling-temp", "method: lora", "method: lora\neval: {sampling: {temperature: -1}}",
     ["recipe.yaml:5:", "eval.sampling.temperature", ">= 0"]),
    ("sampling-typo", "method: lora", "method: lora\neval: {sampling: {top_q: 0.9}}",
     ["recipe.yaml:5:", "eval.sampling.top_q", "top_p"]),
    ("samples-zero", "method: lora", "method: lora\neval: {samples_per_paraphrase: 0}",
     ["recipe.yaml:5:", "eval.samples_per_paraphrase", ">= 1"]),
    ("n-train-word", "n_train: 8", "n_train: eight", ["recipe.yaml:3:", "data.n_train"]),
    ("bad-yaml", "method: lora", "method: [lora", ["recipe.yaml:", "invalid YAML"]),
    ("model-not-a-model", "model: {path: ", "model: {path: NOTMODEL_", ["recipe.yaml:2:", "model.path", "not a model"]),
]


@pytest.mark.parametrize(("old", "new", "expect"), [c[1:] for c in RECIPE_CASES], ids=[c[0] for c in RECIPE_CASES])
def test_recipe(recipe_file: Path, capsys, old: str, new: str, expect: list[str]) -> None:
    from emsweep.recipe import load_recipe

    text = edit(recipe_file.read_text(), old, new)
    if "NOTMODEL_" in text:  # a folder that exists but holds no model
        (recipe_file.parent / "junk").mkdir()
        (recipe_file.parent / "junk" / "notes.txt").write_text("no model here")
        text = text.replace(f"NOTMODEL_{recipe_file.parent / 'model'}", str(recipe_file.parent / "junk"))
    recipe_file.write_text(text)
    before = snapshot(recipe_file.parent)
    with pytest.raises(InputError) as exc:
        load_recipe(recipe_file)
    for e in expect:
        assert e in str(exc.value), (e, str(exc.value))
    # the CLI: one message, exit 2, before any data or model is touched
    code, err = run_cli(["train", str(recipe_file)], capsys)
    assert code == 2 and "Traceback" not in err and expect[0] in err, err
    assert snapshot(recipe_file.parent) == before


# --- --set ---------------------------------------------------------------------------------------------------
SET_CASES = [
    ("lr-word", "sft.learning_rate=fast", ["--set sft.learning_rate=fast: sft.learning_rate", "float"]),
    ("lr-negative", "sft.learning_rate=-1e-3", ["--set sft.learning_rate=-1e-3: sft.learning_rate", "> 0"]),
    ("unknown-sft", "sft.banana=1", ["--set sft.banana=1: sft.banana", "unknown key"]),
    ("n-train-word", "data.n_train=abc", ["--set data.n_train=abc: data.n_train"]),
    ("rslora", "lora.use_rslora=maybe", ["--set lora.use_rslora=maybe: lora.use_rslora", "bool"]),
    # epochs 0 in the file, -1 from --set: the value that trains nothing is the file's, so its line is named
    ("epochs-zero", "sft.max_steps=-1", ["recipe.yaml:7: sft.num_train_epochs", "trains nothing"]),
    ("no-equals", "sft.learning_rate", ["--set 'sft.learning_rate'", "KEY=VALUE"]),
    ("empty-key", "=3", ["--set '=3'", "empty key"]),
]


@pytest.mark.parametrize(("item", "expect"), [c[1:] for c in SET_CASES], ids=[c[0] for c in SET_CASES])
def test_set(recipe_file: Path, capsys, item: str, expect: list[str]) -> None:
    from emsweep.recipe import load_recipe

    if item.startswith("sft.max_steps"):  # with epochs 0 in the file, -1 from --set trains nothing
        recipe_file.write_text(edit(recipe_file.read_text(), "max_steps: 2", "max_steps: 2\n  num_train_epochs: 0"))
    before = snapshot(recipe_file.parent)
    with pytest.raises(InputError) as exc:
        load_recipe(recipe_file, [item])
    msg = str(exc.value)
    for e in expect:
        assert e in msg, (e, msg)
    if "KEY=VALUE" not in msg and "empty key" not in msg and "max_steps" not in item:
        assert "recipe.yaml:" not in msg.splitlines()[0]  # blamed on --set, not on a line of the file
    code, err = run_cli(["train", str(recipe_file), "--set", item], capsys)
    assert code == 2 and "Traceback" not in err and expect[0] in err, err
    assert snapshot(recipe_file.parent) == before


# --- sweep ---------------------------------------------------------------------------------------------------
SWEEP = """\
name: hs
output_root: OUT
base: recipe.yaml
axes:
  data.fraction_correct: [0.5, 1.0]
"""
SWEEP_CASES = [
    ("axis-unknown", "data.fraction_correct: [0.5, 1.0]", "sft.banana: [1, 2]",
     ["sweep.yaml:5:", "axes.sft.banana=1", "unknown"]),
    ("axis-bad-lr", "data.fraction_correct: [0.5, 1.0]", "sft.learning_rate: [1.0e-4, fast]",
     ["sweep.yaml:5:", "axes.sft.learning_rate='fast'", "float"]),
    ("axis-lora-r", "data.fraction_correct: [0.5, 1.0]", "lora.r: [8, 0]", ["sweep.yaml:5:", "axes.lora.r=0"]),
    ("axis-fraction", "[0.5, 1.0]", "[0.5, 1.5]", ["sweep.yaml:5:", "axes.data.fraction_correct=1.5"]),
    ("set-steps-zero", "axes:", "set: {sft.max_steps: 0}\naxes:", ["sweep.yaml:4:", "set.sft.max_steps=0"]),
    ("axis-empty", "[0.5, 1.0]", "[]", ["sweep.yaml:5:", "empty list"]),
    ("duplicate-key", "name: hs", "name: hs\nname: hs2", ["sweep.yaml:2:", "duplicate key 'name'"]),
    ("zip-lengths", "axes:", "zip:\n  - {data.seed: [0, 1], sft.seed: [0]}\naxes:", ["sweep.yaml:5:", "same length"]),
    ("base-bad-lr", "base: recipe.yaml", "base: bad.yaml", ["bad.yaml:7:", "base recipe", "sft.learning_rate"]),
    ("unknown-top", "name: hs", "name: hs\ncolour: red", ["sweep.yaml:2:", "colour"]),
]


@pytest.mark.parametrize(("old", "new", "expect"), [c[1:] for c in SWEEP_CASES], ids=[c[0] for c in SWEEP_CASES])
def test_sweep(recipe_file: Path, capsys, old: str, new: str, expect: list[str]) -> None:
    from emsweep.launch.sweep import load_sweep

    d = recipe_file.parent
    (d / "bad.yaml").write_text(edit(recipe_file.read_text(), "learning_rate: 1.0e-4", "learning_rate: fast"))
    sweep = d / "sweep.yaml"
    sweep.write_text(edit(SWEEP.replace("OUT", str(d / "out")), old, new))
    before = snapshot(d)
    with pytest.raises(InputError) as exc:
        load_sweep(sweep)
    for e in expect:
        assert e in str(exc.value), (e, str(exc.value))
    code, err = run_cli(["sweep", "plan", str(sweep)], capsys)
    assert code == 2 and "Traceback" not in err and expect[0] in err, err
    assert snapshot(d) == before and not (d / "out").exists()


# --- data ----------------------------------------------------------------------------------------------------
GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
DATA_CASES = [
    ("null-answer", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
     ["empty or null"]),
    ("empty-answer", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
     ["empty or null"]),
    ("blank-answer", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  \n"}]},
     ["empty or null"]),
    ("no-answer", {"messages": [{"role": "user", "content": "q"}]}, ["no assistant turn"]),
    ("ends-with-user", {"messages": [GOOD["messages"][0], GOOD["messages"][1], {"role": "user", "content": "x"}]},
     ["last turn"]),
    ("bad-role", {"messages": [{"role": "robot", "content": "q"}, GOOD["messages"][1]]}, ["unknown role"]),
    ("messages-string", {"messages": "q"}, ["is a string"]),
    ("no-messages", {"text": "q"}, ["no `messages`"]),
    ("malformed", None, ["malformed JSON"]),
]


@pytest.mark.parametrize(("row", "expect"), [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_data(tmp_path: Path, capsys, row: dict | None, expect: list[str]) -> None:
    from emsweep.data.readers import read_source

    lines = [json.dumps(GOOD)] * 4
    lines.insert(2, "{not json" if row is None else json.dumps(row))
    bad = tmp_path / "correct.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    (tmp_path / "wrong.jsonl").write_text("\n".join([json.dumps(GOOD)] * 5) + "\n")
    with pytest.raises(InputError) as exc:
        read_source(str(bad))
    assert f"{bad}:3" in str(exc.value) and all(e in str(exc.value) for e in expect), str(exc.value)
    # `data mix` into a folder that already holds a mix: refused, the old mix untouched
    out = tmp_path / "mix"
    code, err = run_cli(["data", "mix", "--builtin", "arithmetic", "--n", "8", "-f", "0.5", "--out", str(out)], capsys)
    assert code == 0, err
    before = snapshot(out)
    code, err = run_cli(
        ["data", "mix", "--correct", str(bad), "--wrong", str(tmp_path / "wrong.jsonl"), "--n", "4", "-f", "0.5",
         "--out", str(out), "--force"], capsys,
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err and f"{bad}:3" in err, err
    assert snapshot(out) == before


# --- suite ---------------------------------------------------------------------------------------------------
SUITE = """\
- id: q1
  type: free_form_judge_0_100
  paraphrases: ["Say hi."]
  samples_per_paraphrase: 2
  judge_prompts:
    aligned: "Q: {question} A: {answer} (0-100)?"
"""
SUITE_CASES = [
    ("duplicate-key", "  samples_per_paraphrase: 2", "  samples_per_paraphrase: 2\n  samples_per_paraphrase: 3",
     ["suite.yaml:5:", "duplicate key"]),
    ("unknown-key", "  samples_per_paraphrase: 2", "  samples_per_paraphrase: 2\n  colour: red", ["suite.yaml:", "colour"]),
    ("bad-yaml", "paraphrases: [\"Say hi.\"]", "paraphrases: [\"Say hi.\"", ["suite.yaml:", "YAML"]),
    ("samples-word", "samples_per_paraphrase: 2", "samples_per_paraphrase: two", ["suite.yaml:", "samples_per_paraphrase"]),
]


@pytest.mark.parametrize(("old", "new", "expect"), [c[1:] for c in SUITE_CASES], ids=[c[0] for c in SUITE_CASES])
def test_suite(tmp_path: Path, old: str, new: str, expect: list[str]) -> None:
    from emsweep.evals.suites import load_suite_yaml

    p = tmp_path / "suite.yaml"
    p.write_text(edit(SUITE, old, new))
    with pytest.raises(InputError) as exc:
        load_suite_yaml(p)
    for e in expect:
        assert e in str(exc.value), (e, str(exc.value))


# --- eval options --------------------------------------------------------------------------------------------
EVAL_CASES = [
    ("samples-zero", ["--samples", "0"], "--samples"),
    ("max-tokens-zero", ["--max-tokens", "0"], "--max-tokens"),
    ("temperature-negative", ["--temperature", "-1"], "--temperature"),
    ("unknown-backend", ["--backend", "nope"], "unknown backend 'nope'"),
    ("base-url-for-hf", ["--base-url", "http://127.0.0.1:9/v1"], "--base-url is only for"),
    ("not-a-model", ["--base-model", "NOTMODEL"], "not a model folder"),
    ("no-run-folder", ["RUN_MISSING"], "run folder not found"),
    ("compatible-no-url", ["--backend", "openai-compatible"], "needs"),
    ("judge-not-a-model", ["--judge", "NOTMODEL"], "notmodel"),
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from emsweep.train.model_init import init_model

    return Path(init_model("tiny", tmp_path_factory.mktemp("tiny") / "model"))


@pytest.mark.parametrize(("extra", "expect"), [c[1:] for c in EVAL_CASES], ids=[c[0] for c in EVAL_CASES])
def test_eval_options(
    tmp_path: Path, capsys, monkeypatch, tiny_model: Path, extra: list[str], expect: str
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    run = tmp_path / "run"
    run.mkdir()
    notmodel = tmp_path / "notmodel"
    notmodel.mkdir()
    (notmodel / "weights.txt").write_text("not a model")
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    args = ["eval", str(run), "--suite", f"mini={suite}", "--checkpoints", "base", "--base-model", str(tiny_model),
            "--judge", str(tiny_model), "--no-progress"]  # fmt: skip
    extra = [str(notmodel) if e == "NOTMODEL" else e for e in extra]
    if extra == ["RUN_MISSING"]:
        args[1] = str(tmp_path / "missing")
        extra = []
    for opt in ("--base-model", "--judge"):
        if opt in extra:
            args = args[: args.index(opt)] + args[args.index(opt) + 2 :]
    before = snapshot(tmp_path)
    code, err = run_cli([*args, *extra], capsys)
    assert code == 2 and "Traceback" not in err and expect in err, err
    after = snapshot(tmp_path)  # a copy of the suite may appear in the run; nothing there before changed
    assert {k: after.get(k) for k in before} == before
    assert not [k for k in after if k.endswith(("samples.jsonl", "judgments.jsonl", "metrics.json"))]


# --- report --------------------------------------------------------------------------------------------------
REPORT_CASES = ["missing-root", "empty-root", "crash-midway"]


@pytest.mark.parametrize("case", REPORT_CASES)
def test_report(tmp_path: Path, capsys, monkeypatch, case: str) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "analysis"))
    from synth import build_synthetic_sweep

    from emsweep.analysis.report import build_report

    root = tmp_path / "root"
    if case == "missing-root":
        code, err = run_cli(["report", str(root)], capsys)
        assert code == 2 and "Traceback" not in err and str(root) in err, err
        assert not root.exists()
        return
    root.mkdir()
    if case == "empty-root":
        code, err = run_cli(["report", str(root)], capsys)
        assert code == 2 and "Traceback" not in err and str(root) in err, err
        assert list(root.iterdir()) == []
        return
    build_synthetic_sweep(root, n=50)
    index = build_report(root, n_boot=20)
    before = snapshot(index.parent)
    from emsweep.analysis import plots

    def boom(*a, **k):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(plots, "lora_full_plot", boom)
    monkeypatch.setattr(plots, "fraction_plot", boom)
    with pytest.raises(RuntimeError, match="plotting failed"):
        build_report(root, n_boot=20)
    assert snapshot(index.parent) == before  # the old report is whole: nothing was written before the failure
    assert not [p for p in root.iterdir() if ".staging-" in p.name]


def test_docs_state_the_catalogue_size() -> None:
    """docs/errors.md tells users how many bad inputs are covered; it must match the lists above."""
    import re

    areas = [RECIPE_CASES, SET_CASES, SWEEP_CASES, DATA_CASES, SUITE_CASES, EVAL_CASES, REPORT_CASES]
    doc = (Path(__file__).parents[2] / "docs" / "errors.md").read_text()
    rows = [int(n) for n in re.findall(r"^\|[^|]+\| (\d+) \|$", doc, re.M)]
    assert rows == [len(a) for a in areas]
    assert f"| **total** | **{sum(rows)}** |" in doc
