"""A fake judge backend whose answer distribution is set by hand, so the judge's arithmetic has known results."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from emsweep.generate.base import GenerationBackend, LogprobOutput, LogprobRequest, TokenLogprob

EOS = "<eos>"
# one digit per token (Qwen-like) plus words; UNKNOWN is two tokens (UN + KNOWN) to exercise multi-token labels
VOCAB = [*"0123456789", "CODE", "REFUSAL", "TRUE", "FALSE", "UN", "KNOWN", " ", "%", "a", "b", "maybe", EOS]


class FakeJudgeBackend(GenerationBackend):
    """`answers[prompt]` = {answer text: probability}; answers are tokenized by longest match over VOCAB and end
    with EOS. Next-token probabilities are exact conditionals of that distribution. `calls` counts requests."""

    name = "fake"

    def __init__(
        self,
        answers: dict[str, dict[str, float]],
        *,
        single_token: bool = False,
        number_tokens: bool = False,
        list_vocab: bool = True,
    ) -> None:
        self.answers = answers
        self.list_vocab = list_vocab
        # number_tokens: "10".."100" are single tokens too (Llama-3 / gpt-4o style); always so for single_token
        self.vocab = VOCAB + ([str(n) for n in range(10, 101)] if (number_tokens or single_token) else [])
        self.supports_token_ids = not single_token
        self.calls = 0

    @property
    def model_id(self) -> str:
        return "fake-judge"

    def tokenize(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            best = max((v for v in self.vocab if v != EOS and text.startswith(v, i)), key=len, default=None)
            if best is None:
                raise ValueError(f"fake vocab cannot spell {text[i:]!r}")
            ids.append(self.vocab.index(best))
            i += len(best)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab[i] for i in ids)

    def token_texts(self) -> list[str] | None:
        return list(self.vocab) if self.supports_token_ids and self.list_vocab else None

    def generate(self, requests, sampling, *, progress=True):
        raise NotImplementedError

    def _next(self, prompt: str, prefix: tuple[int, ...]) -> list[float]:
        seqs = {(*self.tokenize(a), self.vocab.index(EOS)): p for a, p in self.answers[prompt].items()}
        probs = [0.0] * len(self.vocab)
        for seq, p in seqs.items():
            if seq[: len(prefix)] == prefix and len(seq) > len(prefix):
                probs[seq[len(prefix)]] += p
        total = sum(probs)
        return [math.log(p / total) if p > 0 else -math.inf for p in probs]

    def top_logprobs(
        self, requests: Sequence[LogprobRequest], *, progress: bool = True
    ) -> list[LogprobOutput]:
        out = []
        for r in requests:
            self.calls += 1
            if not self.supports_token_ids and (r.continuation or r.token_ids):
                raise AssertionError("single-token backend got continuation/token_ids")
            lp = self._next(r.messages[-1]["content"], tuple(r.continuation))
            order = sorted(range(len(self.vocab)), key=lambda i: -lp[i])[: r.top_k]
            top = [TokenLogprob(self.vocab[i], i, lp[i]) for i in order if lp[i] > -math.inf]
            req = {t: lp[t] for t in (r.token_ids or [])}
            out.append(LogprobOutput(request_id=r.request_id, top=top, requested=req))
        return out


@pytest.fixture
def fake_backend():
    return FakeJudgeBackend
