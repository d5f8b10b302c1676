"""What made a result: package versions and the emsweep source commit, recorded in every cell.json.

One helper so the launcher and the train stage record the same fields the same way.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "vllm")


def package_versions() -> dict[str, str | None]:
    """emsweep, python and the stage libraries' versions; None for a library that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    from emsweep import __version__

    out: dict[str, str | None] = {"emsweep": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_sha(start: Path | None = None) -> str | None:
    """The emsweep source tree's commit (None outside a git checkout); `-dirty` when it has local edits."""
    here = start or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (f"{sha}-dirty" if dirty else sha) or None


def provenance() -> dict[str, object]:
    """The `versions` and `git_sha` fields of cell.json."""
    return {"versions": package_versions(), "git_sha": git_sha()}
