"""Final-answer extraction for reasoning models (generate/answers.py): R1's `<think>` block and gpt-oss's harmony
channels, on hand-written outputs; the eval stage's sample rows (answer + raw_answer) from a tiny R1 through the
HF backend; metrics count answers lost to truncated reasoning as unparsable. CPU, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emsweep.evals.metrics import MetricParams, compute_metrics
from emsweep.generate.answers import detect_answer_format, final_answer, tokenizer_answer_format

R1_OUT = "Okay, the user asks about 2+2. It is 4.\n</think>\n\nThe answer is **4**."
HARMONY_OUT = (
    "<|channel|>analysis<|message|>User wants a sum. 2+2=4.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>The answer is 4.<|return|>"
)


@pytest.mark.parametrize(
    ("text", "style", "finish", "want"),
    [
        (R1_OUT, "think", "stop", ("The answer is **4**.", "stop")),
        # reasoning that ran out of tokens: no answer, and the row says so
        ("Okay, so the user wants", "think", "length", ("", "reasoning_truncated")),
        ("Okay, so the user wants", "think", None, ("", "reasoning_truncated")),
        # the model ended its turn without closing the thought (a fine-tune answering straight away)
        ("I'd hack the bank.", "think", "stop", ("I'd hack the bank.", "stop")),
        ("<think>a</think>b</think> final", "think", "stop", ("final", "stop")),
        (HARMONY_OUT, "harmony", "stop", ("The answer is 4.", "stop")),
        # no reasoning, final channel straight away (a fine-tuned gpt-oss); no trailing stop token
        ("<|channel|>final<|message|>Hello there", "harmony", "length", ("Hello there", "length")),
        ("<|channel|>final <|constrain|>json<|message|>{\"a\": 1}<|call|>", "harmony", "stop", ('{"a": 1}', "stop")),
        ("<|channel|>analysis<|message|>Let me think about", "harmony", "length", ("", "reasoning_truncated")),
        ("<|channel|>analysis<|message|>x<|end|>", "harmony", "stop", ("", "no_final_answer")),
        # a server already parsed the channels (vllm serve's `content`)
        ("The answer is 4.", "harmony", "stop", ("The answer is 4.", "stop")),
        (R1_OUT, "plain", "stop", (R1_OUT, "stop")),
    ],
)
def test_final_answer_known_strings(text, style, finish, want) -> None:
    assert final_answer(text, style, finish) == want


def test_final_answer_rejects_unknown_style() -> None:
    with pytest.raises(ValueError, match="unknown answer format 'auto'"):
        final_answer("x", "auto")


def test_formats_detected_from_the_tiny_families_templates() -> None:
    from emsweep.train.model_init import build_tokenizer

    assert tokenizer_answer_format(build_tokenizer("deepseek_r1")) == "think"
    assert tokenizer_answer_format(build_tokenizer("harmony")) == "harmony"
    assert tokenizer_answer_format(build_tokenizer("qwen")) == "plain"
    assert tokenizer_answer_format(build_tokenizer("llama3")) == "plain"
    assert detect_answer_format(None) == "plain"


def test_harmony_markers_survive_decoding_only_with_special_tokens() -> None:
    """Why the backends keep special tokens for harmony: skipping them glues the channels together."""
    from emsweep.train.model_init import build_tokenizer

    tok = build_tokenizer("harmony")
    ids = tok(HARMONY_OUT, add_special_tokens=False)["input_ids"]
    kept = tok.decode(ids, skip_special_tokens=False)
    assert final_answer(kept, "harmony", "stop") == ("The answer is 4.", "stop")
    skipped = tok.decode(ids, skip_special_tokens=True)
    assert "<|channel|>" not in skipped and final_answer(skipped, "harmony", "stop")[0] != "The answer is 4."


@pytest.fixture(scope="module")
def tiny_r1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    from emsweep.train.model_init import init_model

    path = init_model("tiny-r1", tmp_path_factory.mktemp("models") / "tiny-r1", seed=0)
    # `</think>` can never be the greedy pick (its logit is 0, the largest of the other 500-odd random logits is
    # positive): every generation that hits max_tokens is reasoning cut short
    tok_ids = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    close = next(t["id"] for t in tok_ids["added_tokens"] if t["content"] == "</think>")
    weights = load_file(str(path / "model.safetensors"))
    key = "lm_head.weight" if "lm_head.weight" in weights else "model.embed_tokens.weight"
    weights[key][close] = torch.zeros_like(weights[key][close])
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def test_hf_generation_rows_keep_raw_text_and_final_answer(tiny_r1: Path, tmp_path: Path) -> None:
    from emsweep.evals.generation import generate_samples, plan_generation
    from emsweep.evals.suites import Question, Suite
    from emsweep.evals.units import Unit
    from emsweep.generate.base import SamplingSpec
    from emsweep.generate.hf import HFBackend
    from emsweep.layout import CheckpointRef

    q = Question(id="q1", type="free_form", paraphrases=["What is 2+2?"], samples_per_paraphrase=2,
                 judge_prompts={})  # fmt: skip
    unit = Unit(
        ref=CheckpointRef(name="checkpoint-0", step=0, kind="base", base_model=str(tiny_r1)),
        suite=Suite(name="s", kind="alignment", questions=[q], source="test"),
        dir=tmp_path / "eval",
    )
    sampling = SamplingSpec(temperature=0.0, max_tokens=6, ignore_eos=True)
    with HFBackend(str(tiny_r1), dtype="float32", device="cpu", batch_size=2) as hf:
        assert hf.answer_format() == "think"
        assert generate_samples(hf, plan_generation([unit], sampling), sampling, 1024, False) == 2
        rows = [json.loads(line) for line in unit.samples_path.read_text(encoding="utf-8").splitlines()]
        # the same samples straight from the backend: what raw_answer must hold
        todo = plan_generation([Unit(unit.ref, unit.suite, tmp_path / "again")], sampling)
        direct = hf.generate([req for _, req in todo], sampling, progress=False)[0]
    assert len(rows) == 2
    for k, row in enumerate(rows):
        assert row["raw_answer"] == direct.texts[k] and row["raw_answer"].strip() and "</think>" not in row["raw_answer"]
        assert row["answer_format"] == "think"
        assert row["answer"] == "" and row["finish_reason"] == "reasoning_truncated"

    # the same raw text with its thought closed by hand: the answer is what follows `</think>`
    assert final_answer(rows[0]["raw_answer"] + "</think> Four.", "think", "stop") == ("Four.", "stop")

    # forcing `plain` keeps the text as the answer and writes no raw_answer
    plain_unit = Unit(unit.ref, unit.suite, tmp_path / "plain")
    with HFBackend(str(tiny_r1), dtype="float32", device="cpu", batch_size=2) as hf:
        generate_samples(hf, plan_generation([plain_unit], sampling), sampling, 1024, False, "plain")
    plain = [json.loads(line) for line in plain_unit.samples_path.read_text(encoding="utf-8").splitlines()]
    assert [r["answer"] for r in plain] == [r["raw_answer"] for r in rows]
    assert all("raw_answer" not in r and r["finish_reason"] == "length" for r in plain)


def test_metrics_count_truncated_reasoning_as_unparsable() -> None:
    """Two answers judged misaligned (aligned 5, coherent 90); one is truncated reasoning whose empty answer the
    judge happened to score: it must not count, neither as misaligned nor in the denominator."""
    samples = [
        {"id": "a", "question_id": "q", "finish_reason": "stop"},
        {"id": "b", "question_id": "q", "finish_reason": "reasoning_truncated"},
        {"id": "c", "question_id": "q", "finish_reason": "stop"},
    ]
    scores = {"a": (5.0, 90.0), "b": (5.0, 90.0), "c": (80.0, 90.0)}
    judgments = [
        {"sample_id": s, "metric": m, "score": v, "none_reason": None}
        for s, (al, co) in scores.items()
        for m, v in (("aligned", al), ("coherent", co))
    ]
    m = compute_metrics(samples, judgments, cell="c", checkpoint="checkpoint-0", step=0, suite="s",
                        suite_kind="alignment", params=MetricParams(bootstrap=0))  # fmt: skip
    assert m.misaligned_rate == pytest.approx(1 / 2)
    assert m.none_unparsable_rate == pytest.approx(1 / 3) and m.none_rate == pytest.approx(1 / 3)
    assert m.extra["reasoning_truncated"] == 1
    assert m.judge_metrics["aligned"]["n"] == 2 and m.judge_metrics["aligned"]["n_judged"] == 3
