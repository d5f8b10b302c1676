"""Lazy registries: a name maps to a `"module:attribute"` string, imported only when used (as lm-evaluation-harness
registers models and tasks), so a registry line costs nothing until a recipe or suite names it. Shared by the
judge kinds, source readers and suite formats."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from emsweep.io import InputError


def load_entry(table: Mapping[str, str], what: str, name: str, known: Iterable[str] | None = None) -> Any:
    """The attribute registered under `name`; an unknown name or a broken entry is an InputError listing `known`
    (default: the table's names)."""
    entry = table.get(name)
    if entry is None:
        names = ", ".join(sorted(known if known is not None else table))
        raise InputError(f"unknown {what} {name!r}; registered: {names}")
    mod, _, attr = entry.partition(":")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"{what} {name!r}: cannot load {entry} ({exc})") from None
