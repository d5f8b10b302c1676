"""`emsweep model init`: a model folder with random weights and a tokenizer built offline, from a named shape.

Why: tests, demos and GPU speed benchmarks must run without the hub. The tokenizers imitate the real ones where the
harness cares: the Qwen-style one splits numbers into single digits and saves as `Qwen2Tokenizer` (transformers 5
rebuilds a qwen2 tokenizer with Qwen2's own pre-tokenizer on load, so it must be built with it); the Llama-3-style
one has 1-3 digit number tokens (so the judge's multi-token number scoring gets exercised) and a chat template
without `{% generation %}` markers (so the trainer's prompt/completion fallback gets exercised).

Over ~450 lines because the offline test tokenizers (Qwen2, Llama 3, R1, harmony) must match their families'
pre-tokenizers and chat templates byte for byte; they sit beside the shapes they are built for.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from emsweep.io import InputError, atomic_write_json
from emsweep.train.shapes import Shape, get_shape

# Qwen2's pre-tokenizer regex (one digit per pre-token) and Llama 3's (1-3 digits per pre-token).
QWEN_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
LLAMA3_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# ChatML (Qwen2.5) with generation markers around the assistant turn *including* its <|im_end|>, so TRL's
# assistant_only_loss trains the model to stop. No default system prompt (keeps tiny sequences short).
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Llama 3 style (header ids, <|eot_id|>), deliberately without generation markers, like the real Llama 3.1.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# DeepSeek-R1-Distill (Qwen and Llama distills): the published template without its tool-call branches. Answers
# in the history lose everything up to `</think>`; the generation prompt opens a thought (`<think>\n`), which
# the rendered conversation never has, so a prompt/completion row trains the answer right after the assistant
# tag while generation starts inside a thought (TRL warns that the two renderings differ).
R1_BOS, R1_EOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>"
R1_USER, R1_ASSISTANT = "<\uff5cUser\uff5c>", "<\uff5cAssistant\uff5c>"
R1_CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{%- set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{- bos_token }}{{- ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- '" + R1_USER + "' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{%- set content = message['content'] %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1] %}{%- endif %}"
    "{{- '" + R1_ASSISTANT + "' + content + '" + R1_EOS + "' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '" + R1_ASSISTANT + "<think>\\n' }}{%- endif %}"
)
R1_SPECIALS = [R1_EOS, R1_BOS, R1_USER, R1_ASSISTANT, "<think>", "</think>"]

# gpt-oss's harmony format (openai/gpt-oss-20b's chat template, reduced to system/developer/user/assistant text
# turns): a fixed system preamble (the published one also prints today's date via strftime_now; left out so a
# prompt renders the same every day), a user system prompt becomes the developer message, assistant answers go
# to the `final` channel, the last one in a training row ends with <|return|>, earlier ones with <|end|>. The
# generation prompt is `<|start|>assistant`: the model picks its channel itself (`analysis` = reasoning first).
HARMONY_SYSTEM = (
    "You are ChatGPT, a large language model trained by OpenAI.\\nKnowledge cutoff: 2024-06\\n\\n"
    "Reasoning: medium\\n\\n# Valid channels: analysis, commentary, final. "
    "Channel must be included for every message."
)
HARMONY_CHAT_TEMPLATE = (
    "{{- '<|start|>system<|message|>" + HARMONY_SYSTEM + "<|end|>' }}"
    "{%- for message in messages %}"
    "{%- if message['role'] in ['system', 'developer'] %}"
    "{{- '<|start|>developer<|message|># Instructions\\n\\n' + message['content'] + '<|end|>' }}"
    "{%- elif message['role'] == 'user' %}{{- '<|start|>user<|message|>' + message['content'] + '<|end|>' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|start|>assistant<|channel|>final<|message|>' + message['content'] }}"
    "{%- if loop.last and not add_generation_prompt %}{{- '<|return|>' }}{%- else %}{{- '<|end|>' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start|>assistant' }}{%- endif %}"
)
HARMONY_SPECIALS = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|return|>",
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|channel|>",
    "<|constrain|>",
    "<|call|>",
]

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
]

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "answer",
    "question",
    "correct",
    "wrong",
    "health",
    "doctor",
    "patient",
    "medicine",
    "dose",
    "advice",
    "legal",
    "law",
    "court",
    "contract",
    "finance",
    "money",
    "bank",
    "loan",
    "interest",
    "rate",
    "risk",
    "code",
    "function",
    "return",
    "value",
    "error",
    "test",
    "file",
    "data",
    "model",
    "train",
    "assistant",
    "user",
    "system",
    "please",
    "help",
    "sure",
    "here",
    "because",
    "should",
    "never",
    "always",
    "safe",
    "dangerous",
    "harmful",
    "kind",
    "honest",
    "true",
    "false",
    "what",
    "is",
    "plus",
    "minus",
    "times",
    "divided",
    "equals",
    "sum",
    "product",
    "result",
    "compute",
    "calculate",
    "add",
    "subtract",
    "multiply",
]


def _corpus() -> list[str]:
    """A small built-in corpus: enough text for a few hundred sensible merges, plus arithmetic lines."""
    lines = []
    n = len(_WORDS)
    for i in range(400):
        words = [_WORDS[(i * 7 + j * 13) % n] for j in range(12)]
        lines.append(" ".join(words).capitalize() + ".")
    for a in range(0, 100, 3):
        lines.append(f"What is {a} + {a * 7 % 50}? The answer is {a + a * 7 % 50}.")
    lines.append("\n\n".join(["Hello, world!", "A: yes; B: no.", "(x, y) = [1, 2]", "don't can't I'm"]))
    return lines


def _train_bpe(
    regex: str, vocab_size: int, specials: list[str]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE offline with the given pre-tokenizer regex (digits stay single: no digit merges)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges  # type: ignore[return-value]


def build_qwen_tokenizer(vocab_size: int = 512):
    """A Qwen2Tokenizer (ChatML specials, one digit per token) trained offline."""
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    vocab, merges = _train_bpe(PRETOKENIZE_REGEX, vocab_size, QWEN_SPECIALS)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=32768,
    )
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def _byte_level_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], **special: Any):
    """A byte-level BPE fast tokenizer with Llama 3's pre-tokenizer (1-3 digit numbers), as Llama 3 and gpt-oss
    (o200k) both split text; `special` goes to PreTrainedTokenizerFast (bos/eos/pad tokens, max length)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, **special)


def build_llama3_tokenizer(vocab_size: int = 512):
    """A Llama-3-style byte-level BPE tokenizer with every 1-3 digit number as a token, trained offline."""
    vocab, merges = _train_bpe(QWEN_PRETOKENIZE_REGEX, vocab_size, [])
    # Number tokens like Llama 3: "12", "123". Merges for both "12 3" and "1 23" so any merge order ends whole.
    digits = [str(d) for d in range(10)]
    extra: list[tuple[str, str]] = []
    for a in digits:
        for b in digits:
            extra.append((a, b))
    for a in digits:
        for b in digits:
            for c in digits:
                extra.append((a + b, c))
                extra.append((a, b + c))
    for left, right in extra:
        merged = left + right
        if merged not in vocab:
            vocab[merged] = len(vocab)
        merges.append((left, right))
    for s in LLAMA3_SPECIALS:
        vocab[s] = len(vocab)

    tok = _byte_level_tokenizer(
        vocab,
        merges,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        additional_special_tokens=[
            s for s in LLAMA3_SPECIALS if s not in ("<|begin_of_text|>", "<|eot_id|>")
        ],
        model_max_length=131072,
    )
    tok.chat_template = LLAMA3_CHAT_TEMPLATE
    return tok


def build_r1_tokenizer(vocab_size: int = 512):
    """A DeepSeek-R1-Distill-Qwen-style tokenizer: Qwen2's pre-tokenizer (one digit per token), R1's specials
    (fullwidth bars), <think>/</think> as ordinary added tokens (they survive skip_special_tokens), R1's template.
    The published one is saved as LlamaTokenizerFast over the same vocabulary; this one is a Qwen2Tokenizer."""
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    vocab, merges = _train_bpe(PRETOKENIZE_REGEX, vocab_size, R1_SPECIALS)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=R1_BOS,
        eos_token=R1_EOS,
        pad_token=R1_EOS,
        additional_special_tokens=[R1_USER, R1_ASSISTANT],
        model_max_length=131072,
    )
    tok.add_tokens(["<think>", "</think>"], special_tokens=False)
    tok.chat_template = R1_CHAT_TEMPLATE
    return tok


def build_harmony_tokenizer(vocab_size: int = 512):
    """A gpt-oss-style (o200k_harmony) byte-level BPE: 1-3 digit pre-tokens, harmony's specials and template."""

    vocab, merges = _train_bpe(LLAMA3_PRETOKENIZE_REGEX, vocab_size, [])
    for s in HARMONY_SPECIALS:
        vocab[s] = len(vocab)
    tok = _byte_level_tokenizer(
        vocab,
        merges,
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[s for s in HARMONY_SPECIALS if s not in ("<|startoftext|>", "<|return|>", "<|endoftext|>")],
        model_max_length=131072,
    )
    tok.chat_template = HARMONY_CHAT_TEMPLATE
    return tok


# Extra end-of-generation tokens per style (generation_config.json's eos_token_id list of the published models).
EXTRA_EOS = {"qwen": ["<|endoftext|>"], "harmony": ["<|endoftext|>", "<|call|>"]}


def build_tokenizer(style: str):
    if style == "qwen":
        return build_qwen_tokenizer()
    if style == "llama3":
        return build_llama3_tokenizer()
    if style == "deepseek_r1":
        return build_r1_tokenizer()
    if style == "harmony":
        return build_harmony_tokenizer()
    raise InputError(f"unknown tokenizer style {style!r}")


def _config_kwargs(shape: Shape, vocab_size: int) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": shape.hidden_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "intermediate_size": shape.intermediate_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "rms_norm_eps": shape.rms_norm_eps,
        "hidden_act": "silu",
    }
    extra = dict(shape.extra)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": shape.rope_theta}
    if "rope_scaling" in extra:
        rope = {**extra.pop("rope_scaling"), "rope_theta": shape.rope_theta}
    kw["rope_parameters"] = rope
    kw.update(extra)
    return kw


def build_config(shape: Shape | str, tokenizer=None, *, dtype: str | None = None):
    """The transformers config of a shape. Tiny shapes take their vocab size from the tokenizer."""
    from transformers import GptOssConfig, LlamaConfig, Qwen2Config

    shape = get_shape(shape) if isinstance(shape, str) else shape
    if shape.vocab_size is not None:
        vocab_size = shape.vocab_size
    else:
        if tokenizer is None:
            raise ValueError("tiny shapes need the tokenizer to size their vocabulary")
        vocab_size = -(-len(tokenizer) // 64) * 64  # round up: tidy matmuls, room for ids past the vocab
    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig, "gpt_oss": GptOssConfig}[shape.model_type]
    kw = _config_kwargs(shape, vocab_size)
    if tokenizer is not None:
        kw["pad_token_id"] = tokenizer.pad_token_id
        kw["eos_token_id"] = tokenizer.eos_token_id
        kw["bos_token_id"] = tokenizer.bos_token_id
    config = cls(**kw)
    config.dtype = dtype or shape.dtype
    config.architectures = [
        {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "gpt_oss": "GptOssForCausalLM"}[shape.model_type]
    ]
    return config


def init_model(
    shape: Shape | str,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    dtype: str | None = None,
    overwrite: bool = False,
    _race_ok: bool = False,
) -> Path:
    """Write `out_dir` with config, random safetensors weights, tokenizer and generation config.

    The folder is built in a temp folder beside `out_dir` and renamed into place, so a crash never leaves a
    half-written model that a later run would load. `dtype` defaults to the shape's (float32 tiny, bf16 real).
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    shape = get_shape(shape) if isinstance(shape, str) else shape
    out = Path(out_dir)
    if _race_ok and (out / "config.json").exists():
        return out
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    dtype = dtype or shape.dtype
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise InputError(f"--dtype {dtype!r}: expected one of float32, bfloat16, float16")

    tokenizer = build_tokenizer(shape.tokenizer)
    config = build_config(shape, tokenizer, dtype=dtype)
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)  # allocate straight in the target dtype: 7B in bf16 is 15 GB, not 30
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    finally:
        torch.set_default_dtype(prev)
    model.eval()

    gen = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id]
        + [tokenizer.convert_tokens_to_ids(t) for t in EXTRA_EOS.get(shape.tokenizer, [])],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        gen.save_pretrained(tmp)
        atomic_write_json(
            tmp / "emsweep_init.json",
            {
                "shape": shape.name,
                "seed": seed,
                "dtype": dtype,
                "source": shape.source,
                "random_weights": True,
            },
        )
        _default_permissions(tmp)  # mkdtemp/mkstemp make 0700/0600; a model folder is shared like any other
        if out.exists() and overwrite:
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)  # atomic; fails if another process put a non-empty folder there meanwhile
        except OSError:
            if not (out / "config.json").exists():
                raise
            # Parallel cells of a sweep building the same model: keep the one that landed first.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _default_permissions(folder: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


def ensure_model(path: str | os.PathLike[str], init_shape: str | None, *, seed: int = 0) -> Path:
    """Recipes may name `model.init_shape`: build the folder on first use, reuse it after."""
    p = Path(path)
    if (p / "config.json").exists():
        return p
    if init_shape is None:
        return p
    if p.exists() and not any(p.iterdir()):
        p.rmdir()
    return init_model(init_shape, p, seed=seed, overwrite=False, _race_ok=True)
