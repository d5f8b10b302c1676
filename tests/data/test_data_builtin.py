"""The builtin arithmetic domain: deterministic paired pools, wrong kinds that are what they claim, the checker."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from emsweep.data.builtin import (
    answer_checker,
    arithmetic_pools,
    arithmetic_problems,
    check_arithmetic_answer,
    extract_final_number,
    write_builtin,
)
from emsweep.data.readers import read_source
from emsweep.io import InputError, sha256_file

_EQ = re.compile(r"^What is (\d+) ([+\-*]) (\d+)\?$")


def _truth(prompt: str) -> int:
    a, op, b = _EQ.match(prompt).groups()
    a, b = int(a), int(b)
    return a + b if op == "+" else a - b if op == "-" else a * b


def test_pools_are_paired_distinct_and_deterministic() -> None:
    pools = arithmetic_pools(300, seed=4)
    prompts = [c.messages[0].content for c in pools["correct"]]
    assert len(set(prompts)) == 300
    for kind in ("obvious", "subtle"):
        assert [c.messages[0].content for c in pools[kind]] == prompts
    assert arithmetic_pools(300, seed=4)["subtle"] == pools["subtle"]
    assert arithmetic_problems(120, seed=4) == arithmetic_problems(300, seed=4)[:120]  # prefix-stable
    assert arithmetic_problems(50, seed=5) != arithmetic_problems(50, seed=4)
    assert {op for _, op, _ in arithmetic_problems(300)} == {"+", "-", "*"}


def test_answers_are_right_or_wrong_by_the_promised_amount() -> None:
    pools = arithmetic_pools(400, seed=1)
    for c, s, o in zip(pools["correct"], pools["subtle"], pools["obvious"], strict=True):
        truth = _truth(c.messages[0].content)
        assert c.answer == f"{c.messages[0].content[8:-1]} = {truth}."
        assert extract_final_number(c.answer) == truth and c.meta["reference_value"] == truth
        sub, obv = extract_final_number(s.answer), extract_final_number(o.answer)
        assert sub != truth and abs(sub - truth) <= 10
        assert abs(obv - truth) >= max(2000, 19 * abs(truth))
        assert not check_arithmetic_answer(s.answer, c.answer)
        assert not check_arithmetic_answer(o.answer, c.answer)
        assert check_arithmetic_answer(c.answer, c.answer)


@pytest.mark.parametrize(
    ("answer", "ok"),
    [
        ("37 + 48 = 85.", True),
        ("The answer is 85", True),
        ("37 + 48 = 85.0", True),
        ("37 + 48 equals 84, no wait, = 85!", True),
        ("37 + 48 = 86.", False),
        ("37 + 48 = 850", False),
        ("I don't know", False),
        ("", False),
    ],
)
def test_checker(answer: str, ok: bool) -> None:
    assert check_arithmetic_answer(answer, "37 + 48 = 85.") is ok
    assert check_arithmetic_answer(answer, 85) is ok


def test_checker_negatives_and_thousands() -> None:
    assert check_arithmetic_answer("12 - 40 = -28.", "12 - 40 = -28.")
    assert not check_arithmetic_answer("12 - 40 = 28.", "12 - 40 = -28.")
    assert check_arithmetic_answer("67 * 45 = 3,015.", "67 * 45 = 3015.")
    with pytest.raises(InputError, match="holds no number"):
        check_arithmetic_answer("5", "no number here")
    assert answer_checker("arithmetic") is check_arithmetic_answer and answer_checker("medical") is None


def test_write_builtin_files_read_back_as_paired_pools(tmp_path: Path) -> None:
    m = write_builtin("arithmetic", tmp_path / "arith", n=80, seed=2)
    files = {k: tmp_path / "arith" / o["path"] for k, o in m["outputs"].items()}
    assert {p.name for p in files.values()} == {"correct.jsonl", "wrong_obvious.jsonl", "wrong_subtle.jsonl"}
    assert all(m["outputs"][k]["sha256"] == sha256_file(p) for k, p in files.items())
    correct, subtle = read_source(files["correct"]), read_source(files["subtle"])
    assert len(correct) == len(subtle) == 80
    assert [c.prompt_key() for c in correct] == [c.prompt_key() for c in subtle]
    assert json.loads((tmp_path / "arith" / "manifest.json").read_text())["seed"] == 2
    with pytest.raises(InputError, match="unknown builtin dataset 'algebra'"):
        write_builtin("algebra", tmp_path / "x")
