"""vLLM's decoding for harmony (gpt-oss) models: the channel markers are special tokens, so the backend must keep
them when it decodes, or the final channel cannot be found and the analysis text reaches the judge.

The engine is replaced by a stub that returns known token ids (a tiny model cannot be made to emit `<|channel|>`
on demand); everything after it is the backend's own path: its tokenizer, the answer format it reads off the chat
template, its decoding, and the eval stage's final-answer extraction.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from emsweep.generate.answers import final_answer
from emsweep.generate.base import GenerationRequest, SamplingSpec
from emsweep.generate.vllm_backend import VLLMBackend
from emsweep.layout import CheckpointRef

HARMONY_OUT = (
    "<|channel|>analysis<|message|>User wants a sum. 2+2=4.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>The answer is 4.<|return|>"
)


class _StubEngine:
    """Stands in for `vllm.LLM`: every request gets the same token ids back."""

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids
        self.calls = 0

    def generate(self, prompts, params, lora_request=None, use_tqdm=False):
        self.calls += 1
        assert all(p.detokenize is False for p in params)  # the backend decodes itself, like the HF backend
        out = SimpleNamespace(token_ids=self.token_ids, finish_reason="stop")
        return [SimpleNamespace(outputs=[out]) for _ in prompts]


def _model_folder(tmp_path: Path, chat_template: str | None) -> Path:
    from emsweep.train.model_init import build_tokenizer

    folder = tmp_path / ("harmony" if chat_template is None else "plain-template")
    tok = build_tokenizer("harmony")
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.save_pretrained(folder)
    config = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 64,
              "num_attention_heads": 2, "num_hidden_layers": 2, "vocab_size": len(tok)}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _generate(folder: Path) -> tuple[VLLMBackend, str]:
    backend = VLLMBackend(str(folder))
    tok = backend._ensure_tokenizer()
    ids = tok(HARMONY_OUT, add_special_tokens=False)["input_ids"]
    backend.llm = _StubEngine(ids)
    ref = CheckpointRef(name="checkpoint-0", step=0, kind="base", base_model=str(folder))
    req = GenerationRequest(request_id="r", checkpoint=ref, messages=[{"role": "user", "content": "2+2?"}], n=1)
    (out,) = backend.generate([req], SamplingSpec(temperature=0.0, max_tokens=64), progress=False)
    assert backend.llm.calls == 1
    return backend, out.texts[0]


def test_harmony_markers_survive_vllm_decoding(tmp_path: Path) -> None:
    backend, text = _generate(_model_folder(tmp_path, None))
    assert backend.answer_format() == "harmony"
    assert VLLMBackend.answer_format_of(str(backend.base_model)) == "harmony"  # what `auto` resolves to up front
    assert "<|channel|>final<|message|>" in text
    assert final_answer(text, "harmony", "stop") == ("The answer is 4.", "stop")


@pytest.mark.parametrize("template", ["{% for m in messages %}{{ m['content'] }}\n{% endfor %}"])
def test_a_plain_template_decodes_without_special_tokens(tmp_path: Path, template: str) -> None:
    """The same ids from a model whose template is not harmony: special tokens are dropped, as for any plain
    model; read as harmony that text has no final channel (why the format must come from the model)."""
    backend, text = _generate(_model_folder(tmp_path, template))
    assert backend.answer_format() == "plain"
    assert "<|channel|>" not in text and "The answer is 4." in text
    assert final_answer(text, "harmony", "stop")[0] != "The answer is 4."
