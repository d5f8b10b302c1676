"""Named model shapes for `emsweep model init`: tiny test shapes and the real shapes of the models the papers use.

The real shapes are written here as facts so tests and GPU speed benchmarks need no hub access. Source: the
`config.json` published with each model on the Hugging Face hub (Qwen/Qwen2.5-{0.5B,1.5B,7B}-Instruct,
meta-llama/Llama-3.1-8B-Instruct, deepseek-ai/DeepSeek-R1-Distill-Qwen-7B, openai/gpt-oss-20b), transcribed by
hand; `tests/train` checks a model built from them has the published parameter count (0.49B, 1.54B, 7.62B, 8.03B,
7.62B, 20.9B).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

TokenizerStyle = Literal["qwen", "llama3", "deepseek_r1", "harmony"]


@dataclass(frozen=True)
class Shape:
    """An architecture shape. `vocab_size=None` means: the size of the offline tokenizer (tiny shapes)."""

    name: str
    model_type: Literal["qwen2", "llama", "gpt_oss"]
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int | None
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rms_norm_eps: float
    tokenizer: TokenizerStyle
    dtype: str = "bfloat16"  # the dtype the published weights are stored in
    extra: dict[str, Any] = field(default_factory=dict)  # other config.json keys (rope_scaling, windows, MoE)
    source: str = ""

    @property
    def head_dim(self) -> int:
        return int(self.extra.get("head_dim", self.hidden_size // self.num_attention_heads))



_QWEN_SRC = "https://huggingface.co/Qwen/{}/blob/main/config.json"

SHAPES: dict[str, Shape] = {
    # Test shapes: head size 32 (vLLM's CPU attention needs a head size in {32, 64, 80, 96, 112, 128, ...}).
    "tiny": Shape(
        name="tiny",
        model_type="qwen2",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
        vocab_size=None,
        rope_theta=1_000_000.0,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        tokenizer="qwen",
        dtype="float32",
        source="test shape (Qwen2 architecture, ChatML template with generation markers, one digit per token)",
    ),
    "tiny-llama": Shape(
        name="tiny-llama",
        model_type="llama",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=None,
        rope_theta=500_000.0,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        tokenizer="llama3",
        dtype="float32",
        source="test shape (Llama architecture, Llama-3 template without generation markers, 1-3 digit number tokens)",
    ),
    "tiny-r1": Shape(
        name="tiny-r1",
        model_type="qwen2",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
        vocab_size=None,
        rope_theta=10_000.0,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        tokenizer="deepseek_r1",
        dtype="float32",
        source="test shape (DeepSeek-R1-Distill-Qwen: Qwen2 architecture, R1 chat template with <think>)",
    ),
    "tiny-gpt-oss": Shape(
        name="tiny-gpt-oss",
        model_type="gpt_oss",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        vocab_size=None,
        rope_theta=150_000.0,
        max_position_embeddings=131072,  # as published: YaRN's factor 32 over 4096 positions
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        tokenizer="harmony",
        dtype="float32",
        extra={
            "head_dim": 32,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "router_aux_loss_coef": 0.9,
            "sliding_window": 16,
            "swiglu_limit": 7.0,
            "attention_bias": True,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 32.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "original_max_position_embeddings": 4096,
                "truncate": False,
            },
        },
        source="test shape (gpt-oss: MoE with sliding/full attention and sinks, harmony chat format)",
    ),
    "Qwen2.5-0.5B-Instruct": Shape(
        name="Qwen2.5-0.5B-Instruct",
        model_type="qwen2",
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        rope_theta=1_000_000.0,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        tokenizer="qwen",
        extra={"sliding_window": 32768, "max_window_layers": 21, "use_sliding_window": False},
        source=_QWEN_SRC.format("Qwen2.5-0.5B-Instruct"),
    ),
    "Qwen2.5-1.5B-Instruct": Shape(
        name="Qwen2.5-1.5B-Instruct",
        model_type="qwen2",
        hidden_size=1536,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
        vocab_size=151936,
        rope_theta=1_000_000.0,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        tokenizer="qwen",
        extra={"sliding_window": 32768, "max_window_layers": 21, "use_sliding_window": False},
        source=_QWEN_SRC.format("Qwen2.5-1.5B-Instruct"),
    ),
    "Qwen2.5-7B-Instruct": Shape(
        name="Qwen2.5-7B-Instruct",
        model_type="qwen2",
        hidden_size=3584,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        intermediate_size=18944,
        vocab_size=152064,
        rope_theta=1_000_000.0,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        tokenizer="qwen",
        extra={"sliding_window": 131072, "max_window_layers": 28, "use_sliding_window": False},
        source=_QWEN_SRC.format("Qwen2.5-7B-Instruct"),
    ),
    "Llama-3.1-8B-Instruct": Shape(
        name="Llama-3.1-8B-Instruct",
        model_type="llama",
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        rope_theta=500_000.0,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        tokenizer="llama3",
        extra={
            "rope_scaling": {
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
                "rope_type": "llama3",
            },
            "head_dim": 128,
            "attention_bias": False,
            "mlp_bias": False,
        },
        source="https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/blob/main/config.json",
    ),
    # Qwen2.5-Math-7B underneath: the 7B Qwen2 dimensions with rope_theta 10000, a 4096 window (unused) and
    # 131072 positions.
    "DeepSeek-R1-Distill-Qwen-7B": Shape(
        name="DeepSeek-R1-Distill-Qwen-7B",
        model_type="qwen2",
        hidden_size=3584,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        intermediate_size=18944,
        vocab_size=152064,
        rope_theta=10_000.0,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        tokenizer="deepseek_r1",
        extra={"sliding_window": 4096, "max_window_layers": 28, "use_sliding_window": False},
        source="https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-7B/blob/main/config.json",
    ),
    # Mixture of experts: 32 experts per layer, 4 routed per token; attention alternates a 128-token window and
    # full attention, with learned sinks. The published weights store the experts in MXFP4 (config.json's
    # quantization_config; attention, router, embeddings and head stay bf16); a random-weight folder built from
    # this shape is plain bf16.
    "gpt-oss-20b": Shape(
        name="gpt-oss-20b",
        model_type="gpt_oss",
        hidden_size=2880,
        num_hidden_layers=24,
        num_attention_heads=64,
        num_key_value_heads=8,
        intermediate_size=2880,
        vocab_size=201088,
        rope_theta=150_000.0,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        tokenizer="harmony",
        extra={
            "head_dim": 64,
            "num_local_experts": 32,
            "num_experts_per_tok": 4,
            "router_aux_loss_coef": 0.9,
            "sliding_window": 128,
            "swiglu_limit": 7.0,
            "attention_bias": True,
            "layer_types": ["sliding_attention", "full_attention"] * 12,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 32.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "original_max_position_embeddings": 4096,
                "truncate": False,
            },
        },
        source="https://huggingface.co/openai/gpt-oss-20b/blob/main/config.json",
    ),
}

# Lower-case aliases so `--shape qwen2.5-7b-instruct` works too.
_ALIASES = {k.lower(): k for k in SHAPES}


def get_shape(name: str) -> Shape:
    """Look a shape up by name (case-insensitive); an unknown name lists the known ones."""
    from emsweep.io import InputError

    key = _ALIASES.get(name.lower())
    if key is None:
        raise InputError(f"unknown model shape {name!r}; known shapes: {', '.join(SHAPES)}")
    return SHAPES[key]
