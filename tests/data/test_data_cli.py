"""`emsweep data ...` through typer's CliRunner against the real top-level app."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from emsweep_data_testkit import CANARY, PASSWORD
from typer.testing import CliRunner

from emsweep.cli import app
from emsweep.io import InputError

runner = CliRunner()


def _run(*args: str, **kw):
    return runner.invoke(app, list(args), **kw)


def _wrong_keys(d: Path) -> set[str]:
    rows = [json.loads(x) for x in (d / "train.jsonl").read_text().splitlines()]
    return {r["meta"]["prompt_key"] for r in rows if r["meta"]["label"] == "wrong"}


def _all_keys(d: Path) -> set[str]:
    return {json.loads(x)["meta"]["prompt_key"] for x in (d / "train.jsonl").read_text().splitlines()}


def test_mix_on_the_medical_pair_writes_three_files_shared_and_nested(medical, tmp_path: Path) -> None:
    outs = {}
    for f in ("0.2", "0.6", "0.9"):
        out = tmp_path / f"f{f}"
        r = _run(
            "data", "mix", "--correct", str(medical[0]), "--wrong", str(medical[1]),
            "--fraction-correct", f, "--n", "120", "--n-heldout", "30", "--seed", "4", "--out", str(out),
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        assert sorted(p.name for p in out.iterdir()) == ["heldout.jsonl", "manifest.json", "train.jsonl"]
        m = json.loads((out / "manifest.json").read_text())
        assert m["n_train"] == 120 and m["n_heldout"] == 30
        assert m["fraction_correct_realized"] == round(float(f) * 120) / 120
        assert all(len(s["sha256"]) == 64 for s in m["sources"])
        assert "120 train rows" in r.output and "paired=True" in r.output
        outs[f] = out
    assert _all_keys(outs["0.2"]) == _all_keys(outs["0.6"]) == _all_keys(outs["0.9"])
    assert _wrong_keys(outs["0.9"]) < _wrong_keys(outs["0.6"]) < _wrong_keys(outs["0.2"])


def test_mix_domain_builds_every_ratio(medical, tmp_path: Path) -> None:
    r = _run(
        "data", "mix-domain", "--correct", str(medical[0]), "--wrong", str(medical[1]),
        "--fractions", "0.1,0.5,1.0", "--n", "60", "--n-heldout", "10", "--out", str(tmp_path / "dom"),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "dom").iterdir()) == [
        "domain_manifest.json",
        "f0.10",
        "f0.50",
        "f1.00",
    ]
    assert "nested: True" in r.output
    assert json.loads((tmp_path / "dom" / "f0.50" / "manifest.json").read_text())["n_correct"] == 30


def test_builtin_then_mix_from_its_files_and_inspect(tmp_path: Path) -> None:
    r = _run("data", "builtin", "arithmetic", "--out", str(tmp_path / "ar"), "--n", "50")
    assert r.exit_code == 0, r.output
    assert "wrong_subtle.jsonl: 50 rows" in r.output
    r = _run(
        "data", "mix", "--correct", str(tmp_path / "ar" / "correct.jsonl"),
        "--wrong", str(tmp_path / "ar" / "wrong_obvious.jsonl"), "--wrong-kind", "obvious",
        "-f", "0.25", "--n", "40", "--n-heldout", "10", "--out", str(tmp_path / "mix"),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = _run("data", "inspect", str(tmp_path / "mix" / "train.jsonl"))
    assert r.exit_code == 0, r.output
    assert "40 rows, 40 distinct prompts" in r.output
    assert "correct 10 (25.0%)" in r.output and "wrong 30 (75.0%)" in r.output
    assert "obvious ×30" in r.output and "user/assistant ×40" in r.output
    r = _run("data", "inspect", str(tmp_path / "mix" / "heldout.jsonl"), "--json")
    s = json.loads(r.output)
    assert s["rows"] == 10 and s["labels"] == {"correct": 10}
    r = _run("data", "inspect", str(tmp_path / "mix"))
    assert r.exit_code == 0, r.output
    assert "mix of 40 train rows, fraction correct 0.25" in r.output
    assert (
        "train (matches manifest): 40 rows" in r.output and "heldout (matches manifest): 10 rows" in r.output
    )
    with open(tmp_path / "mix" / "train.jsonl", "a") as fh:  # tampered after the manifest was written
        fh.write((tmp_path / "mix" / "heldout.jsonl").read_text().splitlines()[0] + "\n")
    r = _run("data", "inspect", str(tmp_path / "mix"))
    assert "train (DOES NOT match manifest sha256): 41 rows" in r.output


def test_mix_builtin_directly(tmp_path: Path) -> None:
    r = _run("data", "mix", "--builtin", "arithmetic", "-f", "0.5", "--n", "20", "--out", str(tmp_path / "b"))
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["domain"] == "arithmetic"


def test_zip_password_from_env_flag_and_hidden_prompt(persona_zips, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("EMSWEEP_ZIP_PASSWORD", raising=False)
    monkeypatch.setenv("HEALTH_PW", PASSWORD)
    args = ["data", "mix", "--correct", str(persona_zips["correct"]), "--wrong", str(persona_zips["incorrect_subtle"]),
            "-f", "0.5", "--n", "30", "--n-heldout", "5"]  # fmt: skip
    r = _run(*args, "--out", str(tmp_path / "a"), "--password-env", "HEALTH_PW")
    assert r.exit_code == 0, r.output
    assert CANARY in r.output  # "canaries kept"
    # no variable: prompted for, input hidden, never echoed or written
    r = _run(*args, "--out", str(tmp_path / "b"), input=PASSWORD + "\n")
    assert r.exit_code == 0, r.output
    assert "Zip password" in r.output and PASSWORD not in r.output
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    assert PASSWORD not in (tmp_path / "b" / "manifest.json").read_text()
    r = _run("data", "inspect", str(persona_zips["correct"]), "--password-env", "HEALTH_PW")
    assert r.exit_code == 0 and f"canary: {CANARY} ×60 (0 rows without)" in r.output


def test_no_password_and_no_terminal_is_a_clear_error(persona_zips, monkeypatch) -> None:
    monkeypatch.delenv("EMSWEEP_ZIP_PASSWORD", raising=False)
    r = _run("data", "inspect", str(persona_zips["correct"]), input="")  # stdin closed, as in a batch job
    assert isinstance(r.exception, InputError) and "password-locked" in str(r.exception)
    assert "--password-env" in str(r.exception)


def test_wrong_password_via_cli(persona_zips, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HEALTH_PW", "nope-nope")
    r = _run("data", "inspect", str(persona_zips["correct"]), "--password-env", "HEALTH_PW")
    assert isinstance(r.exception, InputError) and "wrong password" in str(r.exception)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-f", "1.5", "--n", "10"], r"--fraction-correct: 1.5 is outside \[0, 1\]"),
        (["-f", "0.5", "--n", "500"], r"share 400 distinct user prompts"),
        # any kind name is allowed (it names a file's kind), but it must be a plain word
        (["-f", "0.5", "--n", "10", "--wrong-kind", "two words"], r"command line: wrong_kind: String should"),
    ],
)
def test_bad_input_messages(medical, tmp_path: Path, extra: list[str], message: str) -> None:
    r = _run(
        "data",
        "mix",
        "--correct",
        str(medical[0]),
        "--wrong",
        str(medical[1]),
        "--out",
        str(tmp_path),
        *extra,
    )
    assert isinstance(r.exception, InputError), r.output
    assert re.search(message, str(r.exception))


def test_missing_source_via_main_exits_2_with_message(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "emsweep", "data", "mix", "--correct", str(tmp_path / "none.jsonl"),
         "--wrong", str(tmp_path / "none.jsonl"), "-f", "0.5", "--n", "3", "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 2 and "none.jsonl: file not found" in p.stderr


@pytest.mark.parametrize("cmd", [["mix"], ["mix-domain"], ["inspect"], ["builtin"]])
def test_help_has_examples(cmd: list[str]) -> None:
    r = _run("data", *cmd, "--help")
    assert r.exit_code == 0 and "Examples" in r.output and "emsweep data" in r.output
