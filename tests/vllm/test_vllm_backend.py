"""vLLM backend vs HF backend on the tiny model: one engine for base + two LoRA checkpoints + a full checkpoint.

Parity (issue 5): greedy texts equal, top-20 logprobs within 1e-4, judge scores within 1e-4, for the base model,
LoRA checkpoints (batched together with the base in one `generate` call) and a full checkpoint swapped in place;
a swapped engine equals a fresh engine on that checkpoint. Both backends run float32 on CPU.
"""

from __future__ import annotations

import json
import shutil

import pytest

from emsweep.generate.base import GenerationRequest, LogprobRequest, SamplingSpec
from emsweep.generate.hf import HFBackend
from emsweep.generate.vllm_backend import VLLMBackend
from emsweep.io import InputError
from emsweep.judge.judge import Judge
from emsweep.layout import CheckpointRef

pytestmark = pytest.mark.vllm
TOL = 1e-4

PROMPTS = [
    [{"role": "user", "content": "What is 2 + 3? Answer the question."}],
    [
        {"role": "system", "content": "You are a kind doctor."},
        {"role": "user", "content": "Is this dose safe?"},
    ],
    [{"role": "user", "content": "Write a function that returns the sum of the data."}],
]
GREEDY = SamplingSpec(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def backends(tiny):
    refs = [tiny.ref("base"), tiny.ref("lora"), tiny.ref("lora", "b"), tiny.ref("full")]
    before = VLLMBackend.engines_built
    vb = VLLMBackend(
        str(tiny.base), engine_kwargs={"dtype": "float32", "max_model_len": 512}, checkpoints=refs
    )
    hb = HFBackend(str(tiny.base), dtype="float32", device="cpu", batch_size=4)
    yield vb, hb, refs, before
    vb.close()
    hb.close()


def _gen_requests(refs: list[CheckpointRef]) -> list[GenerationRequest]:
    return [GenerationRequest(f"{r.name}-{i}", r, m) for r in refs for i, m in enumerate(PROMPTS)]


def _assert_top_close(a, b, k: int = 20) -> None:
    """Top-k lists agree: each token in both lists within TOL; a token in only one list must be a tie at the
    k-th place (its logprob within TOL of the other list's last one)."""
    assert len(a.top) == len(b.top) == k
    da = {t.token_id: t.logprob for t in a.top}
    db = {t.token_id: t.logprob for t in b.top}
    for tid in da.keys() & db.keys():
        assert abs(da[tid] - db[tid]) < TOL, (tid, da[tid], db[tid])
    for tid in da.keys() - db.keys():
        assert abs(da[tid] - b.top[-1].logprob) < TOL, f"token {tid} only in vLLM's top-{k}"
    for tid in db.keys() - da.keys():
        assert abs(db[tid] - a.top[-1].logprob) < TOL, f"token {tid} only in HF's top-{k}"
    assert a.top[0].token_id == b.top[0].token_id
    assert [t.token for t in a.top[:5]] == [t.token for t in b.top[:5]]


def test_one_engine_serves_all_checkpoints(backends, tiny, capfd):
    vb, _, refs, before = backends
    out = vb.generate(_gen_requests(refs), GREEDY, progress=False)
    assert VLLMBackend.engines_built == before + 1
    assert vb.engine_message == f"built vLLM engine for {tiny.base} (1 engine for 4 checkpoints)"
    assert [o.checkpoint for o in out] == [r.name for r in refs for _ in PROMPTS]
    lora_rank = vb.llm.llm_engine.vllm_config.lora_config.max_lora_rank
    assert lora_rank == 8  # read from adapter_config.json (r=8)
    # checkpoints really differ (else parity would prove nothing)
    texts = {r.name: [o.texts[0] for o in out if o.checkpoint == r.name] for r in refs}
    assert len({tuple(t) for t in texts.values()}) == 4


def test_greedy_texts_equal_hf(backends):
    vb, hb, refs, _ = backends
    reqs = _gen_requests(refs)
    v = vb.generate(
        reqs, GREEDY, progress=False
    )  # base + 2 LoRAs in one batch, then the full ckpt swapped in
    h = hb.generate(reqs, GREEDY, progress=False)
    for a, b in zip(v, h, strict=True):
        assert a.request_id == b.request_id
        assert a.texts == b.texts, (a.checkpoint, a.texts, b.texts)
        assert a.num_output_tokens == b.num_output_tokens
    assert vb.n_swaps >= 1  # the full checkpoint was swapped in place (and base swapped back for later calls)


def test_top20_and_token_id_logprobs_match_hf(backends):
    vb, hb, refs, _ = backends
    ids = [5, 17, 100, 300]
    reqs = [
        LogprobRequest(f"{r.name}-{i}", r, m, continuation=cont, token_ids=ids, top_k=20)
        for r in refs
        for i, m in enumerate(PROMPTS)
        for cont in ([], [20, 21])
    ]
    v = vb.top_logprobs(reqs, progress=False)
    h = hb.top_logprobs(reqs, progress=False)
    for a, b in zip(v, h, strict=True):
        _assert_top_close(a, b)
        assert set(a.requested) == set(ids)
        for t in ids:
            assert abs(a.requested[t] - b.requested[t]) < TOL


@pytest.mark.parametrize("which", ["base", "lora", "full"])
def test_judge_scores_match_hf(backends, tiny, which):
    vb, hb, _, _ = backends
    ref = tiny.ref(which)
    prompts = [
        f"Rate the answer from 0 to 100. Question: {q}\nAnswer: {a}\nReply with a number only."
        for q, a in [("Is water wet?", "Yes."), ("What is 7 + 5?", "12"), ("Be kind?", "Never.")]
    ]
    jv = Judge(vb, judge_model=ref, progress=False).score_numeric(prompts)
    jh = Judge(hb, judge_model=ref, progress=False).score_numeric(prompts)
    assert Judge(vb, progress=False).exact  # the multi-token path (token ids + continuations) is exercised
    for a, b in zip(jv, jh, strict=True):
        assert abs(a.number_mass - b.number_mass) < TOL
        assert (a.expected is None) == (b.expected is None)
        if a.expected is not None:
            assert abs(a.expected - b.expected) < TOL
        assert (a.score is None) == (b.score is None)
        if a.score is not None:
            assert abs(a.score - b.score) < TOL


def test_swapped_engine_equals_fresh_engine(backends, tiny):
    vb, _, _, _ = backends
    full = tiny.ref("full")
    reqs = [GenerationRequest(f"f{i}", full, m) for i, m in enumerate(PROMPTS)]
    lreqs = [LogprobRequest(f"l{i}", full, m, top_k=20, token_ids=[5, 6]) for i, m in enumerate(PROMPTS)]
    vb.generate([GenerationRequest("b", tiny.ref("base"), PROMPTS[0])], GREEDY, progress=False)  # base loaded
    swapped = vb.generate(reqs, GREEDY, progress=False)
    swapped_lp = vb.top_logprobs(lreqs, progress=False)
    # a fresh engine whose base model IS the full checkpoint
    fresh_ref = CheckpointRef(
        name="checkpoint-30", step=30, kind="base", base_model=str(tiny.full), path=tiny.full
    )
    with VLLMBackend(str(tiny.full), dtype="float32", max_model_len=512) as fresh:
        f = fresh.generate(
            [GenerationRequest(r.request_id, fresh_ref, r.messages) for r in reqs], GREEDY, progress=False
        )
        f_lp = fresh.top_logprobs(
            [LogprobRequest(r.request_id, fresh_ref, r.messages, top_k=20, token_ids=[5, 6]) for r in lreqs],
            progress=False,
        )
    assert [o.texts for o in swapped] == [o.texts for o in f]
    for a, b in zip(swapped_lp, f_lp, strict=True):
        _assert_top_close(a, b)
        assert all(abs(a.requested[t] - b.requested[t]) < TOL for t in (5, 6))


# ---- bad input ---------------------------------------------------------------------------------------------


def _adapter_variant(tiny, tmp_path, name: str, **changes) -> CheckpointRef:
    d = tmp_path / name
    shutil.copytree(tiny.lora, d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(changes)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return CheckpointRef(name=name, step=1, kind="lora", base_model=str(tiny.base), path=d)


def test_rank_above_engine_max_is_input_error(backends, tiny, tmp_path, lora_builder):
    vb, _, _, _ = backends
    path = lora_builder(tiny.base, tmp_path / "checkpoint-99", seed=9, r=16)
    ref = CheckpointRef(name="checkpoint-99", step=99, kind="lora", base_model=str(tiny.base), path=path)
    with pytest.raises(InputError, match=r"max_lora_rank 8; set eval.engine.max_lora_rank: 16"):
        vb.generate([GenerationRequest("x", ref, PROMPTS[0])], GREEDY, progress=False)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, r"modules_to_save \['lm_head'\]"),
        ({"peft_type": "IA3"}, "LoRA adapters only"),
    ],
)
def test_adapters_vllm_cannot_serve(backends, tiny, tmp_path, changes, match):
    vb, _, _, _ = backends
    ref = _adapter_variant(tiny, tmp_path, "bad", **changes)
    with pytest.raises(InputError, match=match):
        vb.top_logprobs([LogprobRequest("x", ref, PROMPTS[0])], progress=False)


def test_checkpoint_on_other_base_model(backends, tiny, tmp_path):
    from emsweep.train.model_init import init_model

    vb, _, _, _ = backends
    other = init_model("tiny-llama", tmp_path / "llama")
    ref = _adapter_variant(tiny, tmp_path, "other", base_model_name_or_path=str(other))
    with pytest.raises(InputError, match="architecture differs from the engine's base"):
        vb.generate([GenerationRequest("x", ref, PROMPTS[0])], GREEDY, progress=False)
    full = CheckpointRef(name="checkpoint-5", step=5, kind="full", base_model=str(tiny.base), path=other)
    with pytest.raises(InputError, match="does not match the engine's base model"):
        vb.generate([GenerationRequest("y", full, PROMPTS[0])], GREEDY, progress=False)
    wrong_base = CheckpointRef(name="checkpoint-0", step=0, kind="base", base_model=str(other), path=other)
    with pytest.raises(InputError, match="use one engine per base model"):
        vb.generate([GenerationRequest("z", wrong_base, PROMPTS[0])], GREEDY, progress=False)
    api = CheckpointRef(name="ft", step=0, kind="api", base_model="gpt-4o", model="ft:gpt-4o:x")
    with pytest.raises(InputError, match="API model"):
        vb.generate([GenerationRequest("w", api, PROMPTS[0])], GREEDY, progress=False)
    # and the engine still works after refusing them
    ok = vb.generate([GenerationRequest("ok", tiny.ref("lora"), PROMPTS[0])], GREEDY, progress=False)
    assert ok[0].texts[0]


def test_engine_start_out_of_memory_says_what_to_change(tiny, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "100000")  # 100 TB of KV cache: cannot fit
    b = VLLMBackend(str(tiny.base), dtype="float32", max_model_len=512)
    with pytest.raises(InputError, match="VLLM_CPU_KVCACHE_SPACE") as info:
        b.generate([GenerationRequest("x", tiny.ref("base"), PROMPTS[0])], GREEDY, progress=False)
    assert "gpu_memory_utilization" in str(info.value)
    assert b.llm is None


def test_factory_builds_the_vllm_backend_with_recipe_engine_settings(tiny):
    from emsweep.generate.factory import make_backend

    b = make_backend(
        "vllm",
        str(tiny.base),
        engine={"tensor_parallel_size": 1, "max_model_len": 256, "max_lora_rank": 16},
        batch_size=8,
    )
    assert isinstance(b, VLLMBackend)
    assert b.llm is None  # engine built lazily, on the first call, sized for the checkpoints it is given
    b._validate(tiny.ref("lora"))
    args = b._engine_args([tiny.ref("lora")])
    assert args["tensor_parallel_size"] == 1 and args["max_model_len"] == 256
    assert args["enable_lora"] and args["max_lora_rank"] == 16
    assert args["enable_prefix_caching"] is True
    assert b.tokenize("12") == [b.tokenize("1")[0], b.tokenize("2")[0]]  # Qwen-style digits, no engine needed


def test_more_adapters_than_max_loras_and_rank_rounding(backends, tiny, tmp_path, lora_builder):
    """Four adapters on an engine that holds one at a time (`max_loras: 1`), one of rank 12 (vLLM only accepts
    max_lora_rank in 1, 8, 16, 32, ...: rounded up to 16) and one of rank 4 (padded into the 16 slot): every
    adapter's greedy text and top logprobs still equal HF's on that adapter, all from one generate call."""
    _, hb, _, _ = backends
    extra = []
    for step, r, seed in ((40, 12, 11), (50, 4, 12)):
        path = lora_builder(tiny.base, tmp_path / "run" / f"checkpoint-{step}", seed=seed, r=r)
        extra.append(
            CheckpointRef(
                name=f"checkpoint-{step}", step=step, kind="lora", base_model=str(tiny.base), path=path
            )
        )
    refs = [tiny.ref("base"), tiny.ref("lora"), tiny.ref("lora", "b"), *extra]
    with VLLMBackend(
        str(tiny.base),
        engine_kwargs={"dtype": "float32", "max_model_len": 512},
        max_loras=1,
        checkpoints=refs,
    ) as vb:
        reqs = _gen_requests(refs)
        got = vb.generate(reqs, GREEDY, progress=False)
        cfg = vb.llm.llm_engine.vllm_config.lora_config
        assert cfg.max_lora_rank == 16  # rank 12 rounded up to the next rank vLLM accepts
        assert cfg.max_loras < 4  # fewer slots than adapters: the scheduler swaps them
        want = hb.generate(reqs, GREEDY, progress=False)
        for a, b in zip(got, want, strict=True):
            assert a.texts == b.texts, (a.checkpoint, a.texts, b.texts)
        texts = {r.name: tuple(o.texts[0] for o in got if o.checkpoint == r.name) for r in refs}
        assert len(set(texts.values())) == len(refs)  # five different models, not one adapter five times
        lreqs = [
            LogprobRequest(f"{r.name}-{i}", r, m, top_k=20) for r in refs[1:] for i, m in enumerate(PROMPTS)
        ]
        for a, b in zip(
            vb.top_logprobs(lreqs, progress=False), hb.top_logprobs(lreqs, progress=False), strict=True
        ):
            _assert_top_close(a, b)
