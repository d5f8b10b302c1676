"""Small file helpers every stage shares: atomic writes, JSONL with line-numbered errors, hashes, done-markers.

Every write goes to a temp file in the same folder and is renamed into place, so a crash never leaves a
half-written output that a rerun would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """Bad user input. The message names the file (and line or key) and says what to fix."""


def _umask() -> int:
    """The process umask: from /proc (thread-safe) where there is one, else by setting and restoring it."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a folder so a rename into it survives a node crash (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and Windows) do not fsync folders
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block finishes without error.

    Durable and readable: the temp file is fsynced before the rename and the folder after it, so a done-marker
    written after its data can never survive a crash that the data did not; the file gets `0o666 & ~umask`
    (mkstemp's 600 would hide results from collaborators on a shared cluster), or `mode` if given.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, mode if mode is not None else 0o666 & ~_umask())
            _fsync_file(tmp_path)
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder beside `target` (same parent, so relative links computed from it hold for
    `target`); when the block succeeds, move every file in it into `target` (each an atomic rename). So a
    command that writes several outputs (the report: CSVs, plots, HTML) computes all of them before the first
    one replaces an old file, and a failure leaves the old outputs untouched. Files in `target` that the block
    did not write are kept."""
    target = Path(target)
    created: list[Path] = []
    for parent in reversed([target.parent, *target.parent.parents]):
        if not parent.exists():
            created.append(parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    ok = False
    try:
        yield stage
        ok = True
    finally:
        if ok:
            mode = 0o777 & ~_umask()
            target.mkdir(parents=True, exist_ok=True)
            for src in sorted(stage.rglob("*")):
                dst = target / src.relative_to(stage)
                if src.is_dir():
                    dst.mkdir(exist_ok=True)
                    os.chmod(dst, mode)
                    continue
                os.chmod(src, 0o666 & ~_umask())
                _fsync_file(src)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
            fsync_dir(target)
        shutil.rmtree(stage, ignore_errors=True)
        if not ok:
            for d in reversed(created):  # parents this call created for nothing
                with contextlib.suppress(OSError):
                    d.rmdir()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def dumps_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, UTF-8 kept) so the same content always hashes the same."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, dumps_json(obj))


def jsonl_line(row: Any) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=True, default=str) + "\n"


def atomic_write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(jsonl_line(row))
    return Path(path)


def append_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> None:
    """Append complete lines and fsync: for incremental outputs (samples, judgments) that must survive a crash.

    Readers use `read_jsonl(..., tolerate_torn_tail=True)` to ignore a last line cut off mid-write.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    new = not p.exists()
    with open(p, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(jsonl_line(row))
        fh.flush()
        os.fsync(fh.fileno())
    if new:
        fsync_dir(p.parent)


def open_text(path: str | os.PathLike[str]):
    """Open a text file, transparently gunzipping `.gz`."""
    p = Path(path)
    if p.suffix == ".gz":
        return gzip.open(p, "rt", encoding="utf-8")
    return open(p, encoding="utf-8")


def read_jsonl(
    path: str | os.PathLike[str], *, tolerate_torn_tail: bool = False
) -> Iterator[tuple[int, Any]]:
    """Yield (line_number, parsed_object), 1-based; a malformed line raises InputError naming file and line."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    with open_text(p) as fh:
        lines = fh.readlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as exc:
            if tolerate_torn_tail and i == len(lines) and not line.endswith("\n"):
                return
            raise InputError(f"{p}:{i}: malformed JSON ({exc.msg} at column {exc.colno})") from exc


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- done-markers -------------------------------------------------------------------------------------------
# A stage is finished when its marker exists. Markers live in `<dir>/.done/<stage>.json` and hold whatever the
# stage wants to remember (counts, hashes); reruns skip a stage whose marker is present.


def marker_path(directory: str | os.PathLike[str], stage: str) -> Path:
    return Path(directory) / ".done" / f"{stage}.json"


def is_done(directory: str | os.PathLike[str], stage: str) -> bool:
    return marker_path(directory, stage).exists()


def mark_done(directory: str | os.PathLike[str], stage: str, info: dict[str, Any] | None = None) -> Path:
    return atomic_write_json(marker_path(directory, stage), info or {})


def read_marker(directory: str | os.PathLike[str], stage: str) -> dict[str, Any] | None:
    p = marker_path(directory, stage)
    return json.loads(p.read_text()) if p.exists() else None


def clear_done(directory: str | os.PathLike[str], stage: str) -> None:
    marker_path(directory, stage).unlink(missing_ok=True)
