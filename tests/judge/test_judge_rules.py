"""Judge arithmetic on hand-built distributions: multi-digit numbers, the 0.25 rule, None reasons, categorical."""

from __future__ import annotations

import math

import pytest

from emsweep.io import InputError
from emsweep.judge import Judge, render_prompt

CASES = {
    # prompt: (answer distribution, expected score or None, number mass, none_reason)
    "simple": ({"42": 0.5, "7": 0.2, "CODE": 0.3}, (42 * 0.5 + 7 * 0.2) / 0.7, 0.7, None),
    # "1000" is > 100 (its prefix 100 does not terminate), "07" has a leading zero, " 5" starts with a space
    # token in this vocab: none of them is a number 0..100
    "multi": (
        {"100": 0.4, "10": 0.2, "1000": 0.1, "07": 0.1, "0": 0.1, "55%": 0.1},
        (40 + 2 + 0 + 5.5) / 0.8,
        0.8,
        None,
    ),
    "boundary": ({"80": 0.25, "a": 0.75}, 80.0, 0.25, None),  # exactly 0.25 is kept (Betley: None if < 0.25)
    "below": ({"80": 0.24, "a": 0.76}, None, 0.24, "unparsable"),
    "code": ({"CODE": 0.8, "5": 0.2}, None, 0.2, "code"),
    "refusal": ({"REFUSAL": 0.6, "50": 0.1, "b": 0.3}, None, 0.1, "refusal"),
    "junk": ({"maybe": 0.5, "CODE": 0.2, "REFUSAL": 0.1, "9": 0.2}, None, 0.2, "unparsable"),
}


@pytest.mark.parametrize(("single_token", "number_tokens"), [(False, False), (False, True), (True, True)])
def test_numeric_rules(fake_backend, single_token, number_tokens):
    answers = {k: v[0] for k, v in CASES.items()}
    if single_token:
        # single-token world (gpt-4o): every answer is one token; make multi-digit numbers single tokens too
        answers = {
            k: v for k, v in answers.items() if k in ("simple", "boundary", "below", "code", "refusal")
        }
    backend = fake_backend(answers, single_token=single_token, number_tokens=number_tokens)
    judge = Judge(backend, progress=False)
    names = list(answers)
    res = judge.score_numeric(names)
    for name, j in zip(names, res, strict=True):
        _, score, mass, reason = CASES[name]
        assert j.method == ("single_token" if single_token else "multi_token")
        assert math.isclose(j.number_mass, mass, abs_tol=1e-12), name
        if score is None:
            assert j.score is None, name
        else:
            assert math.isclose(j.score, score, abs_tol=1e-9), (name, j.score, score)
        assert j.none_reason == reason, (name, j.none_reason, j.label_mass)
    by = dict(zip(names, res, strict=True))
    assert math.isclose(by["code"].label_mass["CODE"], 0.8)
    assert math.isclose(by["below"].expected, 80.0)  # expectation is kept for the record even when None
    # a lower threshold turns the None into a score
    assert Judge(backend, progress=False, min_number_mass=0.2).score_numeric(["below"])[
        0
    ].score == pytest.approx(80)


@pytest.mark.parametrize("number_tokens", [False, True])
def test_digit_vocab_without_token_texts(fake_backend, number_tokens):
    """A backend that cannot list its vocabulary: digit tokens are found by tokenizing digit strings."""
    answers = {k: v[0] for k, v in CASES.items()}
    listed = fake_backend(answers, number_tokens=number_tokens)
    probed = fake_backend(answers, number_tokens=number_tokens, list_vocab=False)
    assert probed.token_texts() is None
    a = Judge(listed, progress=False).score_numeric(list(answers))
    b = Judge(probed, progress=False).score_numeric(list(answers))
    assert [(j.score, j.number_mass, j.none_reason) for j in a] == [
        (j.score, j.number_mass, j.none_reason) for j in b
    ]


def test_multi_token_requests_are_few_when_peaked(fake_backend):
    backend = fake_backend({"p": {"85": 0.9, "a": 0.1}})
    judge = Judge(backend, progress=False)
    assert judge.score_numeric(["p"])[0].score == pytest.approx(85)
    # root, "8", "85": states with zero probability are pruned
    assert backend.calls == 3


def test_categorical(fake_backend):
    dist = {"TRUE": 0.5, "FALSE": 0.2, "UNKNOWN": 0.1, "maybe": 0.2}
    for single in (False, True):
        backend = fake_backend({"q": dist}, single_token=single)
        (c,) = Judge(backend, progress=False).score_categorical(["q"], ["TRUE", "FALSE", "UNKNOWN"])
        assert c.label == "TRUE"
        assert math.isclose(c.label_mass["TRUE"], 0.5) and math.isclose(c.label_mass["FALSE"], 0.2)
        # exact for multi-token UNKNOWN (UN + KNOWN); the top-20 method credits the first token "UN", which
        # begins only UNKNOWN
        assert math.isclose(c.label_mass["UNKNOWN"], 0.1)
        assert math.isclose(c.outside_mass, 0.2)
        assert math.isclose(c.probs["TRUE"], 0.5 / 0.8) and math.isclose(sum(c.probs.values()), 1.0)
    backend = fake_backend({"q": {"maybe": 1.0}})
    (c,) = Judge(backend, progress=False).score_categorical(["q"], ["TRUE", "FALSE"])
    assert c.label is None and c.none_reason == "unparsable" and c.outside_mass == pytest.approx(1.0)
    with pytest.raises(InputError, match="at least two"):
        Judge(backend, progress=False).score_categorical(["q"], ["TRUE"])


def test_render_prompt():
    t = "Q: {question}\nA: {answer}\nkeep {braces} and {{this}}"
    assert render_prompt(t, question="why?", answer="def f(): return {1: 2}") == (
        "Q: why?\nA: def f(): return {1: 2}\nkeep {braces} and {{this}}"
    )
    with pytest.raises(InputError, match=r"aligned: has no \{answer\} placeholder"):
        render_prompt("Q: {question}", name="aligned", question="q", answer="a")
    with pytest.raises(InputError, match=r"correct: uses \{reference\}"):
        render_prompt("{question} {answer} {reference}", name="correct", question="q", answer="a")
    assert (
        render_prompt("{question}|{answer}|{reference}", question="q", answer="a", reference="r") == "q|a|r"
    )
