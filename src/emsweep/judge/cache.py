"""A persistent judgment cache: sqlite3 in WAL mode, safe for several processes (array jobs) at once.

Keyed by (judge model id, method and its parameters, the exact prompt) hashed with SHA-256, so a rerun, or
another cell judging the same answer, costs no judge call. Values are the judge's raw result (before thresholds
such as the 0.25 rule), so changing a threshold does not invalidate the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from emsweep.io import InputError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments (
    key TEXT PRIMARY KEY,
    judge TEXT NOT NULL,
    method TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(judge: str, method: str, params: dict[str, Any], prompt: str) -> str:
    blob = json.dumps(
        {"judge": judge, "method": method, "params": params, "prompt": prompt},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """`get_many`/`put_many` by key; `hits`/`misses` count lookups for the summary line."""

    def __init__(
        self, path: str | os.PathLike[str], *, timeout_s: float = 60.0, journal_mode: str | None = None
    ) -> None:
        """`journal_mode`: "wal" (default) for processes on one machine; "delete" (the rollback journal with POSIX
        locks) when nodes share the file over a network filesystem, where WAL's shared memory does not work.
        Default from $EMSWEEP_JUDGE_CACHE_JOURNAL, else "wal"."""
        self.path = Path(path)
        self.timeout_s = timeout_s
        mode = (journal_mode or os.environ.get("EMSWEEP_JUDGE_CACHE_JOURNAL") or "wal").lower()
        if mode not in ("wal", "delete", "truncate", "persist"):
            raise InputError(
                f"judge cache journal mode {mode!r}: use wal (one machine) or delete (network filesystem)"
            )
        self.journal_mode = mode
        self.hits = 0
        self.misses = 0
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._conn() as conn:
                conn.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise InputError(
                f"judge cache {self.path}: not a usable sqlite database ({exc}); delete it or pick another path"
            ) from exc

    def _conn(self) -> sqlite3.Connection:
        # one connection per process and thread: sqlite connections must not cross a fork or thread
        key = (os.getpid(), threading.get_ident())
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "key", None) != key:
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            for _ in range(50):  # switching the journal mode needs a moment of exclusive access
                try:
                    conn.execute(f"PRAGMA journal_mode = {self.journal_mode.upper()}")
                    break
                except sqlite3.OperationalError:
                    time.sleep(0.1)
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn, self._local.key = conn, key
        return conn

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        conn = self._conn()
        uniq = list(dict.fromkeys(keys))
        for start in range(0, len(uniq), 500):
            chunk = uniq[start : start + 500]
            q = f"SELECT key, value FROM judgments WHERE key IN ({','.join('?' * len(chunk))})"
            for k, v in conn.execute(q, chunk):
                found[k] = json.loads(v)
        self.hits += sum(1 for k in keys if k in found)
        self.misses += sum(1 for k in keys if k not in found)
        return found

    def put_many(self, rows: list[tuple[str, str, str, Any]]) -> None:
        """rows: (key, judge, method, value). One transaction; first writer wins on a race (same value anyway)."""
        if not rows:
            return
        conn = self._conn()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR IGNORE INTO judgments (key, judge, method, value, created) VALUES (?, ?, ?, ?, ?)",
                [(k, j, m, json.dumps(v, sort_keys=True), now) for k, j, m, v in rows],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM judgments").fetchone()[0])

    def summary(self) -> str:
        return f"judge cache: {self.hits} hits, {self.misses} misses"

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
