"""The generation backends by name: `kind -> (module, class, pip extra)`, imported only when used.

A new backend is one `GenerationBackend` subclass plus one line here (docs/extending.md). This module imports
nothing heavy, so recipe validation and `emsweep --help` read the names without loading pydantic models or vLLM.
"""

from __future__ import annotations

BACKENDS: dict[str, tuple[str, str, str]] = {
    "hf": ("emsweep.generate.hf", "HFBackend", "train"),
    "vllm": ("emsweep.generate.vllm_backend", "VLLMBackend", "vllm"),
    "openai": ("emsweep.generate.openai_api", "OpenAIChatBackend", "openai"),
    # a vLLM (or any OpenAI-compatible) server; LoRA checkpoints are loaded into `vllm serve` at run time
    "openai-compatible": ("emsweep.generate.vllm_serve", "VLLMServeBackend", "openai"),
}
BACKEND_KINDS = tuple(BACKENDS)
LOCAL_BACKENDS = ("hf", "vllm")  # load a model from files (fingerprinted); the others serve an API model id
BACKENDS_HELP = " | ".join(BACKENDS)  # for command-line help texts
