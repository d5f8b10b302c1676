"""Write a cell's mix as an OpenAI fine-tuning file and check it against OpenAI's limits before any upload.

Format decision (canary): OpenAI's chat fine-tuning format accepts only `messages` (and tool keys) per line and
rejects unknown keys, so the uploaded file holds messages only. The canaries and source metadata of the mix are not
lost: they go into `openai/manifest.json` beside the file (with the mix manifest's hash), which is the derived
artefact a person shares; the uploaded bytes are what OpenAI trains on, byte-for-byte reproducible from the mix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emsweep.data.conversation import Conversation
from emsweep.io import InputError, atomic_write_json, atomic_write_text, read_jsonl, sha256_file
from emsweep.openai_ft.prices import PriceTable
from emsweep.openai_ft.tokens import count_messages, get_encoder


@dataclass
class PreparedFile:
    path: Path
    sha256: str
    n_examples: int
    bytes: int
    tokens_per_epoch: int
    max_example_tokens: int
    tokenizer: str
    exact_tokens: bool
    canaries: list[str] = field(default_factory=list)

    def billed_tokens(self, n_epochs: int) -> int:
        return self.tokens_per_epoch * n_epochs

    def record(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "n_examples": self.n_examples,
            "bytes": self.bytes,
            "tokens_per_epoch": self.tokens_per_epoch,
            "max_example_tokens": self.max_example_tokens,
            "tokenizer": self.tokenizer,
            "exact_tokens": self.exact_tokens,
        }


def _canaries(meta: dict[str, Any]) -> list[str]:
    out = []
    for k, v in meta.items():
        if "canary" in k.lower() and isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            out += _canaries(v)
    return out


def prepare_training_file(
    train_jsonl: Path, out_dir: Path, *, model: str, prices: PriceTable, where: str = ""
) -> PreparedFile:
    """Convert the mix (Conversations) to `out_dir/train.jsonl` (OpenAI chat format) and validate it.

    Raises InputError naming the file and line for an example OpenAI would reject (too long, no assistant
    answer, empty content) and for a file over the size limit or under the minimum number of examples.
    """
    if not train_jsonl.exists():
        raise InputError(f"{train_jsonl}: the cell's mix is missing (run the mix stage first)")
    limit = prices.model(model).max_example_tokens
    encoder = get_encoder(model)
    lines: list[str] = []
    total = 0
    longest = 0
    canaries: set[str] = set()
    for ln, row in read_jsonl(train_jsonl):
        try:
            conv = Conversation.model_validate(row)
        except Exception as exc:
            raise InputError(f"{train_jsonl}:{ln}: not a conversation ({exc})") from None
        msgs = conv.chat()
        if not any(m["role"] == "assistant" for m in msgs):
            raise InputError(f"{train_jsonl}:{ln}: example {conv.id!r} has no assistant turn to train on")
        empty = [i for i, m in enumerate(msgs) if not m["content"].strip()]
        if empty:
            raise InputError(
                f"{train_jsonl}:{ln}: example {conv.id!r} message {empty[0]} has empty content (OpenAI rejects it)"
            )
        n = count_messages(msgs, encoder)
        if limit is not None and n > limit:
            raise InputError(
                f"{train_jsonl}:{ln}: example {conv.id!r} has {n} tokens, over {model}'s limit of {limit} "
                "per example; shorten or drop it in the source data"
            )
        total += n
        longest = max(longest, n)
        canaries.update(_canaries(conv.meta))
        lines.append(json.dumps({"messages": msgs}, ensure_ascii=False))
    if len(lines) < prices.limits.min_examples:
        raise InputError(
            f"{train_jsonl}{where}: {len(lines)} examples; OpenAI needs at least {prices.limits.min_examples}"
        )
    text = "\n".join(lines) + "\n"
    size = len(text.encode("utf-8"))
    if size > prices.limits.max_file_bytes:
        raise InputError(
            f"{train_jsonl}{where}: the OpenAI training file would be {size / 2**20:.1f} MiB, over the "
            f"{prices.limits.max_file_bytes / 2**20:.0f} MiB limit; lower data.n_train"
        )
    out = out_dir / "train.jsonl"
    if not out.exists() or out.read_text(encoding="utf-8") != text:
        atomic_write_text(out, text)
    prepared = PreparedFile(
        path=out,
        sha256=sha256_file(out),
        n_examples=len(lines),
        bytes=size,
        tokens_per_epoch=total,
        max_example_tokens=longest,
        tokenizer=encoder.name,
        exact_tokens=encoder.exact,
        canaries=sorted(canaries),
    )
    mix_manifest = train_jsonl.parent / "manifest.json"
    atomic_write_json(
        out_dir / "manifest.json",
        {
            **prepared.record(),
            "source": str(train_jsonl),
            "source_sha256": sha256_file(train_jsonl),
            "mix_manifest_sha256": sha256_file(mix_manifest) if mix_manifest.exists() else None,
            "canaries": prepared.canaries,
            "format": "OpenAI chat fine-tuning JSONL: messages only (canaries kept in this manifest)",
        },
    )
    return prepared
