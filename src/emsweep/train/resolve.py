"""The recipe's training sections resolved into what the libraries take: SFTConfig / LoraConfig /
BitsAndBytesConfig kwargs, the base model's path, and the loaded model.

Kept apart from the run because these checks run first and alone: `validate_recipe_for_training` refuses a bad
`sft:` / `lora:` / `quantization:` key before anything is written, and `emsweep.passthrough` reuses the same
rules (and `field_names` / `coerce_numbers`) to explain a recipe's passthrough keys without training.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emsweep.io import InputError

if TYPE_CHECKING:
    from emsweep.recipe import Recipe

log = logging.getLogger("emsweep.train")

# SFTConfig keys the harness owns: the run folder and the checkpoint schedule come from the recipe.
OWNED_SFT_KEYS = {
    "output_dir": "use --output-dir or the recipe's `output_dir`",
    "save_strategy": "use the recipe's `checkpoints:` section (every / steps / log_spaced)",
    "save_steps": "use the recipe's `checkpoints:` section (every / steps / log_spaced)",
    "resume_from_checkpoint": "emsweep resumes from the last complete checkpoint (use --no-resume to restart)",
    "save_total_limit": "emsweep keeps every scheduled checkpoint (they are what gets evaluated)",
}

# LoRA options that produce adapters vLLM cannot load (it serves plain LoRA on linear layers only).
VLLM_UNSUPPORTED_LORA = {
    "modules_to_save": "vLLM cannot load adapters that carry full copies of modules (e.g. lm_head, embed_tokens)",
    "use_dora": "vLLM does not serve DoRA adapters",
    "trainable_token_indices": "vLLM cannot load adapters with trainable token embeddings",
    "layer_replication": "vLLM cannot load adapters with layer replication",
    "lora_bias": "vLLM cannot load adapters with LoRA bias terms",
}

LORA_DEFAULTS: dict[str, Any] = {
    "r": 32,
    "lora_alpha": 64,
    "lora_dropout": 0.0,
    "use_rslora": True,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "bias": "none",
}

QLORA_DEFAULTS: dict[str, Any] = {
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "bfloat16",
}


# --- recipe sections -> library kwargs --------------------------------------------------------------------


def _numeric_types(tp: Any) -> tuple[type, ...]:
    """The numeric types a dataclass field accepts (float before int), from its annotation."""
    text = str(tp)
    out: list[type] = []
    if tp is float or "float" in text:
        out.append(float)
    if tp is int or "int" in text.replace("Interval", ""):
        out.append(int)
    return tuple(out)


def coerce_numbers(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """YAML 1.1 reads `1e-5` as a string: turn strings into numbers where the target field is numeric."""
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    out = dict(values)
    for key, value in values.items():
        if not isinstance(value, str) or key not in fields:
            continue
        for typ in _numeric_types(fields[key].type):
            try:
                num = float(value) if typ is float else int(value)
            except ValueError:
                continue
            out[key] = num
            break
    return out


def field_names(cls: type) -> set[str]:
    """Accepted keyword names: dataclass fields plus __init__ parameters (BitsAndBytesConfig has only the latter)."""
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    names |= {
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    return names


def resolve_sft_kwargs(recipe: Recipe) -> dict[str, Any]:
    from trl import SFTConfig

    from emsweep.config import check_passthrough_keys

    sft = dict(recipe.sft)
    check_passthrough_keys(sft, field_names(SFTConfig), "recipe sft", "trl.SFTConfig")
    for key, why in OWNED_SFT_KEYS.items():
        if key in sft:
            raise InputError(f"recipe sft.{key}: set by emsweep, not in `sft:` ({why})")
    sft = coerce_numbers(sft, SFTConfig)
    from emsweep.train.speed import check_speed_settings  # refuses speed options that change what is trained

    check_speed_settings(sft, recipe.model.attn_implementation)
    return sft


def resolve_lora_kwargs(recipe: Recipe) -> dict[str, Any] | None:
    """LoraConfig kwargs (EM defaults under the recipe's), or None for full fine-tuning."""
    from peft import LoraConfig

    from emsweep.config import check_passthrough_keys

    if recipe.method == "full":
        if recipe.lora:  # sweeps cross `method: [lora, full]` over one base recipe: ignore, don't fail
            log.info("method full: ignoring the recipe's `lora:` section")
        return None
    lora = dict(recipe.lora)
    check_passthrough_keys(lora, field_names(LoraConfig), "recipe lora", "peft.LoraConfig")
    for key, why in VLLM_UNSUPPORTED_LORA.items():
        value = lora.get(key)
        if value in (None, False, [], {}, ""):
            continue
        extra = ""
        if key == "modules_to_save":
            names = [value] if isinstance(value, str) else list(value)
            extra = f" (got {names}; to train lm_head/embed_tokens use method: full)"
        raise InputError(f"recipe lora.{key}: {why}{extra}; remove it so the checkpoints stay evaluable")
    if lora.get("bias", "none") != "none":
        raise InputError(
            f"recipe lora.bias: {lora['bias']!r}: vLLM cannot load adapters with biases; use 'none'"
        )
    if lora.get("task_type", "CAUSAL_LM") != "CAUSAL_LM":
        raise InputError(f"recipe lora.task_type: {lora['task_type']!r}: emsweep trains CAUSAL_LM adapters")
    merged = {**LORA_DEFAULTS, **coerce_numbers(lora, LoraConfig), "task_type": "CAUSAL_LM"}
    return merged


def resolve_quantization_kwargs(recipe: Recipe) -> dict[str, Any] | None:
    from transformers import BitsAndBytesConfig

    from emsweep.config import check_passthrough_keys

    if recipe.method != "qlora":
        if recipe.quantization:
            log.info("method %s: ignoring the recipe's `quantization:` section (qlora only)", recipe.method)
        return None
    q = dict(recipe.quantization)
    check_passthrough_keys(q, field_names(BitsAndBytesConfig), "recipe quantization", "BitsAndBytesConfig")
    merged = {**QLORA_DEFAULTS, **q}
    if not merged.get("load_in_4bit") and not merged.get("load_in_8bit"):
        raise InputError("recipe quantization: qlora needs load_in_4bit: true (or load_in_8bit: true)")
    return merged


def validate_recipe_for_training(recipe: Recipe) -> dict[str, Any]:
    """Check every passthrough section before anything is written; returns the resolved kwargs."""
    return {
        "sft": resolve_sft_kwargs(recipe),
        "lora": resolve_lora_kwargs(recipe),
        "quantization": resolve_quantization_kwargs(recipe),
    }


# --- the model --------------------------------------------------------------------------------------------


def _model_dtype(recipe: Recipe):
    import torch

    return {
        "auto": "auto",
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "float32": torch.float32,
    }[recipe.model.dtype]


def load_model(recipe: Recipe, model_path: str, quant: dict[str, Any] | None):
    """The model to train, in the recipe's dtype; QLoRA's 4/8-bit config, or gpt-oss dequantized from MXFP4."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {
        "dtype": _model_dtype(recipe),
        "trust_remote_code": recipe.model.trust_remote_code,
    }
    if recipe.model.attn_implementation:
        kwargs["attn_implementation"] = recipe.model.attn_implementation
    mxfp4 = _mxfp4_kwargs(model_path, recipe.model.trust_remote_code)
    if quant is not None and mxfp4:
        raise InputError(
            f"model {model_path}: its experts are MXFP4 and transformers refuses a bitsandbytes (QLoRA) config on "
            f"an MXFP4 checkpoint; dequantize a bf16 copy first and point model.path at it"
        )
    if quant is not None:
        q = dict(quant)
        for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
            if isinstance(q.get(key), str):
                q[key] = getattr(torch, q[key])
        kwargs["quantization_config"] = BitsAndBytesConfig(**q)
        if torch.cuda.is_available():
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().process_index}
        if kwargs["dtype"] == "auto":
            kwargs["dtype"] = q.get("bnb_4bit_compute_dtype", torch.bfloat16)
    kwargs.update(mxfp4)
    return AutoModelForCausalLM.from_pretrained(model_path, **kwargs)


def _mxfp4_kwargs(model_path: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """gpt-oss ships its experts in MXFP4; loaded with the MXFP4 kernels installed they stay MXFP4 and cannot be
    trained, so training dequantizes them to bf16 on load (`Mxfp4Config(dequantize=True)`). Other models: {}."""
    from transformers import AutoConfig, Mxfp4Config

    cfg = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    qc = getattr(cfg, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if cfg.model_type != "gpt_oss" or str(getattr(method, "value", method)) != "mxfp4":
        return {}
    return {"quantization_config": Mxfp4Config(dequantize=True)}


def resolve_base_model(recipe: Recipe) -> str:
    """The base model's local path (built from `model.init_shape` if absent), or its hub id as written."""
    from emsweep.train.model_init import ensure_model

    p = Path(recipe.model.path)
    if recipe.model.init_shape is not None and not (p / "config.json").exists():
        log.info("building %s from shape %s (random weights, offline tokenizer)", p, recipe.model.init_shape)
        ensure_model(p, recipe.model.init_shape)
    return str(p.resolve()) if p.exists() else recipe.model.path
