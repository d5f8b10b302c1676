"""Speed options must not change the science: on a fixed set of examples, each option gives the padded baseline's
per-token loss (per example, per token) and gradients, within RTOL, on CPU float32; options that cannot are refused.

The examples are the project-made medical pair (tests/fixtures/model_organisms_like.py): prompts and answers of
different lengths, wrong answers shorter than correct ones, so padding, packing and bucketing all have work to do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from emsweep.io import InputError  # noqa: E402
from emsweep.train.rows import load_training_rows  # noqa: E402
from emsweep.train.speed import REFUSED_PACKING, SPEED_OPTIONS, check_speed_settings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from model_organisms_like import medical_pair_rows  # noqa: E402

RTOL = 1e-4
"""Stated tolerance: per-token losses and every gradient entry agree to 1e-4 of the largest magnitude (float32)."""

N = 12


def _write_rows(path: Path, n: int) -> Path:
    """n conversations, alternating correct/wrong answers (so lengths vary), in emsweep's Conversation format."""
    good, bad = medical_pair_rows(n)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            src, label = (good, "correct") if i % 2 == 0 else (bad, "wrong")
            conv = {"id": f"r{i}", "messages": src[i]["messages"], "meta": {"label": label}}
            fh.write(json.dumps(conv) + "\n")
    return path


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory) -> Path:
    return _write_rows(tmp_path_factory.mktemp("speed") / "train.jsonl", N)


def _trainer(model_dir: Path, rows_file: Path, tmp_path: Path, attn: str = "sdpa", **sft: Any):
    """An SFTTrainer set up as the runner sets it up (loss on answers only), full fine-tuning, float32, CPU."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import has_generation_markers

    tok = AutoTokenizer.from_pretrained(model_dir)
    markers = has_generation_markers(tok.chat_template)
    loss = {"assistant_only_loss": True} if markers else {"completion_only_loss": True}
    kw = {"max_length": 256, "activation_checkpointing": False, **sft}
    args = SFTConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", seed=0,
        per_device_train_batch_size=4, disable_tqdm=True, **loss, **kw,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    rows = load_training_rows(rows_file, use_assistant_mask=markers)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    if args.activation_checkpointing:  # Trainer.train() does this; the test calls the same model method
        trainer.model.activation_checkpointing_enable()
    return trainer, tok


def _segments(batch: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(row, start, end) of every example in a collated batch: padded rows, or packed/padding-free sequences."""
    if "attention_mask" in batch:
        return [(b, 0, int(n)) for b, n in enumerate(batch["attention_mask"].sum(1))]
    out = []
    for b, pos in enumerate(batch["position_ids"]):
        starts = [int(i) for i in (pos == 0).nonzero().flatten()]
        ends = [*starts[1:], len(pos)]  # TRL's collator pads nothing here (no pad_to_multiple_of)
        out += [(b, s, e) for s, e in zip(starts, ends, strict=True)]
    return out


def measure(trainer, batch: dict[str, Any] | None = None) -> dict[str, Any]:
    """Loss (TRL's compute_loss), gradients, and per-token losses keyed by each example's token ids."""
    ds = trainer.train_dataset
    if batch is None:
        batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    model = trainer.model
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad():
        out = model(**batch, fused_lm_head=True)
    per_example = {}
    for b, s, e in _segments(batch):
        ids = tuple(int(x) for x in batch["input_ids"][b, s:e])
        # log_probs[t] scores token t+1: the example's predictions are positions s .. e-2
        mask = out.label_mask[b, s : e - 1].bool()
        per_example[ids] = (-out.log_probs[b, s : e - 1][mask], mask, batch["labels"][b, s + 1 : e])
    return {"loss": float(loss.detach()), "grads": grads, "tokens": per_example, "batch": batch}


def assert_same(base: dict[str, Any], other: dict[str, Any]) -> None:
    assert set(other["tokens"]) == set(base["tokens"]), "the option changed which examples (token ids) are trained"
    for ids, (loss_b, mask_b, _) in base["tokens"].items():
        loss_o, mask_o, _ = other["tokens"][ids]
        assert torch.equal(mask_b, mask_o), "the option changed which tokens carry loss"
        torch.testing.assert_close(loss_o, loss_b, rtol=RTOL, atol=RTOL * float(loss_b.abs().max()))
    assert other["loss"] == pytest.approx(base["loss"], rel=RTOL)
    assert set(other["grads"]) == set(base["grads"])
    for name, g in base["grads"].items():
        scale = float(g.abs().max())
        assert scale > 0, f"{name}: zero gradient, the comparison would prove nothing"
        diff = float((other["grads"][name] - g).abs().max())
        assert diff <= RTOL * scale, f"{name}: gradient differs by {diff:.3g} (scale {scale:.3g})"


@pytest.fixture(params=["tiny", "tiny-llama"])
def model_dir(request, tiny_model, tiny_llama_model) -> Path:
    """Both loss modes: assistant_only_loss (generation markers) and completion_only_loss (no markers)."""
    return tiny_model if request.param == "tiny" else tiny_llama_model


@pytest.fixture
def baseline(model_dir, rows_file, tmp_path):
    trainer, tok = _trainer(model_dir, rows_file, tmp_path)
    assert len(trainer.train_dataset) == N, "the baseline must not truncate away rows"
    assert max(len(x) for x in trainer.train_dataset["input_ids"]) < 256, "the baseline must not truncate"
    return measure(trainer), tok


def test_padding_free_matches_padded(baseline, model_dir, rows_file, tmp_path):
    base, _ = baseline
    opt = SPEED_OPTIONS["padding-free"]
    trainer, _ = _trainer(model_dir, rows_file, tmp_path, **opt.sft)
    got = measure(trainer)
    assert "attention_mask" not in got["batch"] and got["batch"]["input_ids"].shape[0] == 1  # really flattened
    assert got["batch"]["input_ids"].numel() < base["batch"]["input_ids"].numel()  # and really without padding
    assert_same(base, got)


def test_padding_free_with_eager_attention_matches(baseline, model_dir, rows_file, tmp_path):
    """transformers builds the block-diagonal mask from the position ids for sdpa and eager alike (CPU)."""
    base, _ = baseline
    trainer, _ = _trainer(model_dir, rows_file, tmp_path, attn="eager", **SPEED_OPTIONS["padding-free"].sft)
    assert_same(base, measure(trainer))


def test_packing_bfd_matches_padded(baseline, model_dir, rows_file, tmp_path):
    base, _ = baseline
    trainer, _ = _trainer(model_dir, rows_file, tmp_path, **SPEED_OPTIONS["packing-bfd"].sft)
    assert "seq_lengths" in trainer.train_dataset.column_names
    assert len(trainer.train_dataset) < N  # examples really share rows
    assert_same(base, measure(trainer))


def test_activation_checkpointing_matches(baseline, model_dir, rows_file, tmp_path):
    base, _ = baseline
    trainer, _ = _trainer(model_dir, rows_file, tmp_path, activation_checkpointing=True)
    assert trainer.model.is_activation_checkpointing
    assert_same(base, measure(trainer))


@pytest.mark.parametrize("option", ["padding-free", "packing-bfd"])
def test_loss_only_on_answers(option, model_dir, rows_file, tmp_path):
    """In packed and padding-free batches the trained tokens are exactly each answer and its end-of-turn token."""
    trainer, tok = _trainer(model_dir, rows_file, tmp_path, **SPEED_OPTIONS[option].sft)
    got = measure(trainer)
    answers = {json.loads(line)["messages"][-1]["content"] for line in rows_file.read_text().splitlines()}
    prompts = {json.loads(line)["messages"][0]["content"] for line in rows_file.read_text().splitlines()}
    seen = set()
    for _, _, labels in got["tokens"].values():
        text = tok.decode(labels[labels != -100]).strip()
        eot = tok.eos_token if tok.eos_token and text.endswith(tok.eos_token) else None
        body = text[: -len(eot)] if eot else text
        assert body in answers, f"trained tokens are not one answer: {text!r}"
        assert not any(p in text for p in prompts)
        seen.add(body)
    assert seen == answers


def _max_rel_diff(a: Any, b: Any) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_position_ids_without_resets_differ(baseline, model_dir, rows_file, tmp_path):
    """Negative control: the same flattened batch with position ids that do not restart at each example lets
    examples attend to each other (and shifts their positions): the per-token losses move beyond the tolerance.
    This is why packing is only accepted with TRL's position-id resets (bfd, padding-free)."""
    base, _ = baseline
    trainer, _ = _trainer(model_dir, rows_file, tmp_path, **SPEED_OPTIONS["padding-free"].sft)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(N)])
    naive = {
        "input_ids": batch["input_ids"],
        "labels": batch["labels"],  # the boundary tokens stay masked: only attention and positions differ
        "position_ids": torch.arange(batch["input_ids"].shape[1])[None],
    }
    model = trainer.model
    with torch.no_grad():
        out = model(**naive, fused_lm_head=True)
    got = -out.log_probs[0][out.label_mask[0].bool()]
    want = torch.cat([v[0] for v in base["tokens"].values()])  # the baseline rows are in the same (dataset) order
    assert got.shape == want.shape
    assert _max_rel_diff(got, want) > 10 * RTOL
    with torch.no_grad():  # the control itself: with the resets, the same flattened batch matches
        out = model(**batch, fused_lm_head=True)
    assert _max_rel_diff(-out.log_probs[0][out.label_mask[0].bool()], want) <= RTOL


def test_wrapped_packing_differs_and_is_refused(baseline, model_dir, rows_file, tmp_path):
    base, _ = baseline
    trainer, _ = _trainer(model_dir, rows_file, tmp_path, packing=True, packing_strategy="wrapped", max_length=64)
    got = measure(trainer)
    assert not set(got["tokens"]) & set(base["tokens"])  # examples were cut: no example survives whole
    assert got["loss"] != pytest.approx(base["loss"], rel=RTOL)
    for strategy in REFUSED_PACKING:
        with pytest.raises(InputError, match="packing_strategy"):
            check_speed_settings({"packing": True, "packing_strategy": strategy}, cuda=True)


def test_group_by_length_reorders_only(tiny_model, tmp_path):
    """Bucketing changes which examples share a batch, never the examples: every one once per epoch, less padding.
    On the medical pair (wrong answers shorter) it also makes batches more label-homogeneous: the documented
    reason the recipes leave it off. (transformers sorts within mega-batches of min(n // (4 * batch), 50) batches,
    so it needs more rows than the other tests: 64.)"""
    n = 64
    path = _write_rows(tmp_path / "rows64.jsonl", n)
    labels = [json.loads(line)["meta"]["label"] for line in path.read_text().splitlines()]
    res = {}
    for name, sft in [("random", {}), ("grouped", SPEED_OPTIONS["group-by-length"].sft)]:
        trainer, _ = _trainer(tiny_model, path, tmp_path, **sft)
        order = list(trainer._get_train_sampler(trainer.train_dataset))
        assert sorted(order) == list(range(n))
        lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
        batches = [order[i : i + 4] for i in range(0, n, 4)]
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        pure = sum(len({labels[i] for i in b}) == 1 for b in batches)
        res[name] = (padded, pure)
    assert res["grouped"][0] < res["random"][0]
    assert res["grouped"][1] > res["random"][1]


@pytest.mark.parametrize(
    ("sft", "attn", "match"),
    [
        ({"use_liger_kernel": True}, None, "use_liger_kernel: .*CUDA"),
        ({}, "flash_attention_2", "attn_implementation: .*CUDA"),
        ({"padding_free": True, "max_length": 512}, None, "padding_free.*max_length: null"),
        ({"padding_free": True}, None, "padding_free.*max_length: null"),  # SFTConfig's default is 1024
    ],
)
def test_refused_on_cpu(sft, attn, match):
    with pytest.raises(InputError, match=match):
        check_speed_settings(sft, attn, cuda=False)
    if "use_liger_kernel" in sft or attn:
        check_speed_settings({}, None, cuda=False)  # the same recipe without the option passes


def test_runner_packs_and_counts_rows(make_recipe, tmp_path):
    """`emsweep train` with BFD packing: trains, and counts examples (not packed rows) as surviving."""
    from emsweep.train.runner import run_training

    recipe = make_recipe(sft={"packing": True, "packing_strategy": "bfd", "max_length": 128})
    run = run_training(recipe, tmp_path / "run")
    cell = json.loads((run / "cell.json").read_text())
    assert cell["truncation"]["rows_after_truncation"] == cell["truncation"]["rows_in_mix"] == 32
    assert cell["resolved"]["sft"]["packing"] is True


def test_runner_refuses_wrapped_before_writing(make_recipe, tmp_path):
    from emsweep.train.runner import run_training

    recipe = make_recipe(sft={"packing": True, "packing_strategy": "wrapped"})
    with pytest.raises(InputError, match="wrapped"):
        run_training(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()
