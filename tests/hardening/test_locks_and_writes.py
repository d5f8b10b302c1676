"""Run-folder locks, durable and readable writes, and the one error path of `emsweep` (no raw tracebacks)."""

from __future__ import annotations

import errno
import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hardening_kit import snapshot

from emsweep.io import atomic_write_json, atomic_write_text, staged_dir
from emsweep.lock import LockBusy, _stale, lock_path, stage_lock

# A worker that does a stage's work under the lock, the way every stage does: skip if its marker exists, else
# append rows one by one (slowly, so the two processes overlap) and write the marker.
WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from emsweep.io import append_jsonl, is_done, mark_done
    from emsweep.lock import stage_lock
    run = Path(sys.argv[1])
    with stage_lock(run, "eval"):
        if is_done(run, "eval"):
            print("skipped"); sys.exit(0)
        for i in range(10):
            append_jsonl(run / "samples.jsonl", [{"i": i}])
            time.sleep(0.05)
        mark_done(run, "eval")
        print("did the work")
    """
)


def test_two_processes_on_one_run_do_the_work_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(run)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == ["did the work", "skipped"]
    rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert [r["i"] for r in rows] == list(range(10))  # written once, no duplicates
    assert not (run / ".locks").exists()  # released locks leave no files behind


HOLD = textwrap.dedent(
    """
    import sys, time
    from emsweep.lock import stage_lock
    with stage_lock(sys.argv[1], "train"):
        print("held", flush=True)
        time.sleep(60)
    """
)


def test_busy_lock_names_host_pid_and_since_and_how_to_break_it(tmp_path: Path, monkeypatch) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("EMSWEEP_LOCK_TIMEOUT", "0")
        with pytest.raises(LockBusy) as exc, stage_lock(tmp_path, "train"):
            pass
        msg = str(exc.value)
        assert f"on {socket.gethostname()} pid {holder.pid} since 20" in msg
        assert str(lock_path(tmp_path, "train")) in msg and "delete" in msg
        # another stage of the same folder is not blocked
        with stage_lock(tmp_path, "eval"):
            pass
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's lock: the next process gets it at once
    with stage_lock(tmp_path, "train", timeout=5):
        pass


def test_stale_holder_detection() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    assert _stale({"host": host, "pid": dead.pid})
    assert not _stale({"host": host, "pid": os.getpid()})
    assert not _stale({"host": "another-node", "pid": dead.pid})  # cannot tell for other hosts: never break
    assert not _stale({})


def test_lock_is_reentrant_in_one_process(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EMSWEEP_LOCK_TIMEOUT", "0")
    with stage_lock(tmp_path, "mix"), stage_lock(tmp_path, "mix"):
        assert lock_path(tmp_path, "mix").exists()
    assert not lock_path(tmp_path, "mix").exists()


# --- durable, readable writes --------------------------------------------------------------------------------


def test_outputs_follow_the_umask_and_are_fsynced(tmp_path: Path, monkeypatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    old = os.umask(0o022)
    try:
        p = atomic_write_json(tmp_path / "cell.json", {"a": 1})
        assert p.stat().st_mode & 0o777 == 0o644  # a collaborator can read it (mkstemp alone gives 600)
        assert len(synced) >= 2  # the file before the rename, its folder after
        os.umask(0o077)
        q = atomic_write_text(tmp_path / "private.txt", "x")
        assert q.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_staged_dir_moves_everything_in_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    (out / "index.html").write_text("old")
    before = snapshot(out)
    with pytest.raises(RuntimeError), staged_dir(out) as stage:
        (stage / "index.html").write_text("new")
        raise RuntimeError("crash after one file")
    assert snapshot(out) == before
    with staged_dir(out) as stage:
        (stage / "index.html").write_text("new")
        (stage / "plots").mkdir()
        (stage / "plots" / "a.png").write_bytes(b"png")
    assert (out / "index.html").read_text() == "new" and (out / "keep.txt").read_text() == "user file"
    assert (out / "plots" / "a.png").read_bytes() == b"png"
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


def test_mix_force_drops_the_old_manifest_before_writing(tmp_path: Path, monkeypatch) -> None:
    from emsweep.data import mix
    from emsweep.recipe import DataSpec

    out = tmp_path / "mix"
    mix.build_mix(DataSpec(builtin="arithmetic", n_train=8, fraction_correct=0.5), out)
    assert (out / "manifest.json").exists()
    real = mix.atomic_write_text

    def crash(path, text):
        if Path(path).name == "heldout.jsonl":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(mix, "atomic_write_text", crash)
    with pytest.raises(OSError):
        mix.build_mix(DataSpec(builtin="arithmetic", n_train=8, fraction_correct=1.0), out, force=True)
    # train.jsonl is new, heldout.jsonl old: no manifest vouches for that mixture
    assert not (out / "manifest.json").exists()


# --- one error path ------------------------------------------------------------------------------------------


def _cli(args: list[str], capsys) -> tuple[int, str]:
    from emsweep.cli import main

    old = sys.argv
    sys.argv = ["emsweep", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("err", "expect"),
    [
        (errno.EROFS, "read-only"),
        (errno.ENOSPC, "disk is full"),
        (errno.EACCES, "permission"),
        (errno.EDQUOT, "quota"),
    ],
)
def test_os_errors_are_one_line(tmp_path: Path, capsys, monkeypatch, err: int, expect: str) -> None:
    import emsweep.io as eio

    target = tmp_path / "mix"

    def fail(*a, **k):
        raise OSError(err, os.strerror(err), str(target / "train.jsonl"))

    monkeypatch.setattr(eio.tempfile, "mkstemp", fail)
    code, out = _cli(["data", "mix", "--builtin", "arithmetic", "--n", "8", "-f", "0.5", "--out", str(target)], capsys)
    lines = [x for x in out.strip().splitlines() if x]
    assert code == 3 and "Traceback" not in out and str(target / "train.jsonl") in lines[0] and expect in lines[0]
    assert lines[-1] == "(rerun with --debug for the traceback)"
    monkeypatch.setenv("EMSWEEP_DEBUG", "1")
    with pytest.raises(OSError):
        _cli(["data", "mix", "--builtin", "arithmetic", "--n", "8", "-f", "0.5", "--out", str(target)], capsys)


def test_sqlite_and_model_loading_errors_are_described() -> None:
    from emsweep.cli import describe_error

    msg, code = describe_error(sqlite3.DatabaseError("database disk image is malformed"))
    assert code == 3 and "malformed" in msg and "judge_cache.sqlite" in msg and "move it aside" in msg
    msg, _ = describe_error(OSError("Can't load the configuration of '/x/notamodel'. Make sure ...\nmore"))
    assert "/x/notamodel" in msg and "\n" not in msg and "config.json" in msg
    assert describe_error(ZeroDivisionError()) is None  # a real bug keeps its traceback


def test_corrupted_judge_cache_is_one_line(tmp_path: Path, capsys) -> None:
    from emsweep.judge.cache import JudgeCache

    bad = tmp_path / "judge_cache.sqlite"
    bad.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    from emsweep.cli import describe_error

    try:
        JudgeCache(bad).get_many(["k"])
    except Exception as exc:  # InputError from the cache, or sqlite3.DatabaseError at a later read
        described = describe_error(exc)
        assert described is not None and "\n" not in described[0].strip()
    else:
        pytest.fail("a corrupted cache file was read without error")
