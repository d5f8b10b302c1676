"""One advisory lock per run folder and stage, so two processes never do (or append) the same work twice.

`<folder>/.locks/<stage>.lock` is locked with POSIX record locks (`fcntl.lockf`): they work on NFS and Lustre
(where `flock` is emulated by them anyway), the kernel drops them when the holder dies, and unlike `flock` a
forked child (a vLLM worker, a dataloader) does not inherit them, so an orphaned child never keeps a run locked.
The file holds who has it (`host`, `pid`, `since`), for the message the next process prints; it is removed on
release (a waiter that opened the old file notices the unlink and locks a fresh one).

Policy: a second process *waits* for the lock, then finds the first one's done-markers and skips the finished
work (two concurrent `emsweep eval` on one run do the work once). `EMSWEEP_LOCK_TIMEOUT=SECONDS` bounds the wait
(0: refuse at once with "already running on HOST pid N since T"). A stale lock (its holder's pid is dead on this
host, e.g. a lock server that missed the exit) is broken automatically; to break one by hand, delete the file
named in the message (`rm <folder>/.locks/<stage>.lock`) once you are sure that process is gone.

Locks are re-entrant within a process (the executor holds `train` while `run_training` takes it again).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import functools
import inspect
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from emsweep.io import InputError

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"
TIMEOUT_ENV = "EMSWEEP_LOCK_TIMEOUT"
POLL_S = 0.5
REPORT_EVERY_S = 60.0

F = TypeVar("F", bound=Callable[..., Any])

_held: dict[str, tuple[Any, int]] = {}  # resolved lock path -> (open file, depth), this process
_held_guard = threading.Lock()


class LockBusy(InputError):
    """The stage is running in another process and the wait ran out (or `EMSWEEP_LOCK_TIMEOUT=0`)."""


def lock_path(folder: str | os.PathLike[str], stage: str) -> Path:
    return Path(folder) / LOCK_DIR / f"{stage}.lock"


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "by another process"
    return f"on {holder.get('host', '?')} pid {holder.get('pid', '?')} since {holder.get('since', '?')}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _stale(holder: dict[str, Any]) -> bool:
    """Held, but by a pid that no longer exists on this host: the lock outlived its process."""
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)


def _timeout(timeout: float | None) -> float:
    if timeout is not None:
        return timeout
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return math.inf
    try:
        return float(raw)
    except ValueError:
        raise InputError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds (0: do not wait)") from None


def _open_locked(path: Path) -> Any | None:
    """Open and try-lock `path`; the file object if we hold it, None if another process does."""
    import fcntl

    try:
        for attempt in range(20):  # the folder may vanish between mkdir and open (a holder tidying up)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
                break
            except FileNotFoundError:
                if attempt == 19:
                    raise
    except OSError as exc:
        raise InputError(
            f"{path}: cannot create the lock file ({exc.strerror}); the run folder must be writable"
        ) from None
    try:
        fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        fh.close()
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return None
        raise
    # the file may have been deleted (a broken lock) between open and lock: then lock the new one
    try:
        same = os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        fh.close()
        return _open_locked(path)
    return fh


def _write_holder(fh: Any, stage: str) -> None:
    fh.seek(0)
    fh.truncate()
    since = _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")
    fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since, "stage": stage}))
    fh.flush()


@contextlib.contextmanager
def stage_lock(
    folder: str | os.PathLike[str], stage: str, *, timeout: float | None = None
) -> Iterator[Path]:
    """Hold the lock of `stage` in `folder` for the block; wait for another holder (see the module docstring)."""
    path = lock_path(folder, stage)
    key = str(path.resolve())
    with _held_guard:
        if key in _held:
            fh, depth = _held[key]
            _held[key] = (fh, depth + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield path
        finally:
            with _held_guard:
                fh, depth = _held[key]
                _held[key] = (fh, depth - 1)
        return

    limit = _timeout(timeout)
    t0 = time.monotonic()
    last_report = -math.inf
    while True:
        fh = _open_locked(path)
        if fh is not None:
            break
        holder = _read_holder(path)
        if _stale(holder):
            log.warning("%s: breaking a stale lock (held %s, that process is gone)", path, describe_holder(holder))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        waited = time.monotonic() - t0
        msg = f"{folder}: {stage} is already running {describe_holder(holder)}"
        if waited >= limit:
            raise LockBusy(
                f"{msg}. Wait for it to finish (rerunning then skips the finished work), or, if that process "
                f"is gone, delete {path} to break the lock. ({TIMEOUT_ENV} sets how long to wait.)"
            )
        if time.monotonic() - last_report >= REPORT_EVERY_S:
            log.info("%s; waiting for it (then finished work is skipped)", msg)
            last_report = time.monotonic()
        time.sleep(min(POLL_S, max(0.0, limit - waited)) if limit != math.inf else POLL_S)
    _write_holder(fh, stage)
    with _held_guard:
        _held[key] = (fh, 1)
    try:
        yield path
    finally:
        with _held_guard:
            fh, depth = _held.pop(key)
        # tidy up while still holding it: a waiter that opened this file finds it unlinked and takes a new one
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only if empty: outputs keep exactly the files they document
        fh.close()  # releases the lock


def locked_stage(stage: str, folder_arg: str) -> Callable[[F], F]:
    """Decorator: run the function under `stage_lock(<its folder_arg argument>, stage)`."""

    def deco(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            folder = sig.bind_partial(*args, **kwargs).arguments.get(folder_arg)
            if folder is None:
                return fn(*args, **kwargs)
            with stage_lock(folder, stage):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco


def main_rank() -> bool:
    """True outside distributed launches and on global rank 0 (only it takes locks; the others follow it)."""
    return os.environ.get("RANK", "0") in ("", "0")
