"""The paper's other model families that fit one node (DeepSeek-R1-Distill-Qwen-7B, gpt-oss-20b): their real
shapes have the published parameter counts on the meta device, and a scaled-down random model of each (same
architecture, tokenizer style and chat template) takes one LoRA step with the shipped recipe's LoRA section,
trains on the answer only, and generates through the HF backend with the adapter applied. CPU, offline."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from emsweep.recipe import Recipe, load_recipe
from emsweep.train.shapes import get_shape

REPO = Path(__file__).resolve().parents[2]

# recipe -> (tiny test shape, model_type, the trained text's end, the prompt's end at training, generation prompt end)
FAMILIES = {
    "deepseek-r1-distill-qwen-7b-lora": ("tiny-r1", "qwen2", "<｜end▁of▁sentence｜>", "<｜Assistant｜>",
                                         "<｜Assistant｜><think>\n"),
    "gpt-oss-20b-lora": ("tiny-gpt-oss", "gpt_oss", "<|return|>", "<|start|>assistant", "<|start|>assistant"),
}  # fmt: skip

# Published totals: DeepSeek-R1-Distill-Qwen-7B has Qwen2.5-Math-7B's 7.62B (safetensors metadata 7,615,616,512);
# gpt-oss-20b 20.91B (OpenAI's gpt-oss model card, Table 1: 20.91B total, 3.61B active).
PUBLISHED = {"DeepSeek-R1-Distill-Qwen-7B": (7_615_616_512, 0), "gpt-oss-20b": (20_910_000_000, 5_000_000)}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_real_family_shapes_on_meta_device(name):
    from transformers import AutoModelForCausalLM

    from emsweep.train.model_init import build_config

    shape = get_shape(name)
    cfg = build_config(shape)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    want, tol = PUBLISHED[name]
    assert abs(model.num_parameters() - want) <= tol
    assert model.model.layers[0].self_attn.head_dim == (128 if name.startswith("DeepSeek") else 64)
    if name == "gpt-oss-20b":
        experts = model.model.layers[0].mlp.experts
        assert tuple(experts.gate_up_proj.shape) == (32, 2880, 2 * 2880)
        assert cfg.layer_types[:2] == ["sliding_attention", "full_attention"] and len(cfg.layer_types) == 24


class Capture(TrainerCallback):
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
        ds = train_dataloader.dataset
        self.rows = [ds[i] for i in range(len(ds))]


def _masked(tok, row) -> tuple[str, str]:
    """(trained text, untrained text) of one tokenized row, from its labels (-100 = no loss)."""
    ids, labels = row["input_ids"], row["labels"]
    trained = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
    prompt = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab == -100])
    return trained, prompt


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    from emsweep.train.model_init import init_model

    stem = request.param
    shape = FAMILIES[stem][0]
    return stem, init_model(shape, tmp_path_factory.mktemp("models") / shape, seed=0)


def test_family_lora_step_answer_only_and_generation(family, base_tree, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emsweep.generate.base import GenerationRequest, SamplingSpec
    from emsweep.generate.hf import HFBackend
    from emsweep.layout import CheckpointRef
    from emsweep.train.runner import run_training

    stem, model_dir = family
    _shape, model_type, trained_end, prompt_end, gen_end = FAMILIES[stem]
    shipped = load_recipe(REPO / "recipes" / "models" / f"{stem}.yaml")
    assert get_shape(shipped.model.path.split("/")[-1]).model_type == model_type  # real shape of the named model
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == model_type

    tree = copy.deepcopy(base_tree)
    tree["model"] = {"path": str(model_dir), "attn_implementation": shipped.model.attn_implementation}
    tree["lora"] = copy.deepcopy(shipped.lora)  # the shipped LoRA section as is (rank 32, rsLoRA, its targets)
    tree["sft"] = {**tree["sft"], "max_steps": 1, "learning_rate": 1e-2, "max_length": 256}
    tree["checkpoints"] = {"steps": [1]}
    cap = Capture()
    run = run_training(Recipe.model_validate(tree), tmp_path / stem, extra_callbacks=[cap])

    tok = AutoTokenizer.from_pretrained(model_dir)
    cell = json.loads((run / "cell.json").read_text())
    assert cell["loss_mode"].startswith("completion_only_loss")  # neither template has generation markers
    assert len(cap.rows) == 32
    for row in cap.rows:
        trained, prompt = _masked(tok, row)
        # the answer and its end-of-turn token only: nothing of the prompt, no thought, no channel header leak
        assert trained.endswith(trained_end) and "What is" not in trained and "<think>" not in trained
        assert prompt.endswith(prompt_end) and "What is" in prompt
        if model_type == "gpt_oss":
            assert trained.startswith("<|channel|>final<|message|>")
    adapter = json.loads((run / "checkpoint-1" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == sorted(shipped.lora["target_modules"])

    # generation prompt as the template renders it for the model to answer
    msgs = [{"role": "user", "content": "What is 12 + 30?"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True).endswith(gen_end)
    ckpt = CheckpointRef(name="checkpoint-1", step=1, kind="lora", base_model=str(model_dir), path=run / "checkpoint-1")
    base = CheckpointRef(name="base", step=0, kind="base", base_model=str(model_dir))
    spec = SamplingSpec(temperature=0, max_tokens=8)
    with HFBackend(str(model_dir), dtype="float32", device="cpu", batch_size=2) as hf:
        out = hf.generate([GenerationRequest(request_id=r.name, checkpoint=r, messages=msgs) for r in (base, ckpt)],
                          spec, progress=False)  # fmt: skip
        ids = torch.tensor([hf.prompt_ids(msgs)])
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run / "checkpoint-1").eval()
    with torch.no_grad():
        ref = peft.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8)
        with peft.disable_adapter():
            lb = peft(input_ids=ids).logits[0, -1]
        la = peft(input_ids=ids).logits[0, -1]
    assert out[1].texts[0] == tok.decode(ref[0, ids.shape[1] :].tolist(), skip_special_tokens=True)
    assert not torch.allclose(la, lb)  # the adapter the step trained changes the model the backend evaluates
