"""Helpers the benchmark scripts share: what machine and which versions a table was measured with.

`scripts/` is on `sys.path` when a script in it runs, so `from _bench_common import ...` works from both
`python scripts/bench_eval.py` and `python scripts/bench_train.py`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from datetime import datetime, timezone


def versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of the packages that matter for a table (absent ones are left out)."""
    import importlib.metadata as md

    out = {}
    for pkg in packages:
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def hardware(device: str) -> str:
    """The GPU's name, or the CPU model with the cores visible and OMP_NUM_THREADS."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    try:
        model = [
            ln.split(":", 1)[1].strip()
            for ln in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if ln.startswith("Model name")
        ]
        return f"{model[0] if model else platform.processor()} ({os.cpu_count()} cores visible, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')})"
    except OSError:
        return platform.processor()


def load_average() -> str:
    """1/5/15-minute load average: on a shared machine it says how much else was running."""
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    return "-"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def markdown_table(header: list[str], rows: list[list[str]], right_from: int = 1) -> str:
    """A markdown table; columns from `right_from` on are right-aligned (numbers)."""
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
