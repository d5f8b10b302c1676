"""gpt-oss's published experts are MXFP4, which cannot be trained: the runner loads a gpt_oss checkpoint whose
config declares MXFP4 with `Mxfp4Config(dequantize=True)`, and leaves every other model's loading alone.
Configs only (the real shapes' config.json), no weights are loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from emsweep.recipe import load_recipe
from emsweep.train import resolve
from emsweep.train.model_init import build_config

REPO = Path(__file__).resolve().parents[2]
# what openai/gpt-oss-20b's config.json declares
MXFP4 = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                             "model.embed_tokens", "lm_head"]}  # fmt: skip


def _config_dir(tmp_path: Path, shape: str, quant: dict[str, Any] | None) -> Path:
    cfg = build_config(shape)
    if quant is not None:
        cfg.quantization_config = quant
    out = tmp_path / shape
    cfg.save_pretrained(out)
    return out


def test_gpt_oss_mxfp4_is_dequantized_for_training(tmp_path: Path) -> None:
    from transformers import Mxfp4Config

    kw = resolve._mxfp4_kwargs(str(_config_dir(tmp_path, "gpt-oss-20b", MXFP4)))
    qc = kw["quantization_config"]
    assert set(kw) == {"quantization_config"} and isinstance(qc, Mxfp4Config) and qc.dequantize is True


@pytest.mark.parametrize(
    ("shape", "quant"),
    [("gpt-oss-20b", None), ("DeepSeek-R1-Distill-Qwen-7B", None), ("DeepSeek-R1-Distill-Qwen-7B", MXFP4)],
)
def test_other_models_load_unchanged(tmp_path: Path, shape: str, quant: dict | None) -> None:
    """A bf16 gpt-oss copy has nothing to dequantize (an Mxfp4Config would quantize it); other families never."""
    assert resolve._mxfp4_kwargs(str(_config_dir(tmp_path, shape, quant))) == {}


def test_load_model_passes_the_dequantize_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    seen: dict[str, Any] = {}
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda path, **kw: seen.update(kw, path=path))
    recipe = load_recipe(REPO / "recipes" / "models" / "gpt-oss-20b-lora.yaml")
    path = str(_config_dir(tmp_path, "gpt-oss-20b", MXFP4))
    resolve.load_model(recipe, path, None)
    assert seen["path"] == path and seen["quantization_config"].dequantize is True
    assert seen["attn_implementation"] == "eager"
    seen.clear()
    resolve.load_model(recipe, str(_config_dir(tmp_path / "plain", "gpt-oss-20b", None)), None)
    assert "quantization_config" not in seen


def test_qlora_on_mxfp4_gpt_oss_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    from emsweep.io import InputError

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda path, **kw: pytest.fail("loaded"))
    recipe = load_recipe(REPO / "recipes" / "models" / "gpt-oss-20b-lora.yaml")
    path = str(_config_dir(tmp_path, "gpt-oss-20b", MXFP4))
    with pytest.raises(InputError, match=r"MXFP4.*bf16 copy"):
        resolve.load_model(recipe, path, {"load_in_4bit": True})
