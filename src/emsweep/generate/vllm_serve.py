"""`--backend openai-compatible --base-url URL` against `vllm serve`: LoRA checkpoints loaded at run time.

A running `vllm serve BASE --enable-lora --max-lora-rank R` (started with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`)
takes new adapters through `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`; a request then names the adapter
as its `model`. So one server serves the base model and every LoRA checkpoint of a sweep, like the offline engine.
Everything else (chat completions, top-20 logprobs, retries, concurrency) is `OpenAIChatBackend`'s; base and API
checkpoints go to the server exactly as there, so this class also works with servers that cannot load adapters.

`lora_path` is read by the server, so it must be a path on the server's filesystem (shared storage on a cluster).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from emsweep.generate.openai_api import OpenAIChatBackend
from emsweep.io import InputError
from emsweep.layout import CheckpointRef

log = logging.getLogger(__name__)


def lora_name(ref: CheckpointRef) -> str:
    """The server-side adapter name of a checkpoint: its sweep-unique key, in characters URLs and logs accept."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", ref.key)


class VLLMServeBackend(OpenAIChatBackend):
    """OpenAIChatBackend + LoRA adapters loaded into `vllm serve` on first use (one load per adapter)."""

    name = "openai-compatible"
    accepts_ignore_eos = True  # vLLM's server takes `ignore_eos` (benchmarks)

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        load_timeout: float = 300.0,
        **kwargs: Any,
    ) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise InputError(
                "backend 'openai-compatible' needs --base-url http://host:8000/v1 (or OPENAI_BASE_URL)"
            )
        super().__init__(model, base_url=base_url, **kwargs)
        self.root = re.sub(r"/v1/?$", "", base_url.rstrip("/"))
        self.load_timeout = load_timeout
        self._loaded: dict[str, str] = {}  # resolved adapter path -> lora_name
        self._load_lock = threading.Lock()
        self._served: list[str] | None = None

    # ---- server state --------------------------------------------------------------------------------------
    def _http(self) -> Any:
        try:
            import httpx
        except ModuleNotFoundError:  # some openai SDK builds ship it renamed as httpx2 (same API)
            import httpx2 as httpx

        headers = {}
        key = os.environ.get("VLLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.Client(base_url=self.root, headers=headers, timeout=self.load_timeout)

    def served_models(self, refresh: bool = False) -> list[str]:
        """Model ids the server lists (/v1/models): the base model first, then the adapters it holds."""
        if self._served is None or refresh:
            with self._http() as http:
                try:
                    resp = http.get("/v1/models")
                    resp.raise_for_status()
                except Exception as exc:
                    raise InputError(f"cannot list models at {self.root}/v1/models: {exc}") from exc
            data = resp.json().get("data") or []
            self._served = [m["id"] for m in data if m.get("parent") is None] + [
                m["id"] for m in data if m.get("parent") is not None
            ]
        return self._served

    def load_adapter(self, ref: CheckpointRef) -> str:
        """Load the adapter of a LoRA checkpoint into the server (once) and return the model name to request."""
        if ref.path is None:
            raise InputError(f"checkpoint {ref.key} (kind lora) has no path")
        path = str(Path(ref.path).resolve())
        with self._load_lock:
            if path in self._loaded:
                return self._loaded[path]
            name = lora_name(ref)
            if name in self.served_models(refresh=True):
                self._loaded[path] = name  # loaded by an earlier run against the same server
                return name
            with self._http() as http:
                resp = http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
            if resp.status_code == 404:
                raise InputError(
                    f"{self.root} has no /v1/load_lora_adapter: start the server with `vllm serve BASE "
                    "--enable-lora --max-lora-rank R` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment"
                )
            if resp.status_code >= 400:
                detail = resp.text
                with contextlib.suppress(ValueError, AttributeError):
                    detail = json.loads(detail).get("error", {}).get("message", detail)  # vLLM's error body
                raise InputError(
                    f"vllm serve at {self.root} refused adapter {path} for checkpoint {ref.key}: {detail} "
                    "(the path must be readable on the server; its rank must not exceed --max-lora-rank; "
                    "DoRA and modules_to_save adapters cannot be served)"
                )
            log.info("loaded LoRA adapter %s into %s as %r", path, self.root, name)
            self._loaded[path] = name
            if self._served is not None:
                self._served.append(name)
            return name

    # ---- OpenAIChatBackend hook ----------------------------------------------------------------------------
    def model_for(self, ref: CheckpointRef | None) -> str:
        if ref is not None and ref.kind == "lora":
            return self.load_adapter(ref)
        if ref is not None and ref.kind == "full":
            raise InputError(
                f"checkpoint {ref.key} holds full weights; a `vllm serve` process serves one set of weights - "
                "start `vllm serve <checkpoint folder>` for it, or evaluate full fine-tunes with --backend vllm "
                "(weights swapped in place on one engine)"
            )
        if ref is not None and ref.kind == "base" and not ref.model:
            served = self.served_models()
            # the server names the base model by the path/id it was started with (or --served-model-name)
            for cand in (ref.base_model, str(Path(ref.base_model).resolve()) if ref.base_model else ""):
                if cand in served:
                    return cand
            if self.default_model:
                return self.default_model
            if served:
                return served[0]
        return super().model_for(ref)
