"""A persistent judgment cache: sqlite3 in WAL mode, safe for several processes (array jobs) at once.

Keyed by (the judge's identity, method and its parameters, the exact prompt) hashed with SHA-256, so a rerun, or
another cell judging the same answer, costs no judge call. The identity is `JudgeIdentity.model_key`: the content
fingerprint of a local judge's files (`sha256:...`), or an API model's id - never a path string, so another model
placed at the same path misses. Values are the judge's raw result (before thresholds such as the 0.25 rule), so
changing a threshold does not invalidate the cache.

Migration: caches written before identities keyed local judges by their path. Those rows cannot be proven to
belong to any judge; the first open deletes them and logs how many (API-keyed rows stay valid: the id is the
identity).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from emsweep.io import InputError
from emsweep.judge.identity import is_legacy_judge_key

log = logging.getLogger(__name__)

_META = "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
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
        self.dropped_legacy = 0
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._conn() as conn:
                conn.execute(_SCHEMA)
                conn.execute(_META)
            self.dropped_legacy = self._migrate()
        except sqlite3.DatabaseError as exc:
            raise InputError(
                f"judge cache {self.path}: not a usable sqlite database ({exc}); delete it or pick another path"
            ) from exc

    def _migrate(self) -> int:
        """Once per file: delete rows keyed by a judge's path (unprovable identity); return how many."""
        conn = self._conn()
        if conn.execute("SELECT 1 FROM meta WHERE name = 'identity_v1'").fetchone():
            return 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM meta WHERE name = 'identity_v1'").fetchone():
                conn.execute("COMMIT")
                return 0
            judges = [r[0] for r in conn.execute("SELECT DISTINCT judge FROM judgments")]
            legacy = [j for j in judges if is_legacy_judge_key(j)]
            n = 0
            for j in legacy:
                n += conn.execute("DELETE FROM judgments WHERE judge = ?", (j,)).rowcount
            conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('identity_v1', ?)", (str(time.time()),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if n:
            log.warning(
                "judge cache %s: dropped %d judgments keyed by a judge's path (written before judges were "
                "identified by their files' contents); they cannot be proven to belong to any judge and are "
                "judged again when needed",
                self.path,
                n,
            )
        return n

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
