"""The repository stands alone: no file but the CI script refers to the folder a development checkout may have
beside it (the CI script passes it to the tests through EMSWEEP_UPSTREAM)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {".ci/run"}
# `..` then `/shared`, and the pathlib spelling (`parent` then `/ "shared"`) an earlier conftest used; both are
# spelled in parts here so that this file does not match itself.
OUTSIDE = re.compile(r"\.\.[/\\]" + r"shared\b|parents?(?:\[\d\])?\s*/\s*[\"']" + r"shared[\"']")


def _repo_files() -> list[str]:
    """Tracked files plus new files git does not ignore (what a commit would carry)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout  # fmt: skip
    return [f for f in out.decode().split("\0") if f]


def test_pattern_catches_both_spellings() -> None:
    assert OUTSIDE.search("see [.." + "/shared/DESIGN.md]")
    assert OUTSIDE.search("REPO.parent / " + '"shared" / "fixtures"')
    assert not OUTSIDE.search("a file shared by the sweep's cells; ./shared_cache")


def test_no_file_but_ci_run_mentions_the_folder_beside_the_clone() -> None:
    files = _repo_files()
    assert ".ci/run" in files and "tests/conftest.py" in files  # the listing works
    offenders = []
    for rel in files:
        p = REPO / rel
        if rel in ALLOWED or not p.is_file():
            continue
        text = p.read_bytes().decode("utf-8", errors="ignore")
        offenders += [f"{rel}:{text.count(chr(10), 0, m.start()) + 1}" for m in OUTSIDE.finditer(text)]
    assert not offenders, f"files refer to a folder outside the repository: {offenders}"
    assert OUTSIDE.search((REPO / ".ci/run").read_text()), ".ci/run should point EMSWEEP_UPSTREAM beside the clone"
