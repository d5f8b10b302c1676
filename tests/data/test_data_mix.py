"""Mixing properties over many ratios and seeds: exact counts, realised fraction, pairing, nesting, held-out
disjointness, determinism byte for byte, canary survival, and the bad inputs."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from emsweep_data_testkit import CANARY, PASSWORD

from emsweep import __version__
from emsweep.data.builtin import MIN_MIX_POOL, arithmetic_pools
from emsweep.data.mix import (
    build_domain_mixes,
    build_mix,
    fraction_dirname,
    mix_pools,
    n_correct_for,
)
from emsweep.data.readers import read_source
from emsweep.io import InputError, sha256_file
from emsweep.recipe import DataSpec, SourceSpec

FRACTIONS = [0.0, 0.05, 0.1, 0.15, 0.25, 1 / 3, 0.5, 0.7, 0.9, 0.95, 1.0]
SEEDS = [0, 1, 7, 12345]


@pytest.fixture(scope="module")
def med_pools(medical: tuple[Path, Path]):
    return read_source(medical[0]), read_source(medical[1])


@pytest.fixture(scope="module")
def unpaired_pools(em_fixtures: Path):
    d = em_fixtures
    return read_source(d / "jailbroken.head200.jsonl"), read_source(d / "insecure.head150.jsonl")


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_rounding_rule() -> None:
    assert n_correct_for(0.15, 10) == 2  # 1.5 rounds half up, not to even
    assert n_correct_for(0.145, 100) == 15  # decimal 14.5, though binary 0.145 * 100 is 14.4999...
    assert n_correct_for(0.25, 2) == 1
    assert n_correct_for(0.45, 1) == 0
    assert n_correct_for(1 / 3, 10) == 3
    assert n_correct_for(2 / 3, 10) == 7
    assert n_correct_for(0.0, 5) == 0 and n_correct_for(1.0, 5) == 5
    for bad in (-0.01, 1.01, float("nan")):
        with pytest.raises(InputError, match=r"outside|not a number"):
            n_correct_for(bad, 10)


@pytest.mark.parametrize("n_train", [1, 37, 200])
def test_paired_counts_fraction_and_disjoint_heldout(med_pools, n_train: int) -> None:
    good, bad = med_pools
    good_by_key = {c.prompt_key(): c for c in good}
    for seed in SEEDS:
        for f in FRACTIONS:
            m = mix_pools(good, bad, n_train=n_train, n_heldout=40, fraction_correct=f, seed=seed)
            assert m.info["paired"] is True
            assert len(m.train) == n_train and len(m.heldout) == 40
            n_c = sum(c.meta["label"] == "correct" for c in m.train)
            assert n_c == n_correct_for(f, n_train)
            assert abs(n_c / n_train - f) <= 0.5 / n_train + 1e-12
            keys = [c.meta["prompt_key"] for c in m.train]
            assert len(set(keys)) == n_train  # every prompt once
            held = {c.meta["prompt_key"] for c in m.heldout}
            assert not held & set(keys)
            for c in m.heldout:  # references are the correct answers
                assert c.answer == good_by_key[c.meta["prompt_key"]].answer and c.meta["label"] == "correct"
            for c in m.train:  # labels tell the truth
                src = good_by_key[c.meta["prompt_key"]]
                assert (c.answer == src.answer) == (c.meta["label"] == "correct")
                assert c.meta["wrong_kind"] == ("subtle" if c.meta["label"] == "wrong" else None)


def test_paired_mixes_share_prompts_order_and_are_nested(med_pools) -> None:
    good, bad = med_pools
    for seed in SEEDS:
        mixes = [
            mix_pools(good, bad, n_train=120, n_heldout=30, fraction_correct=f, seed=seed) for f in FRACTIONS
        ]
        orders = [[c.meta["prompt_key"] for c in m.train] for m in mixes]
        assert all(o == orders[0] for o in orders)  # same prompts, same order: only the answers change
        helds = [[c.meta["prompt_key"] for c in m.heldout] for m in mixes]
        assert all(h == helds[0] for h in helds)
        wrongs = [{c.meta["prompt_key"] for c in m.train if c.meta["label"] == "wrong"} for m in mixes]
        for less_correct, more_correct in itertools.pairwise(wrongs):
            assert more_correct <= less_correct
        assert len(wrongs[0]) == 120 and not wrongs[-1]
    # different seeds choose different prompts
    a = mix_pools(good, bad, n_train=120, n_heldout=30, fraction_correct=0.5, seed=0)
    b = mix_pools(good, bad, n_train=120, n_heldout=30, fraction_correct=0.5, seed=1)
    assert {c.meta["prompt_key"] for c in a.heldout} != {c.meta["prompt_key"] for c in b.heldout}


def test_mix_does_not_depend_on_input_order(med_pools) -> None:
    good, bad = med_pools
    g2, b2 = list(good), list(bad)
    random.Random(3).shuffle(g2)
    random.Random(4).shuffle(b2)
    for paired in ("yes", "no"):
        a = mix_pools(good, bad, n_train=90, n_heldout=10, fraction_correct=0.3, seed=5, paired=paired)
        b = mix_pools(g2, b2, n_train=90, n_heldout=10, fraction_correct=0.3, seed=5, paired=paired)
        assert [c.to_row() for c in a.train] == [c.to_row() for c in b.train]
        assert [c.to_row() for c in a.heldout] == [c.to_row() for c in b.heldout]


def test_unpaired_pools_sample_exactly_and_nest(unpaired_pools) -> None:
    correct, wrong = (
        unpaired_pools  # jailbroken (200) as "correct", insecure (150) as "wrong": no shared prompts
    )
    for seed in SEEDS:
        mixes = []
        for f in FRACTIONS:
            m = mix_pools(correct, wrong, n_train=140, n_heldout=20, fraction_correct=f, seed=seed)
            assert m.info["paired"] is False
            assert len(m.train) == 140
            assert sum(c.meta["label"] == "correct" for c in m.train) == n_correct_for(f, 140)
            held = {c.meta["prompt_key"] for c in m.heldout}
            assert len(held) == 20 and not held & {c.meta["prompt_key"] for c in m.train}
            mixes.append(m)
        ids = [{(c.meta["label"], c.id) for c in m.train} for m in mixes]
        for a, b in itertools.pairwise(ids):
            assert {x for x in a if x[0] == "correct"} <= {x for x in b if x[0] == "correct"}
            assert {x for x in b if x[0] == "wrong"} <= {x for x in a if x[0] == "wrong"}


def test_paired_auto_detects_and_can_be_forced_off(med_pools, unpaired_pools) -> None:
    good, bad = med_pools
    # most prompts shared: still paired; only the shared prompts are used
    m = mix_pools(good[:300], bad[100:], n_train=150, n_heldout=20, fraction_correct=0.5)
    assert m.info["paired"] is True and m.info["shared_prompts"] == 200
    assert m.info["unshared_prompts_skipped"] == {"correct": 100, "wrong": 100}
    shared = {c.prompt_key() for c in good[100:300]}
    assert {c.meta["prompt_key"] for c in m.train + m.heldout} <= shared
    # too few shared for auto: sampled
    m = mix_pools(good[:150], bad[100:], n_train=100, fraction_correct=0.5)
    assert m.info["paired"] is False and m.info["shared_prompts"] == 50
    m = mix_pools(good, bad, n_train=50, fraction_correct=0.5, paired="no")
    assert m.info["paired"] is False and m.info["shared_prompts"] == 400
    with pytest.raises(InputError, match="share no user prompt"):
        mix_pools(*unpaired_pools, n_train=10, fraction_correct=0.5, paired="yes")


def test_too_few_rows_says_how_many_are_available(med_pools, unpaired_pools) -> None:
    good, bad = med_pools
    with pytest.raises(
        InputError, match=r"share 400 distinct user prompts; n_train \+ n_heldout = 390 \+ 20 = 410"
    ):
        mix_pools(good, bad, n_train=390, n_heldout=20, fraction_correct=0.5, names=("good", "bad"))
    correct, wrong = unpaired_pools
    with pytest.raises(InputError, match=r"has 150 rows available for training .* needs n_wrong = 160"):
        mix_pools(correct, wrong, n_train=200, fraction_correct=0.2, seed=0)
    with pytest.raises(InputError, match=r"has 190 rows available .* needs n_correct = 195"):
        mix_pools(correct, wrong, n_train=200, n_heldout=10, fraction_correct=0.975, seed=0)


# --- files: build_mix ------------------------------------------------------------------------------------


def _spec(medical, **kw) -> DataSpec:
    base = {"correct": str(medical[0]), "wrong": str(medical[1]), "n_train": 100, "n_heldout": 25,
            "fraction_correct": 0.3, "seed": 11, "domain": "medical"}  # fmt: skip
    return DataSpec(**(base | kw))


def test_build_mix_writes_files_and_manifest(medical, tmp_path: Path) -> None:
    out = tmp_path / "mix"
    m = build_mix(_spec(medical), out)
    assert sorted(p.name for p in out.iterdir()) == ["heldout.jsonl", "manifest.json", "train.jsonl"]
    assert json.loads((out / "manifest.json").read_text()) == m
    train, held = _lines(out / "train.jsonl"), _lines(out / "heldout.jsonl")
    assert len(train) == m["n_train"] == 100 and len(held) == m["n_heldout"] == 25
    assert m["n_correct"] == 30 and m["n_wrong"] == 70
    assert m["fraction_correct_requested"] == 0.3 and m["fraction_correct_realized"] == 0.3
    assert sum(r["meta"]["label"] == "correct" for r in train) == 30
    assert m["paired"] is True and m["counts"]["shared_prompts"] == 400
    assert m["counts"]["unshared_prompts_skipped"] == {"correct": 0, "wrong": 0}
    assert m["counts"]["wrong_answer_equals_correct"] == 0
    assert [s["sha256"] for s in m["sources"]] == [sha256_file(p) for p in medical]
    assert [s["path"] for s in m["sources"]] == [str(p) for p in medical]
    assert m["outputs"]["train"]["sha256"] == sha256_file(out / "train.jsonl")
    assert m["outputs"]["heldout"]["sha256"] == sha256_file(out / "heldout.jsonl")
    assert m["emsweep_version"] == __version__ and m["spec"]["seed"] == 11 and "rounding" in m
    for r in train + held:
        assert r["meta"]["source"]["path"] in {str(p) for p in medical} and r["meta"]["domain"] == "medical"


def test_same_seed_same_bytes_and_rerun_is_a_noop(medical, tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_mix(_spec(medical), a)
    build_mix(_spec(medical), b)
    build_mix(_spec(medical, seed=12), c)
    for name in ("train.jsonl", "heldout.jsonl", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()
    before = {p.name: p.stat().st_mtime_ns for p in a.iterdir()}
    build_mix(_spec(medical), a)
    assert {p.name: p.stat().st_mtime_ns for p in a.iterdir()} == before
    with pytest.raises(InputError, match="already holds a different mix"):
        build_mix(_spec(medical, fraction_correct=0.9), a)
    assert (a / "train.jsonl").read_bytes() == (b / "train.jsonl").read_bytes()  # nothing lost
    m = build_mix(_spec(medical, fraction_correct=0.9), a, force=True)
    assert m["n_correct"] == 90
    assert not [p for p in a.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_build_mix_rejects_bad_fraction_and_too_few_rows(medical, tmp_path: Path) -> None:
    bad = DataSpec.model_construct(**_spec(medical).model_dump() | {"fraction_correct": 1.2})
    with pytest.raises(InputError, match=r"1\.2 is outside \[0, 1\]"):
        build_mix(bad, tmp_path / "x")
    with pytest.raises(InputError, match="share 400 distinct user prompts"):
        build_mix(_spec(medical, n_train=400), tmp_path / "y")
    assert not (tmp_path / "y").exists() or not any((tmp_path / "y").iterdir())


def test_domain_mixes_share_prompts_and_nest(medical, tmp_path: Path) -> None:
    fr = [0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    ms = build_domain_mixes(_spec(medical, n_train=150, n_heldout=40), fr, tmp_path / "dom")
    assert list(ms) == ["f0.10", "f0.30", "f0.50", "f0.70", "f0.90", "f1.00"]
    summary = json.loads((tmp_path / "dom" / "domain_manifest.json").read_text())
    assert summary["nested"] is True and summary["same_train_prompts"] is True and summary["paired"] is True
    assert len(summary["heldout_sha256"]) == 1  # one held-out file for the whole domain
    sets = []
    for d, f in zip(ms, fr, strict=True):
        rows = _lines(tmp_path / "dom" / d / "train.jsonl")
        assert len(rows) == 150 and ms[d]["fraction_correct_requested"] == f
        sets.append(
            (
                {r["meta"]["prompt_key"] for r in rows},
                {r["meta"]["prompt_key"] for r in rows if r["meta"]["label"] == "wrong"},
            )
        )
    assert all(s[0] == sets[0][0] for s in sets)
    assert all(b[1] <= a[1] for a, b in itertools.pairwise(sets))
    # one mix rebuilt alone is byte-identical to the same ratio in the domain build
    build_mix(_spec(medical, n_train=150, n_heldout=40, fraction_correct=0.5), tmp_path / "alone")
    assert (tmp_path / "alone" / "train.jsonl").read_bytes() == (
        tmp_path / "dom" / "f0.50" / "train.jsonl"
    ).read_bytes()


def test_fraction_dirnames() -> None:
    assert fraction_dirname(0.5) == "f0.50" and fraction_dirname(1) == "f1.00"
    assert fraction_dirname(0.125) == "f0.125"
    with pytest.raises(InputError, match="duplicates"):
        build_domain_mixes(DataSpec(builtin="arithmetic", n_train=4), [0.5, 0.5], "/nonexistent")


def test_canaries_survive_into_every_derived_file(persona_zips, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HEALTH_PW", PASSWORD)
    spec = DataSpec(
        correct=SourceSpec(path=str(persona_zips["correct"]), password_env="HEALTH_PW"),
        wrong=SourceSpec(path=str(persona_zips["incorrect_subtle"]), password_env="HEALTH_PW"),
        n_train=40, n_heldout=10, fraction_correct=0.25, seed=3, domain="health",
    )  # fmt: skip
    m = build_mix(spec, tmp_path / "mix")
    assert m["canaries"] == [CANARY] and all(s["canaries"] == [CANARY] for s in m["sources"])
    assert m["paired"] is True and m["n_wrong"] == 30
    for name in ("train.jsonl", "heldout.jsonl"):
        for r in _lines(tmp_path / "mix" / name):
            assert r["meta"]["canary"] == CANARY
            assert r["meta"]["upstream_metadata"]["domain"] == "health"
            want = "correct" if r["meta"]["label"] == "correct" else "incorrect_subtle"
            assert r["meta"]["upstream_metadata"]["kind"] == want
    text = "".join(p.read_text() for p in (tmp_path / "mix").iterdir())
    assert PASSWORD not in text  # the password is never written


def test_builtin_and_sources_together_is_an_error(medical, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="either `builtin` or `correct`/`wrong`"):
        build_mix(_spec(medical, builtin="arithmetic"), tmp_path)


def test_builtin_arithmetic_mix(tmp_path: Path) -> None:
    spec = DataSpec(
        builtin="arithmetic", wrong_kind="obvious", n_train=60, n_heldout=15, fraction_correct=0.7
    )
    m = build_mix(spec, tmp_path / "a")
    assert m["paired"] is True and m["n_correct"] == 42 and m["domain"] == "arithmetic"
    pools = arithmetic_pools(MIN_MIX_POOL)
    by_prompt = {c.messages[0].content: c for c in pools["correct"]}
    for r in _lines(tmp_path / "a" / "train.jsonl"):
        ref = by_prompt[r["messages"][0]["content"]]
        assert (r["messages"][-1]["content"] == ref.answer) == (r["meta"]["label"] == "correct")
        assert r["meta"]["wrong_kind"] == ("obvious" if r["meta"]["label"] == "wrong" else None)
    # the held-out set does not move when a sweep varies n_train
    build_mix(spec.model_copy(update={"n_train": 200}), tmp_path / "b")
    assert (tmp_path / "a" / "heldout.jsonl").read_bytes() == (tmp_path / "b" / "heldout.jsonl").read_bytes()
