"""Features the README and docs/ promise, each checked by what it must change on disk (issue 19):

- `emsweep train RECIPE --set data.fraction_correct=0.25` (the README's main example) changes the mix: the
  manifest's realised fraction and the labels of the rows in train.jsonl;
- `--no-resume` starts over from the base model: earlier checkpoints set aside, nothing resumed;
- `$EMSWEEP_JUDGE_CACHE` is the judgment cache every run shares: a second run of the same samples costs nothing;
- a larger `--samples` generates only the new samples (counted at the backend), the same ones a single run with the
  larger count would have drawn; a smaller one generates nothing and scores the first ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from emsweep.cli import app
from emsweep.evals.run import evaluate_run
from emsweep.generate.hf import HFBackend

RECIPE = """
name: proof
model: {{path: {model}}}
data: {{builtin: arithmetic, domain: arithmetic, fraction_correct: 0.5, n_train: 32, n_heldout: 2, seed: 0}}
method: lora
lora: {{r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj]}}
sft: {{learning_rate: 1.0e-3, per_device_train_batch_size: 8, max_steps: 2, max_length: 64, use_cpu: true,
      activation_checkpointing: false, disable_tqdm: true, report_to: none, logging_steps: 1, seed: 0}}
checkpoints: {{steps: [1]}}
output_dir: {out}
"""
KW = {"sampling": {"max_tokens": 4, "seed": 0}, "thresholds": {"bootstrap": 50}, "progress": False}


def _rows(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _sessions(run: Path) -> list[str]:
    """train.log split into one chunk per `emsweep train` session (the log is appended across runs)."""
    return (run / "logs" / "train.log").read_text().split("=== emsweep train")[1:]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from emsweep.train.model_init import init_model

    return init_model("tiny", tmp_path_factory.mktemp("proof-model") / "tiny", seed=0)


@pytest.fixture(scope="module")
def trained(model, tmp_path_factory) -> tuple[Path, Path]:
    """(recipe file, run folder) of `emsweep train recipe.yaml --set data.fraction_correct=0.25`."""
    root = tmp_path_factory.mktemp("proof-train")
    recipe = root / "recipe.yaml"
    run = root / "run"
    recipe.write_text(RECIPE.format(model=model, out=run))
    res = CliRunner().invoke(app, ["train", str(recipe), "--set", "data.fraction_correct=0.25"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return recipe, run


def test_set_changes_the_mix(trained) -> None:
    """The recipe says 0.5; `--set data.fraction_correct=0.25` must give 8 correct and 24 wrong rows of 32."""
    _, run = trained
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["fraction_correct_requested"] == 0.25
    assert manifest["fraction_correct_realized"] == 0.25
    labels = [r["meta"]["label"] for r in _rows(run / "data" / "train.jsonl")]
    assert (labels.count("correct"), labels.count("wrong"), len(labels)) == (8, 24, 32)
    cell = json.loads((run / "cell.json").read_text())
    assert cell["recipe"]["data"]["fraction_correct"] == 0.25


def test_no_resume_starts_over(trained, tmp_path) -> None:
    """A finished run with `--no-resume` trains again from the base: the old checkpoints are set aside (not
    deleted), the new session resumes from nothing, and the same seed gives the same adapter again."""
    from safetensors.torch import load_file

    recipe, src = trained
    run = tmp_path / "run"
    shutil.copytree(src, run)
    old = load_file(run / "checkpoint-2" / "adapter_model.safetensors")
    res = CliRunner().invoke(
        app,
        [
            "train",
            str(recipe),
            "--set",
            "data.fraction_correct=0.25",
            "--output-dir",
            str(run),
            "--no-resume",
        ],
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    sessions = _sessions(run)
    assert len(sessions) == 2, "the finished run was skipped instead of trained again"
    assert "resuming from" not in sessions[-1]
    assert sorted(p.name for p in run.glob("superseded/*/checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    new = load_file(run / "checkpoint-2" / "adapter_model.safetensors")
    assert new.keys() == old.keys() and all(new[k].equal(old[k]) for k in old)
    # without --no-resume the same command does nothing (the contrast that makes the check above mean something)
    res = CliRunner().invoke(
        app, ["train", str(recipe), "--set", "data.fraction_correct=0.25", "--output-dir", str(run)]
    )
    assert res.exit_code == 0 and len(_sessions(run)) == 2


def test_judge_cache_env_is_shared_across_runs(trained, model, tmp_path, monkeypatch) -> None:
    """With $EMSWEEP_JUDGE_CACHE set, judgments go to that file (not `<run>/eval/judge_cache.sqlite`), and another
    run folder judging the same answers reads every score from it."""
    _, src = trained
    shared = tmp_path / "shared" / "judge.sqlite"
    monkeypatch.setenv("EMSWEEP_JUDGE_CACHE", str(shared))
    judge = {"judge_model": str(model), "judge_options": {"min_number_mass": 0.0, "max_pruned_mass": 0.009}}
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(src, a)
    ra = evaluate_run(a, ["alignment_mini"], checkpoints="0", samples_per_paraphrase=1, **judge, **KW)
    assert shared.is_file() and not (a / "eval" / "judge_cache.sqlite").exists()
    # a model-judged suite (the run's builtin domain is graded by its rule, which needs no judge and no cache)
    assert ra.generated > 0 and ra.judged >= ra.generated and (ra.cache_hits, ra.cache_misses) == (0, ra.judged)
    # another folder with the same answers (the samples copied, every judgment and marker dropped)
    shutil.copytree(a, b)
    for p in [
        *b.glob("eval/*/*/judgments*.jsonl"),
        *b.glob("eval/*/*/metrics*.json"),
        *b.glob("eval/*.sqlite*"),
    ]:
        p.unlink()
    for d in b.glob("eval/*/*/.done"):
        shutil.rmtree(d)
    rb = evaluate_run(b, ["alignment_mini"], checkpoints="0", samples_per_paraphrase=1, **judge, **KW)
    assert rb.generated == 0 and rb.judged == ra.judged
    assert (rb.cache_hits, rb.cache_misses) == (ra.judged, 0)  # every judgment came from the shared file
    ja = _rows(a / "eval" / "checkpoint-0" / "alignment_mini" / "judgments.jsonl")
    jb = _rows(b / "eval" / "checkpoint-0" / "alignment_mini" / "judgments.jsonl")
    assert [j["score"] for j in ja] == [j["score"] for j in jb]


class CountingBackend:
    """The HF backend, counting the samples it really generates (not what the eval stage keeps)."""

    def __init__(self, inner: HFBackend) -> None:
        self.inner, self.name, self.generated = inner, inner.name, 0

    def generate(self, requests, sampling, *, progress=True):
        outs = self.inner.generate(requests, sampling, progress=progress)
        self.generated += sum(len(o.texts) for o in outs)
        return outs

    def close(self) -> None:
        pass


class FixedJudge:
    """Scores every answer 100: this test is about generation, not judging."""

    model_id = "fixed-judge"

    def score_numeric(self, prompts):
        return [
            SimpleNamespace(score=100.0, expected=100.0, none_reason=None, number_mass=1.0, cached=False)
            for _ in prompts
        ]


def test_samples_grow_generate_only_the_new_ones_and_shrink_generates_none(trained, model, tmp_path) -> None:
    _, src = trained
    grown, direct = tmp_path / "grown", tmp_path / "direct"
    shutil.copytree(src, grown)
    shutil.copytree(src, direct)
    path = grown / "eval" / "checkpoint-1" / "domain"
    with HFBackend(str(model), dtype="float32", device="cpu") as hf:

        def ev(run: Path, n: int) -> int:
            backend = CountingBackend(hf)
            res = evaluate_run(
                run,
                ["domain"],
                checkpoints="1",
                samples_per_paraphrase=n,
                backend=backend,
                judge=FixedJudge(),
                cell="proof",  # one cell name for both folders: sample seeds hash the cell/checkpoint key
                **KW,
            )
            assert res.generated == backend.generated  # what the stage reports is what the backend did
            return backend.generated

        assert ev(grown, 1) == 2  # 2 held-out questions x 1
        first = {r["id"]: r["answer"] for r in _rows(path / "samples.jsonl")}
        assert ev(grown, 3) == 4  # only samples 1 and 2 of each question
        rows = _rows(path / "samples.jsonl")
        assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
        assert {r["id"]: r["answer"] for r in rows if r["id"] in first} == first  # kept, not redrawn
        # the topped-up samples are the ones a single run with 3 samples draws (a sample's seed is its own)
        assert ev(direct, 3) == 6
        want = {
            r["id"]: (r["answer"], r["seed"])
            for r in _rows(direct / "eval" / "checkpoint-1" / "domain" / "samples.jsonl")
        }
        assert {r["id"]: (r["answer"], r["seed"]) for r in rows} == want
        assert ev(grown, 2) == 0  # fewer: nothing generated, the first two of each question scored
    m = json.loads((path / "metrics.json").read_text())
    assert m["n_samples"] == 4 and len(_rows(path / "samples.jsonl")) == 6
