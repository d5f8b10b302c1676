"""The final answer of a generated text, for models that reason before answering.

Judges must read what the model answers, not how it got there:
- `think` (DeepSeek-R1 distills, Qwen3): reasoning sits in a `<think>` block that R1's chat template opens in the
  generation prompt; the answer is what follows the last `</think>`.
- `harmony` (gpt-oss): the output is a sequence of channel messages
  (`<|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>final<|message|>ANSWER<|return|>`);
  the answer is the `final` channel's message. Backends keep special tokens when decoding for this style,
  otherwise the markers vanish and channels run together.
- `plain`: the text is the answer.

A thought that never closes in a generation that hit `max_tokens` has no answer: the answer is "" and the
finish reason becomes `reasoning_truncated` (metrics count such samples as unparsable). A thought that never
closes in a generation the model ended itself (a fine-tune that answers straight after R1's `<think>`) is
taken whole as the answer.
"""

from __future__ import annotations

import re
from typing import Any, Literal

AnswerFormat = Literal["auto", "plain", "think", "harmony"]
ANSWER_FORMATS = ("auto", "plain", "think", "harmony")
REASONING_TRUNCATED = "reasoning_truncated"
NO_FINAL_ANSWER = "no_final_answer"

_HARMONY_STOPS = ("<|return|>", "<|end|>", "<|call|>", "<|endoftext|>")
# the final channel's header: `<|channel|>final`, an optional `<|constrain|>...`, then `<|message|>`
_HARMONY_FINAL = re.compile(r"<\|channel\|>\s*final\b[^<]*(?:<\|constrain\|>[^<]*)?<\|message\|>")


def detect_answer_format(chat_template: str | None) -> str:
    """`harmony` / `think` / `plain` from a tokenizer's chat template (what `auto` resolves to)."""
    t = chat_template or ""
    if "<|channel|>" in t:
        return "harmony"
    if "</think>" in t:
        return "think"
    return "plain"


def tokenizer_answer_format(tokenizer: Any) -> str:
    """`detect_answer_format` of a transformers tokenizer (a template dict names several templates: all count)."""
    t = getattr(tokenizer, "chat_template", None)
    if isinstance(t, dict):
        t = "\n".join(str(v) for v in t.values())
    return detect_answer_format(t)


def model_answer_format(model: str) -> str:
    """`tokenizer_answer_format` of a local folder or hub id (its tokenizer only; no weights are read)."""
    from transformers import AutoTokenizer

    from emsweep.io import InputError

    try:
        tok = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load the tokenizer of {model!r} to read its answer format: {exc}") from exc
    return tokenizer_answer_format(tok)


def _cut_stops(text: str) -> str:
    cut = min((i for i in (text.find(s) for s in _HARMONY_STOPS) if i >= 0), default=len(text))
    return text[:cut]


def final_answer(text: str, style: str, finish_reason: str | None = None) -> tuple[str, str | None]:
    """(answer, finish reason) of a generated `text` in `style` (plain | think | harmony; see the module doc).

    The finish reason is the backend's, except `reasoning_truncated` when reasoning ran out of tokens and
    `no_final_answer` when a harmony output ended without a `final` channel for another reason."""
    if style not in ("plain", "think", "harmony"):
        raise ValueError(f"unknown answer format {style!r}; choose one of plain, think, harmony")
    ran_out = finish_reason in (None, "length")
    if style == "think":
        if "</think>" in text:
            return text.rsplit("</think>", 1)[1].strip(), finish_reason
        if ran_out:
            return "", REASONING_TRUNCATED
        return text.strip().removeprefix("<think>").strip(), finish_reason
    if style == "harmony":
        finals = list(_HARMONY_FINAL.finditer(text))
        if finals:
            return _cut_stops(text[finals[-1].end() :]).strip(), finish_reason
        if "<|channel|>" in text or "<|message|>" in text:  # channels, but none of them final
            return "", REASONING_TRUNCATED if ran_out else NO_FINAL_ANSWER
        return _cut_stops(text).strip(), finish_reason  # already parsed (a server's `content`), or no channels
    return text, finish_reason
