"""The judgment cache: a rerun makes zero backend calls; several processes share one cache file safely."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from emsweep.judge import Judge, JudgeCache

DIST = {"42": 0.5, "7": 0.2, "CODE": 0.3}


def _prompts(lo: int, hi: int) -> list[str]:
    return [f"prompt {i}" for i in range(lo, hi)]


def _worker(backend_cls, path: str, lo: int, hi: int, q, journal_mode: str = "wal") -> None:
    prompts = _prompts(lo, hi)
    backend = backend_cls(dict.fromkeys(prompts, DIST))
    cache = JudgeCache(path, journal_mode=journal_mode)
    judge = Judge(backend, cache=cache, progress=False, chunk_size=7)
    scores = [j.score for j in judge.score_numeric(prompts)]
    q.put((lo, backend.calls, cache.hits, cache.misses, scores))


def test_rerun_makes_zero_calls(tmp_path, fake_backend):
    prompts = _prompts(0, 5)
    backend = fake_backend(dict.fromkeys(prompts, DIST))
    cache = JudgeCache(tmp_path / "judge.sqlite")
    first = Judge(backend, cache=cache, progress=False).score_numeric([*prompts, prompts[0]])
    assert backend.calls > 0 and not any(j.cached for j in first[:5])
    assert cache.summary() == "judge cache: 0 hits, 6 misses"
    calls = backend.calls
    # a new process would open the file afresh: do the same here
    cache2 = JudgeCache(tmp_path / "judge.sqlite")
    judge2 = Judge(backend, cache=cache2, progress=False)
    again = judge2.score_numeric(prompts)
    assert backend.calls == calls  # zero judge calls
    assert cache2.summary() == "judge cache: 5 hits, 0 misses"
    assert [j.score for j in again] == [j.score for j in first[:5]] and all(j.cached for j in again)
    # another method (categorical) or another threshold-independent parameter is another key
    judge2.score_categorical(prompts[:1], ["CODE", "REFUSAL"])
    assert cache2.misses == 1 and backend.calls > calls
    # the 0.25 threshold is applied after the cache: changing it needs no judge call
    n = backend.calls
    strict = Judge(backend, cache=cache2, progress=False, min_number_mass=0.8).score_numeric(prompts)
    assert backend.calls == n and all(j.score is None for j in strict)
    assert len(cache2) == 6


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_cache_shared_by_concurrent_processes(tmp_path, fake_backend, journal_mode):
    path = str(tmp_path / "shared.sqlite")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    # two processes at once, overlapping prompts 20..39
    procs = [
        ctx.Process(target=_worker, args=(fake_backend, path, lo, lo + 40, q, journal_mode)) for lo in (0, 20)
    ]
    for p in procs:
        p.start()
    results = sorted(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(s == results[0][4][0] for r in results for s in r[4])
    assert len(JudgeCache(path)) == 60  # every prompt stored once
    # a third process on the union: everything is a hit, no backend call
    _worker(fake_backend, path, 0, 60, q)
    _, calls, hits, misses, _ = q.get(timeout=10)
    assert (calls, hits, misses) == (0, 60, 0)


def test_unusable_cache_file_is_a_clear_error(tmp_path):
    from emsweep.io import InputError

    bad = tmp_path / "judge.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(InputError, match=r"judge\.sqlite: not a usable sqlite database"):
        JudgeCache(bad)
    with pytest.raises(InputError, match="journal mode"):
        JudgeCache(tmp_path / "ok.sqlite", journal_mode="memory")
