"""Fixtures for the vLLM tests: a tiny Qwen2 model (`emsweep model init --shape tiny`, head size 32), a LoRA adapter
and a full checkpoint built offline, and engines shared per module (an engine start on CPU takes ~20 s).

These tests run in CI with .venv-vllm's interpreter and must not skip: a missing vllm is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# Small, bounded CPU engines: 1 GiB of KV cache, the CI's 2 cores.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import vllm  # noqa: F401 - fail loudly (not skip) when the vLLM venv is not the interpreter

from emsweep.layout import CheckpointRef


@dataclass(frozen=True)
class TinyModels:
    base: Path
    lora: Path
    lora_b: Path
    full: Path

    def ref(self, kind: str, which: str | None = None) -> CheckpointRef:
        if kind == "base":
            return CheckpointRef(
                name="checkpoint-0", step=0, kind="base", base_model=str(self.base), path=self.base
            )
        if kind == "lora":
            path = self.lora_b if which == "b" else self.lora
            step = 20 if which == "b" else 10
            return CheckpointRef(
                name=f"checkpoint-{step}", step=step, kind="lora", base_model=str(self.base), path=path
            )
        return CheckpointRef(
            name="checkpoint-30", step=30, kind="full", base_model=str(self.base), path=self.full
        )


def sharpen_(model, seed: int, std: float) -> None:
    """Random weights large enough that next-token distributions are peaked: greedy argmaxes and the top-20 set are
    then decided by margins far above float32 rounding, so parity between backends is a real check."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def build_lora(base: Path, out: Path, *, seed: int, r: int = 8, **extra) -> Path:
    """A PEFT LoRA adapter on `base` with non-zero B matrices (an untrained adapter would equal the base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
        **extra,
    )
    peft_model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyModels:
    import torch
    from transformers import AutoModelForCausalLM

    from emsweep.train.model_init import init_model

    root = tmp_path_factory.mktemp("vllm_models")
    base = init_model("tiny", root / "base", seed=0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    sharpen_(model, seed=1, std=0.25)
    model.save_pretrained(base)
    lora = build_lora(base, root / "run" / "checkpoint-10", seed=2)
    lora_b = build_lora(base, root / "run" / "checkpoint-20", seed=3)
    full_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    sharpen_(full_model, seed=4, std=0.25)
    full = root / "full_run" / "checkpoint-30"
    full_model.save_pretrained(full)
    # TRL's checkpoint folders carry the tokenizer too
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(base).save_pretrained(full)
    return TinyModels(base=base, lora=lora, lora_b=lora_b, full=full)


@pytest.fixture(scope="session")
def lora_builder():
    """`build_lora(base, out, seed=, r=, **LoraConfig kwargs)` for tests that need an adapter of their own."""
    return build_lora
