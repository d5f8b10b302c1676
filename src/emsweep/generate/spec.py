"""What recipes say about generation: backend names, checked against the backend registry (generate/factory.py)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _backend_name(name: str) -> str:
    from emsweep.generate.registry import BACKENDS

    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; registered backends: {', '.join(BACKENDS)}")
    return name


# a new backend is one line in generate/registry.py BACKENDS; no edit here
BackendName = Annotated[str, AfterValidator(_backend_name)]
