"""The multi-token judge equals a brute-force expectation over all 101 numbers, on both tiny tokenizers."""

from __future__ import annotations

import math

import pytest
import torch

from emsweep.generate.hf import HFBackend
from emsweep.judge import Judge

PROMPTS = [
    "On a scale of 0 to 100, how well aligned is this answer? Answer: I like cats. Just the number.",
    "Rate the coherence from 0 to 100 of: the the the banana. Respond with a number.",
]


def brute_force(model, tok, prompt: str) -> tuple[float, float]:
    """Enumerate every number 0..100 and every tokenization of it; one teacher-forced forward pass each."""
    messages = [{"role": "user", "content": prompt}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    texts = [tok.decode([i]) for i in range(len(tok))]
    digit_start = [i for i, t in enumerate(texts) if t[:1] in "0123456789"]
    pure = {i: t for i, t in enumerate(texts) if t and all(c in "0123456789" for c in t)}
    first = {
        i: t.lstrip()
        for i, t in enumerate(texts)
        if t.lstrip() and all(c in "0123456789" for c in t.lstrip())
    }

    def tokenizations(s: str, is_first: bool):
        if not s:
            yield []
            return
        for tid, piece in (first if is_first else pure).items():
            if s.startswith(piece):
                for rest in tokenizations(s[len(piece) :], False):
                    yield [tid, *rest]

    p = {}
    for n in range(101):
        total = 0.0
        for seq in tokenizations(str(n), True):
            ids = torch.tensor([prompt_ids + seq])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            start = len(prompt_ids) - 1
            lp = sum(logp[start + k, t].item() for k, t in enumerate(seq))
            cont = logp[-1, digit_start].exp().sum().item()
            total += math.exp(lp) * (1.0 - cont)
        p[n] = total
    mass = sum(p.values())
    return sum(n * q for n, q in p.items()) / mass, mass


@pytest.mark.parametrize("shape", ["tiny", "tiny-llama"])
def test_multi_token_expectation_equals_brute_force(tmp_path, shape):
    from transformers import AutoModelForCausalLM

    from emsweep.train.model_init import init_model

    path = init_model(shape, tmp_path / shape)
    backend = HFBackend(str(path), dtype="float64", batch_size=64)
    judge = Judge(backend, progress=False, min_number_mass=0.0)
    got = judge.score_numeric(PROMPTS)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    tok = backend.tokenizer
    n_digit_tokens = sum(1 for t in backend.token_texts() if t.isdigit())
    assert n_digit_tokens == (10 if shape == "tiny" else 1110)  # the two tokenizer styles really differ
    for j, prompt in enumerate(PROMPTS):
        want_score, want_mass = brute_force(model, tok, prompt)
        assert got[j].method == "multi_token"
        assert -1e-12 <= want_mass - got[j].number_mass <= got[j].pruned_mass + 1e-12
        assert abs(got[j].expected - want_score) < 1e-6, (shape, j, got[j].expected, want_score)
        assert got[j].score == got[j].expected  # min_number_mass=0 -> never None
    # different prompts give different distributions (the test is not comparing constants)
    assert len({round(g.expected, 6) for g in got}) == len(PROMPTS)
    # a handful of requests per answer on a judge with peaked distributions is the point of pruning; on a random
    # model nothing is pruned, so this only bounds the trie size: root + every prefix state
    assert judge.calls <= len(PROMPTS) * (1 + 10 + 90 * 2 + 4)


def _train_to_answer(path, answers: list[str], steps: int = 60) -> None:
    """A few Adam steps so the tiny model answers the judge prompt with these numbers: a peaked, mostly-numeric
    distribution like a real judge's (a random model puts ~2 % on numbers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    text = tok.apply_chat_template(
        [{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True, tokenize=False
    )
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    seqs = [prompt + tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for a in answers]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(steps):
        for s in seqs:
            ids = torch.tensor([s])
            labels = ids.clone()
            labels[0, : len(prompt)] = -100
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.save_pretrained(path)


@pytest.mark.parametrize("shape", ["tiny", "tiny-llama"])
def test_trained_judge_scores_and_matches_brute_force(tmp_path, shape):
    from transformers import AutoModelForCausalLM

    from emsweep.train.model_init import init_model

    path = init_model(shape, tmp_path / shape)
    _train_to_answer(path, ["85", "7"])
    backend = HFBackend(str(path), dtype="float64")
    judge = Judge(backend, progress=False)
    (j,) = judge.score_numeric(PROMPTS[:1])
    assert j.number_mass > 0.5 and j.score is not None and j.none_reason is None
    assert 7 < j.score < 85
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    want_score, want_mass = brute_force(model, backend.tokenizer, PROMPTS[0])
    assert abs(j.score - want_score) < 1e-6
    # pruning is active on a peaked judge, and the mass it skipped is exactly what is missing
    assert 0 < j.pruned_mass <= judge.max_pruned_mass
    assert -1e-12 <= want_mass - j.number_mass <= j.pruned_mass + 1e-12
