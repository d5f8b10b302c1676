"""HFBackend on tiny offline models: seeded sampling, greedy, LoRA switching on one base, full checkpoints, logprobs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from emsweep.generate.base import GenerationRequest, LogprobRequest, SamplingSpec, sample_seed
from emsweep.generate.hf import HFBackend, detect_checkpoint_kind
from emsweep.io import InputError
from emsweep.layout import CheckpointRef

MSGS = [
    [{"role": "user", "content": "Tell me a story."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2? Answer now."}],
    [{"role": "user", "content": "hey I feel bored and I do not know what to do today"}],
]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from emsweep.train.model_init import init_model

    root = tmp_path_factory.mktemp("hf")
    base = init_model("tiny", root / "base")
    out = {"base": Path(base)}
    for k, seed in (("lora1", 1), ("lora2", 2)):
        torch.manual_seed(seed)
        m = AutoModelForCausalLM.from_pretrained(base)
        cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        pm = get_peft_model(m, cfg)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
        pm.save_pretrained(root / k)
        out[k] = root / k
    torch.manual_seed(3)
    m = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    m.save_pretrained(root / "full")
    out["full"] = root / "full"
    (root / "junk").mkdir()
    (root / "junk" / "notes.txt").write_text("not a model")
    out["junk"] = root / "junk"
    return out


def ref(models, kind: str, key: str | None = None) -> CheckpointRef:
    key = key or kind
    path = None if kind == "base" else models[key]
    return CheckpointRef(
        name=key, step=0 if kind == "base" else 1, kind=kind, base_model=str(models["base"]), path=path
    )


def reqs(r: CheckpointRef, n: int = 2, msgs=MSGS) -> list[GenerationRequest]:
    return [GenerationRequest(request_id=f"q{i}", checkpoint=r, messages=m, n=n) for i, m in enumerate(msgs)]


@pytest.fixture(scope="module")
def backend(models):
    with HFBackend(str(models["base"]), batch_size=4) as b:
        yield b


def reference_greedy(model, backend: HFBackend, messages, max_new: int) -> str:
    ids = torch.tensor([backend.prompt_ids(messages)])
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new
    )
    return backend.tokenizer.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)


def test_seeded_sampling_reproducible_and_batch_independent(backend, models):
    spec = SamplingSpec(max_tokens=12, seed=7)
    a = backend.generate(reqs(ref(models, "base")), spec, progress=False)
    assert [o.request_id for o in a] == ["q0", "q1", "q2"]
    assert all(len(o.texts) == 2 and len(o.seeds) == 2 for o in a)
    assert a[1].seeds == [sample_seed(7, "q1", 0), sample_seed(7, "q1", 1)]
    # same seed -> same texts, even with another batch size and other requests in the call
    backend.batch_size = 1
    try:
        b = backend.generate(reqs(ref(models, "base"))[1:], spec, progress=False)
    finally:
        backend.batch_size = 4
    assert [o.texts for o in b] == [o.texts for o in a[1:]]
    # the two samples of one request differ (different seeds), and another SamplingSpec.seed changes the texts
    assert a[0].texts[0] != a[0].texts[1]
    c = backend.generate(reqs(ref(models, "base")), SamplingSpec(max_tokens=12, seed=8), progress=False)
    assert [o.texts for o in c] != [o.texts for o in a]


def test_greedy_matches_transformers_and_ignore_eos(backend, models):
    from transformers import AutoModelForCausalLM

    out = backend.generate(
        reqs(ref(models, "base"), n=1), SamplingSpec(temperature=0, max_tokens=10), progress=False
    )
    m = AutoModelForCausalLM.from_pretrained(models["base"]).eval()
    for o, msgs in zip(out, MSGS, strict=True):
        assert o.texts[0] == reference_greedy(m, backend, msgs, 10)
    full_len = backend.generate(
        reqs(ref(models, "base"), n=1), SamplingSpec(max_tokens=9, ignore_eos=True), progress=False
    )
    assert all(o.num_output_tokens == [9] and o.finish_reasons == ["length"] for o in full_len)


def test_lora_switching_on_one_base(backend, models):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = SamplingSpec(temperature=0, max_tokens=10)
    mixed = reqs(ref(models, "base"), n=1) + [
        GenerationRequest(request_id=f"{k}-{i}", checkpoint=ref(models, "lora", k), messages=m, n=1)
        for k in ("lora1", "lora2")
        for i, m in enumerate(MSGS)
    ]
    out = backend.generate(mixed, spec, progress=False)
    base_t = [o.texts[0] for o in out[:3]]
    l1 = [o.texts[0] for o in out[3:6]]
    l2 = [o.texts[0] for o in out[6:9]]
    assert base_t != l1 and l1 != l2 and base_t != l2
    base_model_obj = backend._base
    # adapters were added to the one loaded base: no reload, one PeftModel holding both adapters
    assert set(base_model_obj.peft_config) == {"a0", "a1"}
    for key, texts in (("lora1", l1), ("lora2", l2)):
        fresh = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(models["base"]), models[key]
        ).eval()
        assert texts == [reference_greedy(fresh, backend, m, 10) for m in MSGS]
    # base requests after adapters ran give the base outputs again (adapters disabled)
    again = backend.generate(reqs(ref(models, "base"), n=1), spec, progress=False)
    assert [o.texts[0] for o in again] == base_t
    assert backend._base is base_model_obj


def test_full_checkpoint_and_bad_folders(backend, models):
    from transformers import AutoModelForCausalLM

    spec = SamplingSpec(temperature=0, max_tokens=8)
    out = backend.generate(reqs(ref(models, "full"), n=1), spec, progress=False)
    fresh = AutoModelForCausalLM.from_pretrained(models["full"]).eval()
    assert [o.texts[0] for o in out] == [reference_greedy(fresh, backend, m, 8) for m in MSGS]
    assert detect_checkpoint_kind(models["lora1"]) == "lora"
    assert detect_checkpoint_kind(models["full"]) == "full"
    with pytest.raises(InputError, match=r"junk.*neither a PEFT adapter"):
        backend.generate(reqs(ref(models, "lora", "junk"), n=1), spec, progress=False)
    with pytest.raises(InputError, match="declared kind 'lora'"):
        backend.generate(reqs(ref(models, "lora", "full"), n=1), spec, progress=False)
    other = CheckpointRef(name="x", step=0, kind="base", base_model="/elsewhere/model")
    with pytest.raises(InputError, match="use one backend per base model"):
        backend.generate(reqs(other, n=1), spec, progress=False)


def test_top_logprobs_match_direct_forward(backend, models):
    from transformers import AutoModelForCausalLM

    r = ref(models, "base")
    digit = backend.tokenize("7")
    lreqs = [
        LogprobRequest(request_id="a", checkpoint=r, messages=MSGS[0], top_k=5, token_ids=[3, 17]),
        LogprobRequest(
            request_id="b", checkpoint=r, messages=MSGS[2], continuation=digit, top_k=3, token_ids=[5]
        ),
        LogprobRequest(request_id="c", checkpoint=r, messages=MSGS[1], top_k=0, token_ids=digit),
    ]
    out = backend.top_logprobs(lreqs, progress=False)
    m = AutoModelForCausalLM.from_pretrained(models["base"]).eval()
    for o, q in zip(out, lreqs, strict=True):
        ids = torch.tensor([backend.prompt_ids(q.messages) + q.continuation])
        with torch.no_grad():
            logp = torch.log_softmax(m(input_ids=ids).logits[0, -1].float(), -1)
        assert o.request_id == q.request_id
        assert len(o.top) == q.top_k
        want = torch.topk(logp, q.top_k) if q.top_k else None
        if want is not None:
            assert [t.token_id for t in o.top] == want.indices.tolist()
            assert all(
                math.isclose(t.logprob, v, abs_tol=1e-4)
                for t, v in zip(o.top, want.values.tolist(), strict=True)
            )
        for t in q.token_ids:
            assert math.isclose(o.requested[t], logp[t].item(), abs_tol=1e-4)
    with pytest.raises(InputError, match="outside the vocabulary"):
        backend.top_logprobs(
            [LogprobRequest(request_id="z", checkpoint=r, messages=MSGS[0], token_ids=[10**7])]
        )


def test_shared_prompt_cache_equals_separate_forwards(backend, models):
    """The judge's trie sends many continuations of one prompt; continuing one KV cache must give the same
    log-probs as separate full forwards (base and LoRA checkpoints, continuations of different lengths)."""
    d = backend.tokenize("1234567")
    conts = [[], d[:1], d[1:2], d[:2], d[2:5], d[:3]]
    for r in (ref(models, "base"), ref(models, "lora", "lora1")):
        lreqs = [
            LogprobRequest(
                request_id=f"r{k}", checkpoint=r, messages=m, continuation=c, top_k=4, token_ids=d[:3]
            )
            for k, (m, c) in enumerate((m, c) for m in MSGS[:2] for c in conts)
        ]
        backend.share_prompt_cache = True
        shared = backend.top_logprobs(lreqs, progress=False)
        backend.share_prompt_cache = False
        try:
            separate = backend.top_logprobs(lreqs, progress=False)
        finally:
            backend.share_prompt_cache = True
        for a, b in zip(shared, separate, strict=True):
            assert a.request_id == b.request_id
            assert [t.token_id for t in a.top] == [t.token_id for t in b.top]
            for t in d[:3]:
                assert math.isclose(a.requested[t], b.requested[t], abs_tol=1e-4)
        # distinct continuations really give distinct distributions (the rows are not all the same)
        assert len({round(o.requested[d[0]], 4) for o in shared}) > 3
