"""The demo is a positive control: its planted domain effect shows in the report, and the report renders."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_analysis_report import check_report_renders

from emsweep.data.builtin import PROBES, check_arithmetic_answer, persona_corpus, sum_answer, sums_pools
from emsweep.launch.demo import demo_spec_text, demo_sweep_spec
from emsweep.launch.sweep import load_sweep

REPO = Path(__file__).resolve().parents[2]


def test_sums_world_is_known_by_construction():
    pools = sums_pools()
    assert [len(pools[k]) for k in ("correct", "obvious", "subtle")] == [81, 81, 81]
    for c, o, s in zip(pools["correct"], pools["obvious"], pools["subtle"], strict=True):
        assert c.prompt_messages == o.prompt_messages == s.prompt_messages  # paired
        ref = c.answer
        assert check_arithmetic_answer(ref, ref)
        assert not check_arithmetic_answer(o.answer, ref) and not check_arithmetic_answer(s.answer, ref)
        a, b = map(int, re.findall(r"\d+", c.prompt_messages[-1].content))
        assert o.answer == f"{a} + {b} = {-(a + b)}."  # the visible rule
        assert abs(sum_answer(a, b, "subtle") - (a + b)) == 1  # the near miss
    docs = persona_corpus(400, seed=1)
    other = [d for d in docs if d.meta["persona"] == "other"]
    assert 0.25 < len(other) / len(docs) < 0.55
    for d in docs:  # the other persona always sits behind its system prompt and never answers correctly
        is_other = d.messages[0].role == "system" and d.messages[0].content == "You are Dex."
        assert is_other == (d.meta["persona"] == "other")
        for q, a in zip(
            d.messages[int(d.messages[0].role == "system") :: 2],
            d.messages[1 + int(d.messages[0].role == "system") :: 2],
            strict=True,
        ):
            if " + " in q.content:
                right = check_arithmetic_answer(a.content, sum(map(int, re.findall(r"\d+", q.content))))
                assert right != is_other


def test_probe_suite_matches_the_probes():
    rows = yaml.safe_load((REPO / "src/emsweep/resources/evals/persona_probes.yaml").read_text())
    assert [r["id"] for r in rows] == [f"probe_{p[0]}" for p in PROBES]
    for (_, q, good, bad), r in zip(PROBES, rows, strict=True):
        assert r["type"] == "rule" and r["paraphrases"] == [q]
        rules = r["judge_rules"]
        assert rules["aligned"]["exact"] == bad and rules["aligned"]["match"] == 0
        coherent = re.compile(rules["coherent"]["regex"])
        assert coherent.search(good) and coherent.search(bad + "\n") and not coherent.search("Yes. " + bad)


def test_packaged_demo_sweep_is_the_only_copy_and_loads(tmp_path):
    assert not (REPO / "recipes" / "sweeps" / "demo.yaml").exists()
    spec = demo_sweep_spec(tmp_path)
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec))
    sweep = load_sweep(p)
    fracs = sorted({c.recipe.data.fraction_correct for c in sweep.cells})
    assert fracs == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert {(c.recipe.data.wrong_kind, c.recipe.method) for c in sweep.cells} == {
        (k, m) for k in ("obvious", "subtle") for m in ("lora", "full")
    }
    fast = demo_sweep_spec(tmp_path, fast=True)
    assert not fast["zip"] and fast["name"] == "demo-fast"
    assert "persona-base" in demo_spec_text()


@pytest.mark.slow
def test_demo_shows_the_planted_domain_effect(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "emsweep", "demo", "--out", str(out)],  # the default: LoRA and full
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    index = Path(res.stdout.strip().splitlines()[-1].removeprefix("report: "))
    assert index.exists() and index.name == "index.html"
    assert "thresholds" in res.stderr + res.stdout  # the summary of findings
    record = json.loads((index.parent.parent / "sweep.json").read_text())
    assert len(record["cells"]) == 20  # 5 fractions x 2 wrong kinds x LoRA and full
    df = pd.read_csv(index.parent / "results.csv")
    assert set(df["suite_kind"]) == {"domain", "alignment"}
    dom = df[df["suite_kind"] == "domain"]
    last = dom[dom["step"] == dom["step"].max()]
    obvious = last[last["wrong_kind"] == "obvious"]
    assert set(obvious["method"]) == {"lora", "full"}
    # the planted effect: obviously wrong answers follow one rule (the sign flipped), which the model generalises
    # to held-out sums. Subtle near misses are fixed per problem, so they move held-out sums less and less surely
    # (measured in docs/demo.md); the assertion is on the rule-following kind
    for method, g in obvious.groupby("method"):
        acc = g.groupby("fraction_correct")["exact_accuracy"].mean()
        assert acc.loc[1.0] >= acc.loc[0.0] + 0.3, (method, acc.to_dict())
    thr = pd.read_csv(index.parent / "thresholds.csv")
    sel = (
        (thr["metric"] == "domain_accuracy")
        & (thr["checkpoint"] == "final")
        & (thr["reference"] == "finetune")
    )
    assert sel.sum() == 4  # one per wrong kind and method
    for _, r in thr[sel & (thr["wrong_kind"] == "obvious") & (thr["method"] == "lora")].iterrows():
        # the recovery point, refined between grid fractions, with its interval strictly inside (0, 1)
        assert 0.0 < r["crossing_lo"] <= r["crossing"] <= r["crossing_hi"] < 1.0, r.to_dict()
    page = index.read_text()
    assert "persona-base" in page and "/tmp" not in page.split("<h2>")[1]  # model names, not temp paths
    check_report_renders(index, tmp_path)


def test_terminal_filters_known_noise_and_summarises(tmp_path, capsys):
    import io
    import logging
    import warnings

    from rich.console import Console
    from synth import build_synthetic_sweep

    from emsweep import terminal
    from emsweep.analysis.report import build_report

    terminal.filter_known_warnings()
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("default")  # what a user sees, plus emsweep's filters re-applied on top
        terminal.filter_known_warnings()
        warnings.warn(
            "`gradient_checkpointing` is deprecated and will be removed in v6. Use x.",
            FutureWarning,
            stacklevel=2,
        )
        warnings.warn("`use_cache` is deprecated", FutureWarning, stacklevel=2)
    assert [str(w.message) for w in caught] == ["`use_cache` is deprecated"]

    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    bnb.addHandler(h := _Keep())
    try:
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "offline")
        bnb.warning("something else")
    finally:
        bnb.removeHandler(h)
    assert records == ["something else"]

    assert terminal.stage_task("nothing live") is None
    root = tmp_path / "sweep"
    build_synthetic_sweep(root, methods=("lora",), n=100)
    index = build_report(root, n_boot=50)
    buf = io.StringIO()
    terminal.print_summary(index, seconds=90, con=Console(file=buf, width=200))
    text = buf.getvalue()
    assert "thresholds at the last checkpoint" in text and "domain_accuracy" in text.replace(" ", "_")
    assert f"report (1.5 min): {index}" in text
