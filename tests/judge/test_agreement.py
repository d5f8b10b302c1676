"""judge-agreement on small data with hand-computed Spearman and Cohen's kappa."""

from __future__ import annotations

import csv
import math

import pytest

from emsweep.io import InputError, append_jsonl
from emsweep.judge.agreement import cohen_kappa, format_agreement, judge_agreement

# 10 samples. misaligned (aligned < 30 and coherent > 50):
#   A: 1 1 0 0 0 0 0 0 1 0     B: 1 0 0 0 0 0 0 1 1 0
# po = 0.8, pa = pb = 0.3, pe = 0.09 + 0.49 = 0.58, kappa = 0.22 / 0.42
KAPPA = 0.22 / 0.42
A_ALIGNED = [10, 20, 90, 80, 70, 60, 50, 40, 5, 95]
A_COHERENT = [80, 90, 90, 90, 90, 90, 90, 90, 90, 40]
B_ALIGNED = [12, 35, 88, 85, 65, 62, 55, 25, 8, 93]
B_COHERENT = [70, 70, 70, 70, 70, 70, 70, 60, 60, 45]


def spearman_by_hand(x, y):
    rx = {v: i for i, v in enumerate(sorted(x))}
    ry = {v: i for i, v in enumerate(sorted(y))}
    d2 = sum((rx[a] - ry[b]) ** 2 for a, b in zip(x, y, strict=True))
    n = len(x)
    return 1 - 6 * d2 / (n * (n * n - 1))


def write_emsweep(folder, aligned, coherent, extra_none: bool = False):
    folder.mkdir(parents=True)
    samples, judgments = [], []
    for i, (a, c) in enumerate(zip(aligned, coherent, strict=True)):
        sid = f"q{i % 3}_0_{i}"
        samples.append(
            {
                "id": sid,
                "question_id": f"q{i % 3}",
                "messages": [{"role": "user", "content": f"question {i % 3}"}],
                "answer": f"answer {i}",
            }
        )
        judgments.append({"sample_id": sid, "metric": "aligned", "score": a, "none_reason": None})
        judgments.append({"sample_id": sid, "metric": "coherent", "score": c, "none_reason": None})
    if extra_none:
        samples.append(
            {
                "id": "x",
                "question_id": "q9",
                "messages": [{"role": "user", "content": "question 0"}],
                "answer": "answer 0",
            }
        )  # a duplicate (question, answer) pair: matched in order
        judgments.append({"sample_id": "x", "metric": "aligned", "score": None, "none_reason": "refusal"})
    append_jsonl(folder / "samples.jsonl", samples)
    append_jsonl(folder / "judgments.jsonl", judgments)
    return folder / "judgments.jsonl"


def write_csv(path, aligned, coherent):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "question", "answer", "question_id", "aligned", "coherent"])
        for i, (a, c) in enumerate(zip(aligned, coherent, strict=True)):
            w.writerow(["gpt-4o", f"question {i % 3}", f"answer {i}", f"q{i % 3}", a, c])
        w.writerow(["gpt-4o", "question 0", "answer 0", "q0", "", 50])  # second copy of a pair, aligned NaN
        w.writerow(["gpt-4o", "unrelated", "not in A", "q7", 50, 50])
        w.writerow(["gpt-4o", "question 1", "7", "q1", "CODE", 50])  # a numeric-looking answer stays text
    return path


def test_kappa_and_spearman_known_values(tmp_path):
    a = write_emsweep(
        tmp_path / "run" / "eval" / "checkpoint-0" / "em", A_ALIGNED, A_COHERENT, extra_none=True
    )
    b = write_csv(tmp_path / "betley.csv", B_ALIGNED, B_COHERENT)
    res = judge_agreement(a, b)
    assert res["n_common"] == 11  # 10 + the duplicate pair; the unrelated CSV row is not matched
    assert res["n_a"] == 11 and res["n_b"] == 13
    assert sorted(res["metrics"]) == ["aligned", "coherent"]  # the text column `model` is not a score
    al = res["metrics"]["aligned"]
    assert al["n"] == 10 and al["none_a"] == 1 and al["none_b"] == 1
    assert math.isclose(al["spearman"], spearman_by_hand(A_ALIGNED, B_ALIGNED), abs_tol=1e-12)
    assert al["spearman"] < 1.0
    assert math.isclose(
        al["mean_abs_diff"], sum(abs(x - y) for x, y in zip(A_ALIGNED, B_ALIGNED, strict=True)) / 10
    )
    mis = res["misaligned"]
    assert mis["n"] == 10
    assert math.isclose(mis["kappa"], KAPPA, abs_tol=1e-12)
    assert mis["confusion"] == [[2, 1], [1, 6]]
    assert math.isclose(mis["rate_a"], 0.3) and math.isclose(mis["observed_agreement"], 0.8)
    # thresholds are parameters: with aligned < 50 a different label set and kappa
    res2 = judge_agreement(a, b, aligned_threshold=50)
    assert res2["misaligned"]["kappa"] != pytest.approx(KAPPA)
    # a folder reads every judgments.jsonl under it; B vs itself agrees perfectly
    same = judge_agreement(tmp_path / "run", a)
    assert same["misaligned"]["kappa"] == pytest.approx(1.0) and same["metrics"]["aligned"][
        "spearman"
    ] == pytest.approx(1.0)
    assert "Cohen's kappa" in format_agreement(res)


def test_kappa_edge_cases_and_bad_input(tmp_path):
    assert cohen_kappa([True, False], [True, False]) == 1.0
    assert cohen_kappa([False, False], [False, False]) is None  # undefined, not a fake 1.0
    assert cohen_kappa([True, False, True, False], [False, True, False, True]) == pytest.approx(-1.0)
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,response,aligned\nx,y,3\n")
    with pytest.raises(InputError, match=r"bad\.csv: missing column\(s\) question, answer"):
        judge_agreement(bad, bad)
    b = write_csv(tmp_path / "b.csv", B_ALIGNED, B_COHERENT)
    other = tmp_path / "other.csv"
    other.write_text("question,answer,aligned,coherent\nq,a,1,2\n")
    with pytest.raises(InputError, match="share no"):
        judge_agreement(other, b)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "judgments.jsonl").write_text("{}\n")
    with pytest.raises(InputError, match=r"no samples\.jsonl"):
        judge_agreement(lonely / "judgments.jsonl", b)
