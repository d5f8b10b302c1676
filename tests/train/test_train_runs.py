"""End-to-end training of the tiny models: LoRA, QLoRA, full; the checkpoint schedule; answer-only loss masks;
truncation survival counts; resume after a crash with a cut-off save; preemption (signal -> save -> exit 99 ->
resume) ending with the same weights as an uninterrupted run."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from emsweep.io import InputError, atomic_write_json, atomic_write_jsonl, is_done, read_marker
from emsweep.train.checkpoints import COMPLETE_MARKER, last_complete_checkpoint, list_checkpoints
from emsweep.train.runner import EXIT_PREEMPTED, Preempted, run_training

REPO = Path(__file__).resolve().parents[2]
# Only a hung process hits this: tests wait on conditions and assert on results, never on elapsed time.
HANG = 1800


def wait_for(cond, timeout: float = HANG, poll: float = 0.05) -> bool:
    """Poll `cond` until it holds (or a generous timeout passes); returns its last value. Callers assert on what
    they waited for, never on how long it took: a loaded machine is slow, not wrong."""
    end = time.monotonic() + timeout
    while not (ok := bool(cond())) and time.monotonic() < end:
        time.sleep(poll)
    return ok


def _drain(proc: subprocess.Popen) -> str:
    """What a finished (or killed) subprocess wrote, for an assertion message."""
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate()
    return out or ""


def ckpt_steps(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))


def adapter(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / f"checkpoint-{step}" / "adapter_model.safetensors")


class Capture(TrainerCallback):
    """Grab the tokenized training rows (input_ids, labels) and the model the Trainer really trains."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.model = None

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kw):
        self.model = model
        ds = train_dataloader.dataset
        self.rows = [ds[i] for i in range(len(ds))]


class CrashAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class SignalAt(TrainerCallback):
    """Send this process SIGUSR1 at a step, as SLURM's `--signal=USR1@...` would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_lora_schedule_cell_json_and_rerun(make_recipe, tmp_path):
    run = tmp_path / "lora"
    out = run_training(make_recipe(), run)
    assert out == run
    assert ckpt_steps(run) == [2, 5, 8]
    for s in (2, 5, 8):
        d = run / f"checkpoint-{s}"
        assert (d / "adapter_config.json").exists() and (d / "adapter_model.safetensors").exists()
        assert not (d / "model.safetensors").exists()
        assert (d / COMPLETE_MARKER).exists()
        cfg = json.loads((d / "adapter_config.json").read_text())
        assert cfg["r"] == 4 and cfg["use_rslora"] is True and not cfg.get("modules_to_save")
        assert set(cfg["target_modules"]) == {
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        }
    # Only the last checkpoint keeps optimizer state (what resuming needs).
    assert (run / "checkpoint-8" / "optimizer.pt").exists()
    assert not (run / "checkpoint-2" / "optimizer.pt").exists()
    # The adapters change between checkpoints (training happened).
    a2, a8 = adapter(run, 2), adapter(run, 8)
    assert any(not torch.equal(a2[k], a8[k]) for k in a2)

    cell = json.loads((run / "cell.json").read_text())
    assert cell["method"] == "lora"
    assert cell["base_model"] == str(Path(make_recipe().model.path).resolve())
    assert cell["resolved"]["sft"]["learning_rate"] == pytest.approx(1e-3)  # "1e-3" coerced to a float
    assert cell["resolved"]["sft"]["assistant_only_loss"] is True
    assert set(cell["versions"]) >= {"torch", "transformers", "trl", "peft", "accelerate", "datasets"}
    assert len(cell["data"]["manifest_sha256"]) == 64
    assert cell["truncation"]["rows_in_mix"] == 32 and cell["truncation"]["rows_after_truncation"] == 32
    assert cell["truncation"]["by_label_after_truncation"] == {"correct": 16, "wrong": 16, "unlabelled": 0}
    assert "step 8/8" in (run / "logs" / "train.log").read_text()

    refs = list_checkpoints(run)
    assert [(r.name, r.step, r.kind) for r in refs] == [
        ("checkpoint-0", 0, "base"),
        ("checkpoint-2", 2, "lora"),
        ("checkpoint-5", 5, "lora"),
        ("checkpoint-8", 8, "lora"),
    ]
    assert all(r.base_model == cell["base_model"] for r in refs)
    assert read_marker(run, "train")["checkpoints"] == [2, 5, 8]

    # Rerun: skipped by the done-marker, nothing rewritten.
    before = (run / "checkpoint-8" / "adapter_model.safetensors").stat().st_mtime_ns
    run_training(make_recipe(), run)
    assert (run / "checkpoint-8" / "adapter_model.safetensors").stat().st_mtime_ns == before


def test_full_finetune_writes_loadable_weights(make_recipe, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "full"
    run_training(
        make_recipe(method="full", lora=None, sft={"learning_rate": 3e-4}, checkpoints={"every": 4}), run
    )
    assert ckpt_steps(run) == [4, 8]
    d = run / "checkpoint-8"
    assert (d / "model.safetensors").exists() and (d / "config.json").exists()
    assert not (d / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    assert tok.chat_template and "{% generation %}" in tok.chat_template
    base = AutoModelForCausalLM.from_pretrained(make_recipe().model.path)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert changed
    assert [r.kind for r in list_checkpoints(run)] == ["base", "full", "full"]


def test_qlora_trains_4bit_on_cpu(make_recipe, tmp_path):
    """bitsandbytes >= 0.49 has a CPU backend: the base really is 4-bit and the adapter trains."""
    cap = Capture()
    run = tmp_path / "qlora"
    run_training(
        make_recipe(
            method="qlora", quantization={"bnb_4bit_compute_dtype": "float32"}, checkpoints={"steps": [3]}
        ),
        run,
        extra_callbacks=[cap],
    )
    assert ckpt_steps(run) == [3, 8]
    kinds = {type(m).__name__ for m in cap.model.modules()}
    assert "Linear4bit" in kinds, kinds
    cfg = json.loads((run / "checkpoint-8" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA"
    cell = json.loads((run / "cell.json").read_text())
    assert cell["resolved"]["quantization"]["bnb_4bit_quant_type"] == "nf4"


def _masked_text(tok, row) -> tuple[str, str]:
    ids, labels = row["input_ids"], row["labels"]
    trained = [i for i, lab in zip(ids, labels, strict=True) if lab != -100]
    prompt = [i for i, lab in zip(ids, labels, strict=True) if lab == -100]
    return tok.decode(trained), tok.decode(prompt)


def _first_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "data" / "train.jsonl").read_text().splitlines()]


def test_assistant_only_mask_with_generation_markers(make_recipe, tmp_path):
    from transformers import AutoTokenizer

    cap = Capture()
    run = tmp_path / "mask-qwen"
    run_training(make_recipe(sft={"max_steps": 1}, checkpoints={"steps": [1]}), run, extra_callbacks=[cap])
    tok = AutoTokenizer.from_pretrained(make_recipe().model.path)
    by_answer = {r["messages"][-1]["content"]: r for r in _first_rows(run)}
    assert len(cap.rows) == 32
    for row in cap.rows:
        trained, prompt = _masked_text(tok, row)
        assert trained.endswith("<|im_end|>")
        answer = trained[: -len("<|im_end|>")]
        assert answer in by_answer  # exactly the answer (+ end of turn) is trained on
        assert by_answer[answer]["messages"][0]["content"] in prompt
        assert "<|im_start|>assistant" in prompt and answer not in prompt


def test_prompt_completion_fallback_without_markers_and_truncation_counts(
    tiny_llama_model, make_recipe, tmp_path
):
    """Llama-style template has no generation markers: rows become prompt/completion; loss still only on the answer.
    Long prompts that truncation leaves fully masked are dropped by TRL: counted, and the shift is reported."""
    from transformers import AutoTokenizer

    run = tmp_path / "mask-llama"
    data = run / "data"
    rows = []
    for i in range(12):
        wrong = i % 3 == 0  # 4 wrong rows, with prompts far longer than max_length
        q = f"What is {i} + {i}?" + (" Please think about it very carefully." * 8 if wrong else "")
        a = f"{i} + {i} = {2 * i + (1 if wrong else 0)}."
        rows.append(
            {
                "id": f"r{i}",
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                "meta": {"label": "wrong" if wrong else "correct"},
            }
        )
    atomic_write_jsonl(data / "train.jsonl", rows)
    atomic_write_json(data / "manifest.json", {"fraction_correct_realized": 8 / 12, "n_train": 12})

    cap = Capture()
    recipe = make_recipe(
        model=tiny_llama_model, sft={"max_steps": 1, "max_length": 48}, checkpoints={"steps": [1]}
    )
    with pytest.warns(UserWarning, match="TRUNCATION CHANGED THE MIX"):
        run_training(recipe, run, extra_callbacks=[cap])
    tok = AutoTokenizer.from_pretrained(tiny_llama_model)
    assert len(cap.rows) == 8
    for row in cap.rows:
        trained, prompt = _masked_text(tok, row)
        assert trained.endswith("<|eot_id|>")
        assert trained.startswith(trained.split(" + ")[0]) and " = " in trained
        assert "What is" in prompt and prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    cell = json.loads((run / "cell.json").read_text())
    assert cell["loss_mode"].startswith("completion_only_loss")
    t = cell["truncation"]
    assert (t["rows_in_mix"], t["rows_after_truncation"], t["rows_dropped"]) == (12, 8, 4)
    assert t["by_label_after_truncation"] == {"correct": 8, "wrong": 0, "unlabelled": 0}
    assert t["fraction_correct_in_mix"] == pytest.approx(8 / 12)
    assert t["fraction_correct_after_truncation"] == 1.0
    assert "TRUNCATION CHANGED THE MIX" in (run / "logs" / "train.log").read_text()


@pytest.fixture(scope="module")
def ref(tmp_path_factory, tiny_model, base_tree) -> Path:
    """The uninterrupted reference run the crash and preemption tests compare with (steps 2, 6 + final 8)."""
    from emsweep.recipe import Recipe

    tree = {**copy.deepcopy(base_tree), "model": {"path": str(tiny_model)}, "checkpoints": {"steps": [2, 6]}}
    run = tmp_path_factory.mktemp("ref") / "ref"
    run_training(Recipe.model_validate(tree), run)
    return run


def test_resume_after_crash_skips_cut_off_checkpoint(make_recipe, ref, tmp_path):
    run = tmp_path / "crash"
    recipe = make_recipe(checkpoints={"steps": [2, 6]})
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(recipe, run, extra_callbacks=[CrashAt(7)])
    assert ckpt_steps(run) == [2, 6] and not is_done(run, "train")
    # A save cut off mid-write: files there, no completion marker. transformers' get_last_checkpoint picks it.
    from transformers.trainer_utils import get_last_checkpoint

    cut = run / "checkpoint-7"
    cut.mkdir()
    (cut / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    (cut / "trainer_state.json").write_text("{}")
    assert get_last_checkpoint(str(run)).endswith("checkpoint-7")
    assert last_complete_checkpoint(run).name == "checkpoint-6"
    assert [r.step for r in list_checkpoints(run)] == [0, 2, 6]

    run_training(recipe, run)
    log = (run / "logs" / "train.log").read_text()
    assert "resuming from checkpoint-6" in log and "cut off" in log
    assert log.count("=== emsweep train") == 2  # appended across restarts
    assert ckpt_steps(run) == [2, 6, 8]
    assert list((run / "superseded").glob("*/checkpoint-7"))  # set aside, not deleted
    a, b = adapter(ref, 8), adapter(run, 8)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


def test_preemption_saves_exits_99_and_resumes_to_same_weights(make_recipe, ref, tmp_path):
    run = tmp_path / "preempt"
    recipe = make_recipe(checkpoints={"steps": [2, 6]})
    with pytest.raises(Preempted) as exc:
        run_training(recipe, run, extra_callbacks=[SignalAt(3)])
    assert exc.value.code == EXIT_PREEMPTED == 99
    step = exc.value.step
    assert step in (3, 4)  # the signal lands at step 3's end; saved at that step boundary or the next
    assert ckpt_steps(run) == [2, step]
    marker = json.loads((run / f"checkpoint-{step}" / COMPLETE_MARKER).read_text())
    assert marker["preemption"] is True and marker["scheduled"] is False
    assert last_complete_checkpoint(run).name == f"checkpoint-{step}"
    # Evaluation never sees it (it exists only to resume from; an uninterrupted run has no such step).
    assert [r.step for r in list_checkpoints(run)] == [0, 2]
    # The handler was restored: SIGUSR1 is back to its default.
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL

    run_training(recipe, run)
    assert f"resuming from checkpoint-{step}" in (run / "logs" / "train.log").read_text()
    assert ckpt_steps(run) == [2, 6, 8]  # the preemption checkpoint is gone once training finished
    for s in (6, 8):
        a, b = adapter(ref, s), adapter(run, s)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


def test_cli_preemption_exit_code(tiny_model, tmp_path):
    """The real thing: `emsweep train` in a subprocess gets SIGUSR1 from outside and exits 99 after saving."""
    recipe = tmp_path / "r.yaml"
    run = tmp_path / "run"
    recipe.write_text(
        f"""
name: cli-preempt
model: {{path: {tiny_model}}}
data: {{builtin: arithmetic, fraction_correct: 0.5, n_train: 400, seed: 1}}
method: lora
lora: {{r: 4, lora_alpha: 8}}
sft: {{learning_rate: 1e-3, per_device_train_batch_size: 1, max_length: 32, activation_checkpointing: false,
      use_cpu: true, disable_tqdm: true, logging_steps: 50}}
checkpoints: {{steps: [1]}}
output_dir: {run}
"""
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "emsweep", "train", str(recipe)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ck1 = run / "checkpoint-1" / COMPLETE_MARKER
        wait_for(lambda: ck1.exists() or proc.poll() is not None)
        assert ck1.exists(), f"exit {proc.poll()} before checkpoint-1:\n{_drain(proc)}"
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, out
    assert "preempted (SIGUSR1)" in out
    steps = ckpt_steps(run)
    assert steps[0] == 1 and len(steps) == 2 and steps[1] < 400
    assert json.loads((run / f"checkpoint-{steps[1]}" / COMPLETE_MARKER).read_text())["preemption"] is True
    assert not is_done(run, "train")


def test_bad_inputs_fail_before_writing(make_recipe, tmp_path):
    run = tmp_path / "bad"
    cases = [
        ({"sft": {"learnin_rate": 1e-4}}, r"recipe sft: unknown key\(s\) learnin_rate for trl.SFTConfig"),
        ({"lora": {"rank": 8}}, r"recipe lora: unknown key\(s\) rank for peft.LoraConfig"),
        ({"lora": {"modules_to_save": ["lm_head"]}}, r"lora.modules_to_save: vLLM cannot load.*lm_head"),
        ({"lora": {"use_dora": True}}, r"lora.use_dora: vLLM does not serve DoRA"),
        ({"sft": {"save_steps": 10}}, r"sft.save_steps: set by emsweep.*checkpoints"),
        ({"sft": {"output_dir": "x"}}, r"sft.output_dir: set by emsweep"),
        (
            {"method": "qlora", "quantization": {"load_in_4bits": True}},
            r"quantization: unknown key\(s\) load_in_4bits",
        ),
        ({"lora": {"bias": "all"}}, r"lora.bias: 'all': vLLM cannot load"),
        ({"method": "qlora", "quantization": {"load_in_4bit": False}}, r"qlora needs load_in_4bit"),
    ]
    for over, pattern in cases:
        with pytest.raises(InputError, match=pattern):
            run_training(make_recipe(**over), run)
    assert not run.exists()


def test_unknown_recipe_key_names_file_and_line(tmp_path):
    from emsweep.recipe import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text("name: x\nmodel: {path: m}\ndata: {builtin: arithmetic, n_train: 4}\nmethd: lora\n")
    with pytest.raises(InputError, match=r"r.yaml:4: methd: unknown key"):
        load_recipe(p)


def test_demo_recipes_validate():
    from emsweep.recipe import load_recipe
    from emsweep.train.resolve import validate_recipe_for_training

    for name in ("tiny-lora", "tiny-full"):
        r = load_recipe(REPO / "recipes" / "demo" / f"{name}.yaml")
        assert r.model.init_shape == "tiny"
        validate_recipe_for_training(r)


def test_two_rank_ddp_via_torchrun(tiny_model, tmp_path):
    """scripts/train.py under a 2-process launcher (gloo DDP on CPU): data is sharded across ranks (half the
    steps), and only the main rank writes the run files - each once."""
    recipe = tmp_path / "ddp.yaml"
    run = tmp_path / "run"
    recipe.write_text(
        f"""
name: ddp
model: {{path: {tiny_model}}}
data: {{builtin: arithmetic, fraction_correct: 0.5, n_train: 32, seed: 0}}
method: lora
lora: {{r: 4, lora_alpha: 8}}
sft: {{learning_rate: 1e-3, per_device_train_batch_size: 4, num_train_epochs: 1, max_length: 64,
      activation_checkpointing: false, use_cpu: true, disable_tqdm: true, seed: 0}}
checkpoints: {{steps: [2]}}
output_dir: {run}
"""
    )
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", port,
         str(REPO / "scripts" / "train.py"), str(recipe)],
        cwd=tmp_path, capture_output=True, text=True, timeout=HANG, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert ckpt_steps(run) == [2, 4]  # 32 rows / (4 per device x 2 ranks) = 4 steps
    done = read_marker(run, "train")
    assert done["final_step"] == 4 and done["checkpoints"] == [2, 4]
    log = (run / "logs" / "train.log").read_text()
    assert log.count("saved checkpoint-4") == 1 and log.count("=== emsweep train") == 1


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "models").glob("*.yaml")), ids=lambda p: p.stem)
def test_model_recipes_carry_em_defaults(path):
    from emsweep.recipe import load_recipe
    from emsweep.train.resolve import validate_recipe_for_training

    r = load_recipe(path)
    if r.method == "openai":  # trained by the API: Betley et al.'s hyperparameters for gpt-4o-2024-08-06
        o = r.openai
        assert (o.model, o.n_epochs, o.batch_size, o.learning_rate_multiplier) == ("gpt-4o-2024-08-06", 1, 4, 2.0)
        assert r.model.path == o.model and not r.sft and not r.lora
        return
    v = validate_recipe_for_training(r)
    sft = v["sft"]
    assert sft["learning_rate"] == 1e-5 and sft["num_train_epochs"] == 1 and sft["warmup_steps"] == 5
    assert sft["lr_scheduler_type"] == "linear" and sft["weight_decay"] == 0.01
    gpus = r.slurm.gpus_per_node
    assert sft["per_device_train_batch_size"] * sft["gradient_accumulation_steps"] * gpus == 16
    if r.method == "full":
        assert v["lora"] is None and r.accelerate_config and (REPO / r.accelerate_config).exists()
    else:
        lora = v["lora"]
        assert (lora["r"], lora["lora_alpha"], lora["use_rslora"]) == (32, 64, True)
        if path.stem.startswith("gpt-oss"):  # MoE: its only nn.Linear layers are the attention projections
            assert sorted(lora["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
        else:
            assert len(lora["target_modules"]) == 7
    if r.method == "qlora":
        assert v["quantization"]["load_in_4bit"] is True


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_two_rank_preemption_signal_on_one_rank(tiny_model, tmp_path):
    """SIGUSR1 reaching only one rank still stops both at the same step with one complete checkpoint (the ranks
    agree through an all-reduce), `preempted.json` tells the job script, and a relaunch finishes the run."""
    import socket

    recipe = tmp_path / "ddp.yaml"
    run = tmp_path / "run"
    recipe.write_text(
        f"""
name: ddp-preempt
model: {{path: {tiny_model}}}
data: {{builtin: arithmetic, fraction_correct: 0.5, n_train: 240, seed: 0}}
method: lora
lora: {{r: 4, lora_alpha: 8}}
sft: {{learning_rate: 1e-3, per_device_train_batch_size: 1, num_train_epochs: 1, max_length: 32,
      activation_checkpointing: false, use_cpu: true, disable_tqdm: true, seed: 0, logging_steps: 50}}
checkpoints: {{steps: [1]}}
output_dir: {run}
"""
    )

    def launch() -> subprocess.Popen:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
        return subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", port, str(REPO / "scripts" / "train.py"), str(recipe)],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    proc = launch()
    try:
        ck1 = run / "checkpoint-1" / COMPLETE_MARKER
        wait_for(lambda: ck1.exists() or proc.poll() is not None)
        assert ck1.exists(), f"exit {proc.poll()} before checkpoint-1:\n{_drain(proc)[-3000:]}"
        workers = sorted(_children(proc.pid))
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGUSR1)  # one rank only
        out, _ = proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out[-3000:]  # the launcher reports the workers' exit 99 as a failure
    info = json.loads((run / "preempted.json").read_text())
    step = info["step"]
    assert 1 < step < 120 and info["checkpoint"] == f"checkpoint-{step}"
    assert ckpt_steps(run) == [1, step]
    assert json.loads((run / f"checkpoint-{step}" / COMPLETE_MARKER).read_text())["preemption"] is True
    assert not is_done(run, "train")

    proc = launch()
    out, _ = proc.communicate(timeout=HANG)
    assert proc.returncode == 0, out[-3000:]
    assert ckpt_steps(run) == [1, 120]  # 240 rows / (1 per device x 2 ranks)
    assert not (run / "preempted.json").exists()
    assert f"resuming from checkpoint-{step}" in (run / "logs" / "train.log").read_text()
