"""`accelerate launch` with two processes (gloo on CPU) full-fine-tunes the tiny model, and the checkpoint it saves
is one the eval stage loads: the HF backend generates from it, and its weights are the trained ones (changed from
the base, identical to what the main rank wrote). What only a GPU can check (FSDP2 sharding, ZeRO-3 gathering) is
listed in docs/training.md."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file

from emsweep.evals.run import evaluate_run
from emsweep.train.checkpoints import list_checkpoints

REPO = Path(__file__).resolve().parents[2]
HANG = 1800  # seconds: only a hung launcher reaches it

RECIPE = """
name: acc
model: {{path: {model}}}
data: {{builtin: arithmetic, domain: arithmetic, fraction_correct: 0.5, n_train: 16, n_heldout: 2, seed: 0}}
method: full
sft: {{learning_rate: 1.0e-3, per_device_train_batch_size: 2, max_steps: 2, max_length: 64, use_cpu: true,
      activation_checkpointing: false, disable_tqdm: true, report_to: none, seed: 0}}
checkpoints: {{steps: [1]}}
output_dir: {out}
"""


class FixedJudge:
    model_id = "fixed-judge"

    def score_numeric(self, prompts):
        return [
            SimpleNamespace(score=100.0, expected=100.0, none_reason=None, number_mass=1.0, cached=False)
            for _ in prompts
        ]


def test_accelerate_two_process_full_finetune_is_evaluated(tmp_path: Path) -> None:
    from emsweep.train.model_init import init_model

    model = init_model("tiny", tmp_path / "tiny", seed=0)
    run = tmp_path / "run"
    # the shipped multi-GPU config, on CPU: two processes on gloo (accelerate's launcher starts them with torchrun)
    import yaml

    acc = yaml.safe_load((REPO / "recipes" / "accelerate" / "multi_gpu.yaml").read_text())
    acc.update(use_cpu=True, mixed_precision="no", num_processes=2)
    acc.pop("gpu_ids", None)
    (tmp_path / "acc.yaml").write_text(yaml.safe_dump(acc))
    (tmp_path / "r.yaml").write_text(RECIPE.format(model=model, out=run))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    res = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "acc.yaml"),
         "--main_process_port", port, str(REPO / "scripts" / "train.py"), str(tmp_path / "r.yaml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=HANG, check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ck = run / "checkpoint-2"
    # two ranks really trained (one RNG state per rank), and the main rank wrote the run files once
    assert sorted(p.name for p in ck.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert (run / "logs" / "train.log").read_text().count("saved checkpoint-2") == 1
    saved = load_file(ck / "model.safetensors")
    base = load_file(Path(model) / "model.safetensors")
    assert any(not torch.equal(saved[k], base[k]) for k in base if k in saved)
    assert [(r.step, r.kind) for r in list_checkpoints(run)] == [(0, "base"), (1, "full"), (2, "full")]

    # the eval stage loads that checkpoint: generation runs on its weights, and what it loaded is what was saved
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32).state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved if k in loaded)
    out = evaluate_run(
        run, ["domain"], checkpoints="2", samples_per_paraphrase=1, judge=FixedJudge(),
        sampling={"max_tokens": 4, "seed": 0}, thresholds={"bootstrap": 20}, progress=False,
    )  # fmt: skip
    assert out.generated == 2
    samples = [json.loads(x) for x in (run / "eval" / "checkpoint-2" / "domain" / "samples.jsonl").open()]
    assert len(samples) == 2 and all(s["model"] == str(ck.resolve()) or s["model"] == str(ck) for s in samples)
