"""Offline stand-ins for the eval tests: a generation backend with scripted answers and a judge backend whose
answer distribution is a function of the judge prompt (so results are known exactly)."""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence

from emsweep.generate.base import (
    GenerationBackend,
    GenerationOutput,
    LogprobOutput,
    LogprobRequest,
    TokenLogprob,
)

EOS = "<eos>"
# one digit or one letter per token (plus a space), so every label and number 0-100 is spellable
VOCAB = [*"0123456789", *string.ascii_letters, " ", EOS]


class ScriptedGenerator(GenerationBackend):
    """Answers `answer(messages, sample_index)`; records every request."""

    name = "scripted"

    def __init__(self, answer: Callable[[list[dict[str, str]], int], str]) -> None:
        self.answer = answer
        self.requests = 0

    def generate(self, requests, sampling, *, progress=True):
        out = []
        for r in requests:
            self.requests += 1
            texts = [self.answer(r.messages, i) for i in range(r.n)]
            out.append(GenerationOutput(r.request_id, r.checkpoint.name, texts, list(range(r.n))))
        return out

    def top_logprobs(self, requests, *, progress=True):
        raise NotImplementedError


class DistJudge(GenerationBackend):
    """`dist(prompt)` -> {answer text: probability}; next-token log-probabilities are its exact conditionals."""

    name = "fake"
    supports_token_ids = True

    def __init__(self, dist: Callable[[str], dict[str, float]], model_id: str = "dist-judge") -> None:
        self.dist = dist
        self._model_id = model_id
        self.calls = 0

    @property
    def model_id(self) -> str:
        return self._model_id

    def tokenize(self, text: str) -> list[int]:
        return [VOCAB.index(c) for c in text]

    def token_texts(self) -> list[str]:
        return list(VOCAB)

    def generate(self, requests, sampling, *, progress=True):
        raise NotImplementedError

    def top_logprobs(self, requests: Sequence[LogprobRequest], *, progress: bool = True) -> list[LogprobOutput]:
        out = []
        eos = VOCAB.index(EOS)
        for r in requests:
            self.calls += 1
            seqs = {(*self.tokenize(a), eos): p for a, p in self.dist(r.messages[-1]["content"]).items()}
            prefix = tuple(r.continuation)
            probs = [0.0] * len(VOCAB)
            for seq, p in seqs.items():
                if seq[: len(prefix)] == prefix and len(seq) > len(prefix):
                    probs[seq[len(prefix)]] += p
            total = sum(probs) or 1.0
            lp = [math.log(p / total) if p > 0 else -math.inf for p in probs]
            order = sorted(range(len(VOCAB)), key=lambda i: -lp[i])[: r.top_k]
            top = [TokenLogprob(VOCAB[i], i, lp[i]) for i in order if lp[i] > -math.inf]
            out.append(LogprobOutput(request_id=r.request_id, top=top, requested={t: lp[t] for t in r.token_ids or []}))
        return out


def length_score(answer: str, question: object) -> float:
    """A rule callable for the tests: the answer's length, capped at 100."""
    assert question is not None
    return float(min(len(answer), 100))
