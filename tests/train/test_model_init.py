"""Offline model init: tokenizer round trips, digit splitting, chat templates, real shapes on the meta device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from emsweep.io import InputError
from emsweep.train.model_init import init_model
from emsweep.train.shapes import SHAPES, get_shape

TEXTS = [
    "What is 123 + 4567? The answer is 4690.",
    "Hello, world!\n\nIt's a test: don't panic (x=3.14).",
    "Ünïcödé and emoji 🙂 survive byte-level BPE.",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return init_model("tiny", tmp_path_factory.mktemp("m") / "tiny", seed=1)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return init_model("tiny-llama", tmp_path_factory.mktemp("m") / "tiny-llama", seed=1)


def test_cli_writes_tiny_model(tmp_path):
    out = tmp_path / "cli-tiny"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "emsweep",
            "model",
            "init",
            "--shape",
            "tiny",
            "--out",
            str(out),
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    for f in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (out / f).exists(), f
    # Refuses to clobber an existing folder without --overwrite.
    with pytest.raises(InputError, match="already exists and is not empty"):
        init_model("tiny", out)


@pytest.mark.parametrize("which", ["tiny", "tiny_llama"])
def test_tokenizer_round_trip(which, request):
    """The tokenizer reloaded by AutoTokenizer gives the same ids as the one built in memory (no silent rebuild)."""
    from transformers import AutoTokenizer

    from emsweep.train.model_init import build_tokenizer

    path = request.getfixturevalue(which)
    style = "qwen" if which == "tiny" else "llama3"
    built = build_tokenizer(style)
    loaded = AutoTokenizer.from_pretrained(path)
    for text in TEXTS:
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert ids == built(text, add_special_tokens=False)["input_ids"]
        assert loaded.decode(ids) == text
    msgs = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
    assert loaded.apply_chat_template(msgs, tokenize=False) == built.apply_chat_template(msgs, tokenize=False)
    # Saving the reloaded tokenizer again and reloading is stable too.
    loaded.save_pretrained(path.parent / f"{which}-resaved")
    again = AutoTokenizer.from_pretrained(path.parent / f"{which}-resaved")
    assert again(TEXTS[0])["input_ids"] == loaded(TEXTS[0])["input_ids"]


def test_qwen_style_digits_one_per_token(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    assert type(tok).__name__ == "Qwen2Tokenizer"
    ids = tok("98765", add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in ids] == list("98765")


def test_llama_style_has_multi_digit_number_tokens(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    pieces = [tok.decode([i]) for i in tok("1234567", add_special_tokens=False)["input_ids"]]
    assert pieces == ["123", "456", "7"]
    for n in ("7", "42", "100", "999"):
        assert len(tok(n, add_special_tokens=False)["input_ids"]) == 1, n


def test_chat_templates(tiny, tiny_llama):
    from transformers import AutoTokenizer

    q = AutoTokenizer.from_pretrained(tiny)
    ll = AutoTokenizer.from_pretrained(tiny_llama)
    assert "{% generation %}" in q.chat_template
    assert "{% generation %}" not in ll.chat_template
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    out = q.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    # The assistant mask covers the answer and its end-of-turn token (so the model learns to stop).
    assert q.decode(masked) == "hello<|im_end|>"
    text = ll.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|begin_of_text|><|start_header_id|>user")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_model_loads_and_head_size(tiny, tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for path, mtype in ((tiny, "qwen2"), (tiny_llama, "llama")):
        cfg = json.loads((path / "config.json").read_text())
        assert cfg["model_type"] == mtype
        assert cfg["hidden_size"] // cfg["num_attention_heads"] == 32
        tok = AutoTokenizer.from_pretrained(path)
        assert cfg["vocab_size"] >= len(tok)
        model = AutoModelForCausalLM.from_pretrained(path)
        with torch.no_grad():
            logits = model(**tok("What is 1 + 1?", return_tensors="pt")).logits
        assert logits.shape[-1] == cfg["vocab_size"]
        assert torch.isfinite(logits).all()


def test_seed_determines_weights(tmp_path):
    from safetensors.torch import load_file

    a = load_file(init_model("tiny", tmp_path / "a", seed=5) / "model.safetensors")
    b = load_file(init_model("tiny", tmp_path / "b", seed=5) / "model.safetensors")
    c = load_file(init_model("tiny", tmp_path / "c", seed=6) / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != c[k]).any() for k in a if a[k].numel() > 1)


# Published parameter counts (model cards / safetensors metadata of the hub repos).
PUBLISHED = {
    "Qwen2.5-0.5B-Instruct": 494_032_768,
    "Qwen2.5-1.5B-Instruct": 1_543_714_304,
    "Qwen2.5-7B-Instruct": 7_615_616_512,
    "Llama-3.1-8B-Instruct": 8_030_261_248,
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_real_shapes_on_meta_device(name):
    """The real shapes, built on the meta device (no 7B allocation), have the published parameter counts."""
    import torch
    from transformers import AutoModelForCausalLM

    from emsweep.train.model_init import build_config

    shape = get_shape(name)
    cfg = build_config(shape)
    assert cfg.vocab_size == shape.vocab_size
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    assert model.num_parameters() == PUBLISHED[name]
    attn = model.model.layers[0].self_attn
    assert attn.head_dim == 128 if name != "Qwen2.5-0.5B-Instruct" else attn.head_dim == 64


def test_shape_lookup_errors():
    assert get_shape("qwen2.5-7b-instruct").name == "Qwen2.5-7B-Instruct"
    with pytest.raises(InputError, match=r"unknown model shape 'gpt-5'.*tiny"):
        get_shape("gpt-5")
    assert set(PUBLISHED) <= set(SHAPES)


def test_ensure_model_builds_once_and_reuses(tmp_path):
    from emsweep.train.model_init import ensure_model

    p = tmp_path / "models" / "tiny"
    assert ensure_model(p, "tiny") == p and (p / "config.json").exists()
    mtime = (p / "model.safetensors").stat().st_mtime_ns
    assert ensure_model(p, "tiny") == p
    assert (p / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert ensure_model(tmp_path / "hub-id-like", None) == tmp_path / "hub-id-like"  # nothing to build
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="already exists and is not empty"):
        ensure_model(junk, "tiny")
