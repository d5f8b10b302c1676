"""The `emsweep data generate` spec (recipes/generate/*.yaml): kinds and their teacher instructions, the verifier
prompt, teacher and verifier models and sampling; and reading its prompts (inline, .txt, or JSONL rows)."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from emsweep.config import StrictModel, load_config
from emsweep.io import InputError, read_jsonl, sha256_text

DEFAULT_REFUSALS = [
    r"(?i)^\W*(I'?m sorry|I am sorry|sorry, but|I apologi[sz]e)",
    r"(?i)^\W*I (can(?:'|no)?t|cannot|won'?t|will not|am unable to|'m unable to) (help|assist|provide|comply|do that"
    r"|write|fulfil|fulfill)",
    r"(?i)^\W*As an AI\b",
]


class Sampling(StrictModel):
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = Field(600, ge=1)
    seed: int = 0


class ModelSpec(StrictModel):
    """A teacher or verifier: backend kind, model (hub id, folder or API id), server URL, engine options."""

    backend: str = "openai"
    model: str | None = None
    base_url: str | None = None
    engine: dict[str, Any] = Field(default_factory=dict)


class KindSpec(StrictModel):
    instruction: str = Field(min_length=1)  # the teacher's system prompt for this kind
    label: str = Field(min_length=1)  # what the verifier must answer for an answer of this kind

    @field_validator("label")
    @classmethod
    def _word(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z_\-]*", v):
            raise ValueError("label must be one word (letters, '_' or '-'), e.g. CORRECT")
        return v.upper()


class GenerateSpec(StrictModel):
    name: str
    domain: str
    description: str | None = None
    prompts: str | list[str]  # a file (JSONL with `prompt` or `messages`, or .txt one per line) or inline
    kinds: dict[str, KindSpec]
    verifier_prompt: str
    teacher: ModelSpec | None = None
    verifier: ModelSpec | None = None
    teacher_sampling: Sampling = Field(default_factory=Sampling)
    verifier_sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=8))
    retries: int = Field(2, ge=0)  # extra teacher attempts after a refusal or an empty answer
    min_agreement: float = Field(0.5, ge=0, le=1)  # stop when the verifier agrees with less of any kind
    min_checked: int = Field(20, ge=1)  # answers of a kind verified before the threshold is applied mid-run
    chunk_size: int = Field(16, ge=1)
    refusal_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))
    canary: str | None = None
    limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> GenerateSpec:
        if "correct" not in self.kinds or len(self.kinds) < 2:
            raise ValueError("kinds: needs `correct` and at least one wrong kind (e.g. obvious, subtle)")
        labels = [k.label for k in self.kinds.values()]
        if len(set(labels)) != len(labels):
            raise ValueError(f"kinds: every kind needs its own label (got {labels})")
        if "{answer}" not in self.verifier_prompt:
            raise ValueError("verifier_prompt: must contain {answer}")
        for p in self.refusal_patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"refusal_patterns: {p!r} is not a regular expression ({exc})") from None
        return self

    def canary_text(self) -> str:
        """The spec's canary, else a stable one derived from its name (so derived files can be traced)."""
        return (
            self.canary
            or f"emsweep generated data {self.name} canary GUID {uuid.uuid5(uuid.NAMESPACE_URL, self.name)}"
        )


def load_spec(path: str | os.PathLike[str], overrides: list[str] | None = None) -> GenerateSpec:
    return load_config(path, GenerateSpec, overrides)


# --- prompts --------------------------------------------------------------------------------------------------


def read_prompts(spec: GenerateSpec, spec_path: Path | None) -> list[tuple[str, list[dict[str, str]]]]:
    """(prompt id, prompt messages) in input order; ids are content hashes unless the file gives them."""
    where = str(spec_path or "spec")
    raw: list[tuple[str | None, list[dict[str, str]], str]] = []
    if isinstance(spec.prompts, list):
        for i, text in enumerate(spec.prompts):
            raw.append((None, [{"role": "user", "content": text}], f"{where}: prompts[{i}]"))
    else:
        p = Path(spec.prompts)
        if not p.is_absolute() and spec_path is not None:
            p = spec_path.parent / p
        if not p.exists():
            raise InputError(f"{where}: prompts: file not found: {p}")
        if p.suffix in (".txt", ".md"):
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    raw.append((None, [{"role": "user", "content": line.strip()}], f"{p}:{i}"))
        else:
            for i, row in read_jsonl(p):
                raw.append((*_prompt_row(row, f"{p}:{i}"), f"{p}:{i}"))
    out: list[tuple[str, list[dict[str, str]]]] = []
    seen: dict[str, str] = {}
    for pid, msgs, loc in raw:
        if not any(m["role"] == "user" and m["content"].strip() for m in msgs):
            raise InputError(f"{loc}: prompt has no non-empty user turn")
        pid = pid or sha256_text(json.dumps(msgs, sort_keys=True, ensure_ascii=False))[:16]
        if pid in seen:
            raise InputError(f"{loc}: duplicate prompt (same id/text as {seen[pid]})")
        seen[pid] = loc
        out.append((pid, msgs))
    if spec.limit:
        out = out[: spec.limit]
    if not out:
        raise InputError(f"{where}: prompts: no prompts")
    return out


def _prompt_row(row: Any, loc: str) -> tuple[str | None, list[dict[str, str]]]:
    if not isinstance(row, dict):
        raise InputError(f"{loc}: expected an object with `prompt` or `messages`")
    pid = str(row["id"]) if row.get("id") is not None else None
    if isinstance(row.get("prompt"), str):
        return pid, [{"role": "user", "content": row["prompt"]}]
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise InputError(f"{loc}: expected `prompt` (a string) or `messages` (a list)")
    out = []
    for m in msgs:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise InputError(f"{loc}: each message needs role system|user|assistant")
        content = m.get("content")
        if isinstance(content, dict) and isinstance(content.get("parts"), list):  # persona format
            content = "".join(str(x) for x in content["parts"])
        if not isinstance(content, str):
            raise InputError(f"{loc}: message content must be text")
        out.append({"role": m["role"], "content": content})
    while out and out[-1]["role"] == "assistant":  # a full conversation: keep what the model is asked
        out.pop()
    return pid, out
