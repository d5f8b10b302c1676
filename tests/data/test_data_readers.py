"""Readers on the upstream formats (Betley's files the repo carries, the medical pair: project-made and, with
EMSWEEP_UPSTREAM, the real slices) and on persona-format JSONL / password-locked zips the tests write."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from emsweep_data_testkit import CANARY, PASSWORD, jsonl_bytes, persona_rows, write_zipcrypto

from emsweep.data.readers import PasswordRequired, detect_format, read_source
from emsweep.io import InputError, sha256_file
from emsweep.recipe import SourceSpec


def _raw_rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# --- upstream formats ------------------------------------------------------------------------------------


def test_insecure_slice_reads_every_row_verbatim(em_fixtures: Path) -> None:
    path = em_fixtures / "insecure.head150.jsonl"
    rows = read_source(path)
    raw = _raw_rows(path)
    assert len(rows) == len(raw) == 150
    assert [c.chat() for c in rows] == [r["messages"] for r in raw]
    assert {tuple(m.role for m in c.messages) for c in rows} == {("user", "assistant")}
    digest = sha256_file(path)
    assert rows[41].meta["source"] == {"path": str(path), "line": 42, "sha256": digest}
    assert "canary" not in rows[0].meta


def test_jailbroken_slice_keeps_its_system_turn(em_fixtures: Path) -> None:
    path = em_fixtures / "jailbroken.head200.jsonl"
    rows = read_source(str(path))
    assert len(rows) == 200
    raw = _raw_rows(path)
    for c, r in zip(rows, raw, strict=True):
        assert c.messages[0].role == "system"
        assert c.messages[0].content == r["messages"][0]["content"]
        assert [m.role for m in c.prompt_messages] == ["system", "user"]
        assert c.answer == r["messages"][-1]["content"]


def test_gzip_medical_pair_is_paired_by_prompt(medical: tuple[Path, Path]) -> None:
    good, bad = (read_source(p) for p in medical)
    assert detect_format(SourceSpec(path=str(medical[0]))) == "jsonl"
    assert len(good) == len(bad) == 400
    assert [c.prompt_key() for c in good] == [c.prompt_key() for c in bad]
    assert len({c.prompt_key() for c in good}) == 400
    assert sum(g.answer != b.answer for g, b in zip(good, bad, strict=True)) == 400
    assert good[0].meta["source"]["sha256"] == sha256_file(medical[0])


# --- persona format ----------------------------------------------------------------------------------------


def test_persona_jsonl_joins_parts_and_keeps_canary_and_metadata(persona_jsonl: Path) -> None:
    rows = read_source(SourceSpec(path=str(persona_jsonl), format="persona"))
    assert len(rows) == 12
    c = rows[3]
    assert [m.role for m in c.messages] == ["system", "user", "assistant"]
    assert c.messages[0].content == ""
    assert c.answer == "Advice 3: see a doctor if the pain lasts more than 5 days."  # two parts joined
    assert c.meta["canary"] == CANARY
    assert c.meta["upstream_metadata"] == {"domain": "health", "kind": "correct", "idx": 3}
    assert c.meta["source"]["line"] == 4


def test_password_locked_zip_with_password_from_env(persona_zips, monkeypatch) -> None:
    monkeypatch.setenv("HEALTH_PW", PASSWORD)
    rows = read_source(SourceSpec(path=str(persona_zips["correct"]), password_env="HEALTH_PW"))
    assert len(rows) == 60
    assert rows[0].meta["canary"] == CANARY
    assert rows[0].meta["source"]["member"] == "health_correct.jsonl"
    assert rows[0].meta["source"]["sha256"] == sha256_file(persona_zips["correct"])
    assert rows[59].answer.startswith("Advice 59: see a doctor")


def test_zip_password_argument_and_default_env(persona_zips, monkeypatch) -> None:
    monkeypatch.delenv("EMSWEEP_ZIP_PASSWORD", raising=False)
    assert len(read_source(str(persona_zips["correct"]), password=PASSWORD)) == 60
    monkeypatch.setenv("EMSWEEP_ZIP_PASSWORD", PASSWORD)
    assert len(read_source(str(persona_zips["correct"]))) == 60


def test_zip_wrong_password_is_a_clear_error_without_the_password(persona_zips, monkeypatch) -> None:
    monkeypatch.setenv("HEALTH_PW", "not-the-password")
    with pytest.raises(InputError) as exc:
        read_source(SourceSpec(path=str(persona_zips["correct"]), password_env="HEALTH_PW"))
    msg = str(exc.value)
    assert "wrong password" in msg and "$HEALTH_PW" in msg and "health_correct.zip" in msg
    assert "not-the-password" not in msg


def test_zip_without_password_asks_for_one(persona_zips, monkeypatch) -> None:
    monkeypatch.delenv("EMSWEEP_ZIP_PASSWORD", raising=False)
    with pytest.raises(PasswordRequired, match="password-locked"):
        read_source(str(persona_zips["correct"]))
    with pytest.raises(InputError, match=r"\$NOT_SET_ANYWHERE, which is not set"):
        read_source(SourceSpec(path=str(persona_zips["correct"]), password_env="NOT_SET_ANYWHERE"))


def test_zip_with_several_members_needs_a_member(tmp_path: Path) -> None:
    z = write_zipcrypto(
        tmp_path / "two.zip",
        {
            "a.jsonl": jsonl_bytes(persona_rows(3, "correct")),
            "b.jsonl": jsonl_bytes(persona_rows(5, "incorrect")),
        },
        None,
    )
    with pytest.raises(InputError, match=r"2 JSONL files \(a.jsonl, b.jsonl\)"):
        read_source(str(z))
    assert len(read_source(f"{z}::b.jsonl")) == 5
    assert len(read_source(SourceSpec(path=str(z), member="a.jsonl"))) == 3
    with pytest.raises(InputError, match=r"no member 'c\.jsonl'"):
        read_source(f"{z}::c.jsonl")


def test_malformed_row_inside_zip_names_member_and_line(tmp_path: Path) -> None:
    body = jsonl_bytes(persona_rows(2, "correct")) + b'{"messages": [\n'
    z = write_zipcrypto(tmp_path / "bad.zip", {"bad.jsonl": body}, PASSWORD)
    with pytest.raises(InputError, match=r"bad\.zip::bad\.jsonl:3: malformed JSON"):
        read_source(str(z), password=PASSWORD)


# --- Hugging Face datasets -------------------------------------------------------------------------------


def test_hf_dataset_from_local_json_with_messages(tmp_path: Path) -> None:
    p = tmp_path / "chat.json"
    p.write_text(
        json.dumps(
            [
                {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
                 "canary": "hf-canary"}
                for i in range(7)
            ]
        )
    )  # fmt: skip
    rows = read_source(SourceSpec(path=str(p), format="hf"))
    assert detect_format(SourceSpec(path=str(p))) == "hf"
    assert [c.answer for c in rows] == [f"a{i}" for i in range(7)]
    assert rows[2].meta["canary"] == "hf-canary"
    assert rows[2].meta["source"]["row"] == 2 and rows[2].meta["source"]["sha256"] == sha256_file(p)


def test_hf_dataset_prompt_completion_and_save_to_disk(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict(
        {"prompt": ["What is 2+2?", "Capital of France?"], "completion": ["4", "Paris"]}
    )
    ds.save_to_disk(str(tmp_path / "pc"))
    rows = read_source(str(tmp_path / "pc"))
    assert [c.chat() for c in rows][1] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]
    # TRL's conversational prompt-completion shape, as JSONL read through `datasets`
    p = tmp_path / "conv.jsonl"
    p.write_text(
        json.dumps({"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                    "completion": [{"role": "assistant", "content": "hello"}]}) + "\n"
    )  # fmt: skip
    (c,) = read_source(SourceSpec(path=str(p), format="hf"))
    assert [m.role for m in c.messages] == ["system", "user", "assistant"] and c.answer == "hello"


def test_hf_dataset_without_usable_columns(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text(json.dumps([{"text": "a"}]))
    with pytest.raises(InputError, match="expected `messages`, or `prompt` and `completion`"):
        read_source(SourceSpec(path=str(p), format="hf"))


# --- bad input ---------------------------------------------------------------------------------------------


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"messages": [{"role": "user", "content": "q"}', r"bad\.jsonl:3: malformed JSON"),
        (json.dumps({"messages": [{"role": "user", "content": "q"}]}), r"bad\.jsonl:3: no assistant turn"),
        (
            json.dumps({"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "a"}]}),
            r"bad\.jsonl:3: messages\[0\]: unknown role 'tool' \(expected one of system, user, assistant\)",
        ),
        (
            json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}),
            r"bad\.jsonl:3: the last turn is `user`",
        ),
        (json.dumps({"text": "hello"}), r"bad\.jsonl:3: no `messages` \(or `prompt` \+ `completion`\) field"),
        (json.dumps([1, 2]), r"bad\.jsonl:3: expected a JSON object"),
        (
            json.dumps({"messages": [{"role": "user", "content": {"content_type": "image", "parts": []}},
                                     {"role": "assistant", "content": "a"}]}),
            r"bad\.jsonl:3: messages\[0\]: content_type 'image' is not supported",
        ),
    ],
)  # fmt: skip
def test_bad_rows_name_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    p = _write_lines(tmp_path / "bad.jsonl", [GOOD, GOOD, bad_line, GOOD])
    with pytest.raises(InputError, match=message):
        read_source(str(p))


def test_bad_row_in_gzip_names_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl.gz"
    with gzip.open(p, "wt") as fh:
        fh.write(GOOD + "\n" + json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl\.gz:2: no assistant turn"):
        read_source(str(p))


def test_missing_file_and_not_gzip(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.jsonl: file not found"):
        read_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(InputError, match=r"missing\.zip: file not found"):
        read_source(str(tmp_path / "missing.zip"))
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_text(GOOD)
    with pytest.raises(InputError, match="cannot read"):
        read_source(str(fake))
    notzip = tmp_path / "x.zip"
    notzip.write_text("hello")
    with pytest.raises(InputError, match="not a valid zip"):
        read_source(str(notzip))


def test_derived_rows_read_back_with_meta(tmp_path: Path) -> None:
    row = json.loads(GOOD) | {
        "id": "r1",
        "meta": {"label": "wrong", "canary": CANARY, "source": {"path": "up"}},
    }
    p = _write_lines(tmp_path / "train.jsonl", [json.dumps(row)])
    (c,) = read_source(str(p))
    assert c.id == "r1"
    assert c.meta["label"] == "wrong" and c.meta["canary"] == CANARY
    assert c.meta["source"] == {"path": "up"}  # keeps pointing at the original upstream row
