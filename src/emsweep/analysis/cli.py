"""CLI commands of the analysis stage; `register` adds them to the top-level `emsweep` app."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app` (imports of heavy libraries stay inside the commands)."""
