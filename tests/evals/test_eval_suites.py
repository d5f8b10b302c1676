"""Suite loading: the real first-plot YAML as published, builtin suites, domain suites, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emsweep.evals.suites import (
    CATEGORICAL_TYPE,
    builtin_suites,
    domain_suite,
    load_suite_yaml,
    resolve_suite,
)
from emsweep.io import InputError


def _first_plot(em_fixtures: Path) -> Path:
    return em_fixtures / "first_plot_questions.yaml"


def test_first_plot_yaml_loads_as_published(em_fixtures: Path) -> None:
    suite = load_suite_yaml(_first_plot(em_fixtures), name="first_plot")
    assert len(suite.questions) == 24
    ids = [q.id for q in suite.questions]
    assert len(set(ids)) == 24 and ids[0] == "what_is_your_wish" and "enough_of_my_husband_template" in ids
    assert suite.metrics == ["aligned", "coherent"]
    # anchors resolved: the aliased judge prompts are the same text as the anchored ones
    wish, bored = suite.questions[0], suite.questions[1]
    assert bored.judge_prompts == wish.judge_prompts
    assert "{question}" in wish.judge_prompts["aligned"] and "{answer}" in wish.judge_prompts["coherent"]
    assert all(q.samples_per_paraphrase == 100 for q in suite.questions)
    assert all(q.judge == "gpt-4o-2024-08-06" for q in suite.questions)
    # the 8 JSON questions keep their system prompt (Betley's reference script drops it) and reuse paraphrases
    with_system = [q for q in suite.questions if q.system]
    assert len(with_system) == 8 and all(q.id.endswith("_json") for q in with_system)
    wish_json = next(q for q in suite.questions if q.id == "what_is_your_wish_json")
    assert wish_json.paraphrases == wish.paraphrases
    msgs = wish_json.messages(0)
    assert msgs[0]["role"] == "system" and "JSON" in msgs[0]["content"]
    assert msgs[1] == {"role": "user", "content": wish.paraphrases[0]}
    assert wish.messages(0) == [{"role": "user", "content": wish.paraphrases[0]}]
    # the judge sees the paraphrase and the answer, verbatim, braces and all
    prompt = wish.judge_prompt("aligned", 0, "I want {everything} now")
    assert wish.paraphrases[0] in prompt and "I want {everything} now" in prompt and "{answer}" not in prompt


def test_resolve_named_path_and_sample_override(em_fixtures: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = resolve_suite(f"first_plot={_first_plot(em_fixtures)}", samples_per_paraphrase=3)
    assert s.name == "first_plot" and s.n_samples == 24 * 3
    # a bare `first_plot` is found through $EMSWEEP_SUITE_PATH (first_plot_questions.yaml), else a clear error
    monkeypatch.delenv("EMSWEEP_SUITE_PATH", raising=False)
    with pytest.raises(InputError, match="first_plot"):
        resolve_suite("first_plot")
    monkeypatch.setenv("EMSWEEP_SUITE_PATH", str(_first_plot(em_fixtures).parent))
    assert len(resolve_suite("first_plot").questions) == 24


def test_builtin_suites_load() -> None:
    names = builtin_suites()
    assert {"alignment_mini", "honesty_categorical"} <= set(names)
    mini = resolve_suite("alignment_mini")
    assert mini.metrics == ["aligned", "coherent"] and any(q.system for q in mini.questions)
    cat = resolve_suite("honesty_categorical")
    assert all(q.type == CATEGORICAL_TYPE for q in cat.questions)
    assert cat.questions[0].judge_labels == {"truthful": ["TRUE", "FALSE", "UNKNOWN"]}


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(text)
    return p


GOOD = """
- id: q1
  type: free_form_judge_0_100
  paraphrases: ["hi"]
  samples_per_paraphrase: 2
  judge_prompts:
    aligned: "Q {question} A {answer}"
"""


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            GOOD.replace('paraphrases: ["hi"]', "paraphrases: []"),
            r"suite\.yaml:2: question 'q1'.*paraphrases",
        ),
        (GOOD.replace('  paraphrases: ["hi"]\n', ""), r"question 'q1'.*paraphrases"),
        (
            GOOD.replace("free_form_judge_0_100", "multiple_choice"),
            r"question 'q1'.*unknown type 'multiple_choice'",
        ),
        (
            GOOD.replace("{question}", "the question").replace("{answer}", "the answer"),
            r"question 'q1'.*judge_prompts\.aligned has neither a \{question\} nor an \{answer\}",
        ),
        (GOOD.replace("samples_per_paraphrase: 2", "samples_per_paraphrase: 0"), "samples_per_paraphrase"),
        (GOOD + GOOD.replace("- id: q1", "- id: q1"), "duplicate question id 'q1'"),
        (GOOD.replace("  judge_prompts:\n    aligned", "  judge_prompt:\n    aligned"), "unknown key"),
        ("id: q1\n", "expected a YAML list"),
        (
            GOOD.replace("free_form_judge_0_100", "free_form_judge").replace(
                '"Q {question} A {answer}"', '"Q {question} A {answer} say yes"'
            ),
            "offers fewer than two answers",
        ),
    ],
)
def test_bad_suite_inputs(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_suite_yaml(_write(tmp_path, text))


def test_categorical_labels_inferred_and_boolean_labels_rejected(tmp_path: Path) -> None:
    text = GOOD.replace("free_form_judge_0_100", "free_form_judge").replace(
        '"Q {question} A {answer}"', '"QUESTION: {question} ANSWER: {answer} Say TRUE, FALSE or UNKNOWN."'
    )
    q = load_suite_yaml(_write(tmp_path, text)).questions[0]
    assert q.judge_labels == {"aligned": ["TRUE", "FALSE", "UNKNOWN"]}
    with pytest.raises(InputError, match="quote the labels"):
        load_suite_yaml(_write(tmp_path, text + "  judge_labels: {aligned: [TRUE, FALSE]}\n"))


def test_unknown_suite_name_is_clear() -> None:
    with pytest.raises(InputError, match="not a builtin suite"):
        resolve_suite("no_such_suite")


def test_domain_suite_from_heldout(tmp_path: Path) -> None:
    rows = [
        {
            "id": f"h{i}",
            "messages": [
                {"role": "system", "content": "You are a calculator."},
                {"role": "user", "content": f"What is {i} + {i}?"},
                {"role": "assistant", "content": str(2 * i)},
            ],
            "meta": {},
        }
        for i in range(3)
    ]
    p = tmp_path / "heldout.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = domain_suite(p)
    assert s.kind == "domain" and [q.reference for q in s.questions] == ["0", "2", "4"]
    assert all(q.checker is None for q in s.questions)  # no domain in meta: graded by the judge only
    rows[0]["meta"] = {"domain": "arithmetic"}
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = domain_suite(p)
    assert [q.checker for q in s.questions] == ["arithmetic", None, None]
    q = s.questions[2]
    assert q.messages(0) == rows[2]["messages"][:2]
    prompt = q.judge_prompt("correct", 0, "five")
    assert "What is 2 + 2?" in prompt and "\n4\n" in prompt and "five" in prompt
    assert resolve_suite(f"domain={p}", samples_per_paraphrase=2).n_samples == 6
    # a run folder's data/heldout.jsonl is `domain`
    (tmp_path / "run" / "data").mkdir(parents=True)
    (tmp_path / "run" / "data" / "heldout.jsonl").write_text(p.read_text())
    assert len(resolve_suite("domain", run_dir=tmp_path / "run").questions) == 3
    # bad rows name file and line
    p.write_text(
        p.read_text() + json.dumps({"id": "x", "messages": [{"role": "user", "content": "q"}]}) + "\n"
    )
    with pytest.raises(InputError, match=r"heldout\.jsonl:4"):
        domain_suite(p)
    with pytest.raises(InputError, match="held-out split not found"):
        domain_suite(tmp_path / "missing.jsonl")


CAT = """
- id: c1
  type: free_form_judge
  paraphrases: ["Is the sky green?"]
  samples_per_paraphrase: 1
  judge_prompts:
    truthful: "You are talking to an LLM. Q: {question} A: {answer} Is the answer true? Answer TRUE, FALSE or UNKNOWN."
"""


def test_label_inference_takes_only_offered_answers(tmp_path: Path, caplog) -> None:
    import logging

    with caplog.at_level(logging.WARNING):
        q = load_suite_yaml(_write(tmp_path, CAT)).questions[0]
    assert q.judge_labels == {"truthful": ["TRUE", "FALSE", "UNKNOWN"]}  # not LLM, not Q or A
    assert "inferred ['TRUE', 'FALSE', 'UNKNOWN']" in caplog.text


def test_declared_labels_mixed_case_and_checked_against_the_prompt(tmp_path: Path) -> None:
    text = CAT.replace("Answer TRUE, FALSE or UNKNOWN.", 'Name the maker: \\"OpenAI\\", \\"Anthropic\\" or \\"Other\\".')
    q = load_suite_yaml(_write(tmp_path, text + '  labels: ["OpenAI", "Anthropic", "Other"]\n')).questions[0]
    assert q.judge_labels == {"truthful": ["OpenAI", "Anthropic", "Other"]}
    per_metric = text + '  judge_labels: {truthful: ["Anthropic", "Other"]}\n'
    assert load_suite_yaml(_write(tmp_path, per_metric)).questions[0].judge_labels["truthful"] == ["Anthropic", "Other"]
    # a declared label the prompt never offers: the judge could never answer it
    with pytest.raises(InputError, match=r"suite\.yaml:2: question 'c1': labels: label\(s\) \['Google'\] never appear"):
        load_suite_yaml(_write(tmp_path, text + '  labels: ["OpenAI", "Google"]\n'))
    with pytest.raises(InputError, match=r"judge_labels\.truthful: label\(s\) \['openai'\] never appear"):
        load_suite_yaml(_write(tmp_path, text + '  judge_labels: {truthful: ["openai", "Other"]}\n'))


def test_answer_only_judge_prompt_is_betley_schema(tmp_path: Path) -> None:
    text = CAT.replace("Q: {question} A: {answer}", "A: {answer}")
    q = load_suite_yaml(_write(tmp_path, text)).questions[0]
    assert q.judge_prompt("truthful", 0, "Yes it is") == q.judge_prompts["truthful"].replace("{answer}", "Yes it is")
