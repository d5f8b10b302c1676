"""The one interface every generation backend implements (HF here, vLLM, OpenAI and OpenAI-compatible).

A backend is handed requests that each name the checkpoint (base, LoRA adapter, full weights or API model) they
run on, so one backend instance can serve every checkpoint of a sweep: the HF backend swaps PEFT adapters on one
loaded base, vLLM batches `LoRARequest`s on one engine. Judges use the same backends through `top_logprobs`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from emsweep.config import StrictModel
from emsweep.layout import CheckpointRef


class SamplingSpec(StrictModel):
    """The papers' protocol by default: temperature 1, up to 600 new tokens."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 600
    seed: int = 0
    ignore_eos: bool = False  # benchmarks: fixed output length so every backend does the same work


@dataclass
class GenerationRequest:
    """Generate `n` samples for one chat prompt on one checkpoint, or only the samples `sample_indices` of them
    (a rerun with a larger `--samples` generates just the new ones; sample j keeps its seed either way). Outputs
    hold one text per index, in the order of `indices()`."""

    request_id: str
    checkpoint: CheckpointRef
    messages: list[dict[str, str]]
    n: int = 1
    meta: dict[str, Any] = field(default_factory=dict)
    sample_indices: list[int] | None = None

    def indices(self) -> list[int]:
        return list(range(self.n)) if self.sample_indices is None else list(self.sample_indices)


@dataclass
class GenerationOutput:
    request_id: str
    checkpoint: str
    texts: list[str]
    seeds: list[int]
    finish_reasons: list[str] = field(default_factory=list)
    num_output_tokens: list[int] = field(default_factory=list)


@dataclass
class LogprobRequest:
    """Next-token log-probabilities after a chat prompt (generation prompt added by the chat template), optionally
    after `continuation` token ids already appended (the judge walks multi-token numbers this way).

    `token_ids`: exact logprobs wanted for these ids, on top of the top-k (vLLM's `logprob_token_ids`); a
    backend that cannot (OpenAI) returns only what it has and says so via `supports_token_ids`.
    """

    request_id: str
    checkpoint: CheckpointRef
    messages: list[dict[str, str]]
    continuation: list[int] = field(default_factory=list)
    token_ids: list[int] | None = None
    top_k: int = 20


@dataclass
class TokenLogprob:
    token: str
    token_id: int | None
    logprob: float


@dataclass
class LogprobOutput:
    request_id: str
    top: list[TokenLogprob]  # sorted, most likely first
    requested: dict[int, float] = field(default_factory=dict)  # token_id -> logprob for `token_ids`


class GenerationBackend(ABC):
    """Base class of generation/judge backends. Backends are context managers (engines hold GPUs)."""

    name: str = "base"
    supports_token_ids: bool = True  # can score given token ids / continue after given token ids

    @abstractmethod
    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingSpec, *, progress: bool = True
    ) -> list[GenerationOutput]:
        """Outputs in the order of `requests`."""

    @abstractmethod
    def top_logprobs(
        self, requests: Sequence[LogprobRequest], *, progress: bool = True
    ) -> list[LogprobOutput]:
        """Outputs in the order of `requests`."""

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens (the judge needs it to spell numbers)."""
        raise NotImplementedError(f"{self.name} backend cannot tokenize")

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError(f"{self.name} backend cannot decode")

    def answer_format(self) -> str:
        """How this backend's texts carry the answer (generate/answers.py: plain | think | harmony), read off the
        model's chat template; what `eval.answer_format: auto` resolves to. API backends return parsed answers."""
        return "plain"

    @classmethod
    def answer_format_of(cls, model: str | None) -> str:
        """`answer_format()` of this backend on `model`, without building it (the eval stage checks stored samples
        against it before deciding whether a backend is needed at all)."""
        return "plain"

    def token_texts(self) -> list[str] | None:
        """The decoded text of every token id (index = id), or None if unknown. The judge reads the digit tokens
        off it; without it, the judge finds them by tokenizing digit strings of up to 3 characters."""
        return None

    @property
    def model_id(self) -> str:
        """What identifies the (judge) model in caches and metadata."""
        return self.name

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the engine / GPU memory."""

    def __enter__(self) -> GenerationBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sample_seed(base_seed: int, request_id: str, sample_index: int) -> int:
    """The seed of one sample: a hash of (SamplingSpec.seed, request_id, sample index), below 2**31.

    Derived from the request's id rather than its position so a sample's seed does not depend on which other
    requests share the call or the batch (a resumed eval regenerates the same texts). Every backend uses this.
    """
    import hashlib

    digest = hashlib.sha256(f"{base_seed}\x1f{request_id}\x1f{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 1)
