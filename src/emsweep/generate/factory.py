"""`make_backend(kind, model, ...)`: one place that turns a backend name into a GenerationBackend.

A backend is created once per base model and serves every checkpoint of a run (HF swaps PEFT adapters, vLLM
batches LoRARequests). Backends are imported lazily so `emsweep --help` and the CPU test suite never import vllm
or openai unless asked to.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any

from emsweep.generate.base import GenerationBackend
from emsweep.io import InputError

# kind -> (module, class, pip extra that provides its dependencies)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "hf": ("emsweep.generate.hf", "HFBackend", "train"),
    "vllm": ("emsweep.generate.vllm_backend", "VLLMBackend", "vllm"),
    "openai": ("emsweep.generate.openai_api", "OpenAIChatBackend", "openai"),
    # a vLLM (or any OpenAI-compatible) server; LoRA checkpoints are loaded into `vllm serve` at run time
    "openai-compatible": ("emsweep.generate.vllm_serve", "VLLMServeBackend", "openai"),
}
BACKEND_KINDS = tuple(BACKENDS)


def backend_class(kind: str) -> type[GenerationBackend]:
    """The class behind `kind`; a clear error when the name is unknown or its module/extra is missing."""
    if kind not in BACKENDS:
        raise InputError(f"unknown backend {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
    module_name, cls_name, extra = BACKENDS[kind]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise InputError(
                f"backend {kind!r} is not available in this emsweep version ({module_name})"
            ) from exc
        raise InputError(
            f"backend {kind!r} needs the package {exc.name!r}: pip install 'emsweep[{extra}]'"
        ) from exc
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise InputError(f"backend {kind!r}: {module_name} has no {cls_name}")
    return cls


def _accepts(cls: type, name: str) -> bool:
    params = inspect.signature(cls.__init__).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def make_backend(
    kind: str,
    model: str | None = None,
    *,
    base_url: str | None = None,
    batch_size: int | None = None,
    engine: dict[str, Any] | None = None,
    **kwargs: Any,
) -> GenerationBackend:
    """Create the backend `kind` ("hf", "vllm", "openai", "openai-compatible") for `model`.

    `model` is the base model (local folder or hub id) for hf/vllm, the model id for the API backends.
    `engine` holds engine keyword arguments (vLLM `LLM(...)` kwargs, HF loading options) and is merged into
    `kwargs`; `batch_size` is passed to backends that take one. Unknown keyword arguments are an error that names them.
    """
    cls = backend_class(kind)
    opts: dict[str, Any] = dict(engine or {})
    opts.update(kwargs)
    if batch_size is not None and _accepts(cls, "batch_size"):
        opts["batch_size"] = batch_size
    if kind in ("openai", "openai-compatible"):
        base_url = base_url or (os.environ.get("OPENAI_BASE_URL") if kind == "openai-compatible" else None)
        if kind == "openai-compatible" and not base_url:
            raise InputError(
                "backend 'openai-compatible' needs a server URL: --base-url http://host:8000/v1 "
                "(or set OPENAI_BASE_URL)"
            )
        if base_url:
            opts["base_url"] = base_url
    elif base_url:
        raise InputError(f"--base-url is only for the openai / openai-compatible backends, not {kind!r}")
    if kind in ("hf", "vllm") and not model:
        raise InputError(f"backend {kind!r} needs a base model (a local folder or hub id)")
    bad = [k for k in opts if not _accepts(cls, k)]
    if bad:
        raise InputError(f"backend {kind!r} does not take option(s) {', '.join(sorted(bad))}")
    return cls(model, **opts)
