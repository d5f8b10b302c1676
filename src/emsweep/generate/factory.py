"""`make_backend(kind, model, ...)`: one place that turns a backend name into a GenerationBackend.

A backend is created once per base model and serves every checkpoint of a run (HF swaps PEFT adapters, vLLM
batches LoRARequests). Backends are imported lazily so `emsweep --help` and the CPU test suite never import vllm
or openai unless asked to.
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any

from emsweep.generate.base import GenerationBackend
from emsweep.generate.registry import BACKEND_KINDS, BACKENDS, LOCAL_BACKENDS
from emsweep.io import InputError


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
    """Whether `cls(...)` takes keyword `name`. A `**kwargs` that is only handed on to the parent class
    (VLLMServeBackend -> OpenAIChatBackend) accepts what the parent accepts, not everything."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        if name in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
        if klass.__dict__.get("OWN_EXTRA_KWARGS", False):  # e.g. vLLM: **kwargs are engine options, its own
            return True
    return False


def check_model(kind: str, model: str | None, *, role: str = "model", base_url: str | None = None) -> None:
    """Cheap checks that `model` can be loaded by backend `kind`, run before any work is spent (the judge is
    checked before generation): a local folder must hold a model config, an API backend needs its key or URL.
    Raises InputError naming the path and what to do."""
    backend_class(kind)  # unknown kind / missing extra
    if kind in LOCAL_BACKENDS:
        if not model:
            raise InputError(f"{role}: backend {kind!r} needs a base model (a local folder or hub id)")
        p = Path(model).expanduser()
        looks_local = p.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1
        if looks_local:
            if not p.exists():
                raise InputError(f"{role} {model}: no such folder")
            if not p.is_dir() or not (p / "config.json").exists():
                what = "a file" if p.is_file() else "a folder without config.json"
                raise InputError(
                    f"{role} {model}: {what}, not a model folder; give a folder with config.json, tokenizer "
                    "and weights (e.g. written by `emsweep model init` or `huggingface-cli download`)"
                )
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(model)
        except (OSError, ValueError) as exc:
            if "trust_remote_code" in str(exc):
                return  # custom code: the backend loads it with the recipe's trust_remote_code
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{role} {model}: cannot load its config ({first})") from None
    elif kind == "openai":
        url = base_url or os.environ.get("OPENAI_BASE_URL") or ""
        if not os.environ.get("OPENAI_API_KEY") and (not url or "api.openai.com" in url):
            raise InputError(f"{role} {model}: OPENAI_API_KEY is not set: export your OpenAI API key")
    elif kind == "openai-compatible" and not (base_url or os.environ.get("OPENAI_BASE_URL")):
        raise InputError(
            f"{role} {model}: backend 'openai-compatible' needs a server URL: --base-url http://host:8000/v1 "
            "(or set OPENAI_BASE_URL)"
        )


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
    if kind in LOCAL_BACKENDS and not model:
        raise InputError(f"backend {kind!r} needs a base model (a local folder or hub id)")
    if kind in LOCAL_BACKENDS:
        check_model(kind, model)  # a folder that is not a model: one line, before the engine spends minutes
    bad = [k for k in opts if not _accepts(cls, k)]
    if bad:
        raise InputError(f"backend {kind!r} does not take option(s) {', '.join(sorted(bad))}")
    return cls(model, **opts)
