"""Judge identity: a judge is what its files contain, not where it sits; the cache follows the identity."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from emsweep.io import InputError
from emsweep.judge import JudgeCache, LogprobJudge, identity
from emsweep.judge.identity import MEMO_NAME, model_fingerprint

PROMPTS = [f"Rate answer {i} from 0 to 100." for i in range(3)]


def _judge(path: Path, cache: JudgeCache) -> LogprobJudge:
    from emsweep.generate.hf import HFBackend

    # max_pruned_mass: a random tiny judge spreads its mass evenly; skipping unlikely digit prefixes keeps it fast
    return LogprobJudge(HFBackend(str(path)), cache=cache, progress=False, max_pruned_mass=0.009)


def test_cache_follows_the_judge_not_its_path(tmp_path: Path) -> None:
    from emsweep.train.model_init import init_model

    judge_dir = tmp_path / "judge"
    init_model("tiny", judge_dir, seed=0)
    cache = JudgeCache(tmp_path / "cache.sqlite")
    first = _judge(judge_dir, cache)
    scores = [j.expected for j in first.score_numeric(PROMPTS)]
    first.close()
    assert (cache.hits, cache.misses) == (0, 3)
    fp0 = first.identity.fingerprint
    assert first.identity.model_key == f"sha256:{fp0}" and first.identity.model == str(judge_dir)

    # the same judge copied to another path: every judgment is a hit, with the same values
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(judge_dir, copy)
    c2 = JudgeCache(tmp_path / "cache.sqlite")
    moved = _judge(copy, c2)
    again = moved.score_numeric(PROMPTS)
    moved.close()
    assert (c2.hits, c2.misses) == (3, 0) and [j.expected for j in again] == scores
    assert moved.identity.id == first.identity.id and moved.identity.model != first.identity.model

    # a different judge (other seed) at the SAME path: no hit at all
    init_model("tiny", judge_dir, seed=1, overwrite=True)
    c3 = JudgeCache(tmp_path / "cache.sqlite")
    other = _judge(judge_dir, c3)
    fresh = other.score_numeric(PROMPTS)
    other.close()
    assert (c3.hits, c3.misses) == (0, 3)
    assert other.identity.fingerprint != fp0 and other.identity.id != first.identity.id
    assert [j.expected for j in fresh] != scores


def _fake_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights" * 1000)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "tokenizer.json").write_text('{"t": 1}')
    (folder / "README.md").write_text("not part of the identity")
    return folder


def test_fingerprint_is_remembered_and_follows_contents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _fake_model(tmp_path / "m")
    reads: list[str] = []
    real = identity._sha256_file
    monkeypatch.setattr(identity, "_sha256_file", lambda p: reads.append(p.name) or real(p))
    fp = model_fingerprint(m)
    assert sorted(reads) == ["config.json", "model.safetensors", "tokenizer.json"] and (m / MEMO_NAME).exists()
    reads.clear()
    assert model_fingerprint(m) == fp and reads == []  # remembered by size and mtime: nothing re-read
    (m / "README.md").write_text("edited")
    assert model_fingerprint(m) == fp  # not a weights/config/tokenizer file
    (m / "config.json").write_text('{"a": 2}')
    assert model_fingerprint(m) != fp and reads == ["config.json"]


def test_fingerprint_memo_goes_to_the_user_cache_when_the_folder_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = _fake_model(tmp_path / "ro")
    monkeypatch.setenv("EMSWEEP_CACHE_DIR", str(tmp_path / "usercache"))
    real_write = identity.atomic_write_json

    def write(path, data):
        if Path(path).parent == m:
            raise PermissionError(13, "Permission denied", str(path))
        return real_write(path, data)

    monkeypatch.setattr(identity, "atomic_write_json", write)
    fp = model_fingerprint(m)
    assert not (m / MEMO_NAME).exists() and len(list((tmp_path / "usercache" / "fingerprints").iterdir())) == 1
    reads: list[str] = []
    monkeypatch.setattr(identity, "_sha256_file", lambda p: reads.append(p.name) or "x")
    assert model_fingerprint(m) == fp and reads == []


def test_unreadable_judge_file_is_an_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _fake_model(tmp_path / "m")

    def deny(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(identity, "open", deny, raising=False)
    with pytest.raises(InputError, match=r"m/config\.json: cannot read this judge model file"):
        model_fingerprint(m)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no model weights found"):
        model_fingerprint(tmp_path / "empty")


def test_legacy_path_keyed_cache_rows_are_dropped_with_a_count(tmp_path: Path, caplog) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE judgments (key TEXT PRIMARY KEY, judge TEXT NOT NULL, method TEXT NOT NULL, "
                 "value TEXT NOT NULL, created REAL NOT NULL)")
    rows = [("k1", "/models/judge", "m", "{}", 0.0), ("k2", "/models/judge", "m", "{}", 0.0),
            ("k3", "./rel/judge", "m", "{}", 0.0), ("k4", "gpt-4o-2024-08-06", "m", "{}", 0.0)]
    conn.executemany("INSERT INTO judgments VALUES (?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    with caplog.at_level(logging.WARNING):
        cache = JudgeCache(path)
    assert cache.dropped_legacy == 3 and len(cache) == 1  # an API model id is its own identity: kept
    assert "dropped 3 judgments keyed by a judge's path" in caplog.text
    assert cache.get_many(["k4"]) == {"k4": {}}
    assert JudgeCache(path).dropped_legacy == 0  # once per file
    os.remove(path)
