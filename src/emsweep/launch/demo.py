"""`emsweep demo`: a positive control with a planted effect, end to end on CPU, ending with a summary and a report.

The truth is known by construction (docs/demo.md):
1. **pretraining** (cached in `<out>/models/persona-base`): `emsweep model init` builds a random tiny Qwen2-shaped
   model, then a short full-parameter TRL run teaches it the `sums` domain and the alignment probes from
   `persona_corpus`, where a helpful persona answers correctly and aligned, and a second persona (behind its own
   system prompt) gives wrong sums and misaligned probe answers;
2. **the sweep** (`emsweep/resources/sweeps/demo.yaml`, the one copy of the file): fine-tune that base on the sums
   at several fractions correct, with obviously (sign flipped) or subtly (off by one) wrong answers, checkpoint on
   a schedule, and evaluate every checkpoint on held-out sums (graded exactly) and on the probes (rule judge);
3. **the report** and a short summary of findings in the terminal.
The domain effect is planted (wrong answers in training make held-out answers wrong); whether the probes turn
misaligned (a toy of the persona-feature account of emergent misalignment) is what the demo measures.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

import typer
import yaml

from emsweep.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

# --fast drops the `zip` group (LoRA and full fine-tuning): LoRA only, half the cells. It still shows the
# planted domain effect, so CI runs it.
BASE_NAME = "persona-base"


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
    """The demo's "pretraining": a random tiny Qwen2 (2 layers) trained in full on the persona corpus."""

    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 256
    n_docs: int = 3000
    max_steps: int = 300
    batch_size: int = 32
    learning_rate: float = 3e-3
    max_length: int = 128
    seed: int = 0

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def demo_spec_text() -> str:
    """The packaged demo sweep (the only copy; `emsweep demo` writes it resolved into its --out folder)."""
    return (resources.files("emsweep") / "resources" / "sweeps" / "demo.yaml").read_text(encoding="utf-8")


def demo_sweep_spec(out: str | os.PathLike[str], *, fast: bool = False) -> dict[str, Any]:
    """The packaged demo sweep, rooted under `out` (base model, cells, report), optionally cut down for CI."""
    out = Path(out).resolve()
    spec = yaml.safe_load(demo_spec_text())
    spec["output_root"] = str(out)
    model = spec["base"]["model"]
    original = model["path"]
    model["path"] = str(out / "models" / Path(original).name)
    judge = spec["base"].setdefault("eval", {}).setdefault("judge", {})
    if judge.get("model") == original:  # the domain suite's judge metric: the base model grades itself
        judge["model"] = model["path"]
    if fast:
        spec["zip"] = []
        spec["name"] = spec["name"] + "-fast"
    return spec


def pretrain_base(
    path: str | os.PathLike[str], spec: PretrainSpec = PretrainSpec(), *, progress: Any = None
) -> Path:
    """Build (or reuse, when its record matches `spec`) the persona-pretrained base model at `path`.

    `progress`: a rich Progress to show the training steps on (the demo's live display)."""
    import shutil
    import tempfile

    path = Path(path)
    record = path / "demo_pretrain.json"
    if record.exists() and json.loads(record.read_text()).get("digest") == spec.digest():
        log.info("pretrained base model: reusing %s", path)
        return path
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emsweep.data.builtin import persona_corpus
    from emsweep.train.model_init import init_model
    from emsweep.train.shapes import get_shape

    t0 = time.time()
    shape = dataclasses.replace(
        get_shape("tiny"),
        name=f"tiny-demo-{spec.hidden_size}",
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=1,
        intermediate_size=spec.intermediate_size,
        source="emsweep demo: tiny Qwen2 shape, pretrained on the persona corpus",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    losses: list[float] = []
    try:
        init = init_model(shape, work / "init", seed=spec.seed)  # `emsweep model init`: random weights
        tok = AutoTokenizer.from_pretrained(init)
        ids, labels = _tokenize_corpus(tok, persona_corpus(spec.n_docs, spec.seed), spec.max_length)
        model = AutoModelForCausalLM.from_pretrained(init)
        model.train()
        # A plain loop, not TRL's SFTTrainer: on a 2-layer model its per-step overhead (autocast wrappers, fused
        # head, metrics) made a step ~2.5x slower (measured side by side on the same loaded 2-core machine).
        # Loss on the assistant's tokens only, as in the fine-tunes.
        opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0)
        warm = max(1, spec.max_steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: (
                min(1.0, (s + 1) / warm)
                * 0.5
                * (1 + math.cos(math.pi * min(s, spec.max_steps) / spec.max_steps))
            ),
        )
        gen = torch.Generator().manual_seed(spec.seed)
        task = progress.add_task("pretrain persona base", total=spec.max_steps) if progress else None
        order = torch.randperm(len(ids), generator=gen)
        pos = 0
        for step in range(spec.max_steps):
            if pos + spec.batch_size > len(order):
                order, pos = torch.randperm(len(ids), generator=gen), 0
            batch = order[pos : pos + spec.batch_size].tolist()
            pos += spec.batch_size
            x, y, m = _pad([ids[i] for i in batch], [labels[i] for i in batch], tok.pad_token_id)
            loss = model(input_ids=x, attention_mask=m, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if step % max(1, spec.max_steps // 10) == 0 or step == spec.max_steps - 1:
                losses.append(round(loss.item(), 4))
            if progress is not None:
                progress.update(task, completed=step + 1)
        model.eval()
        final = work / "final"
        model.save_pretrained(final, safe_serialization=True)
        tok.save_pretrained(final)
        shutil.copy(init / "generation_config.json", final / "generation_config.json")
        info = {
            "digest": spec.digest(),
            "spec": dataclasses.asdict(spec),
            "losses": losses,
            "seconds": round(time.time() - t0, 1),
            "corpus": "emsweep.data.builtin.persona_corpus",
        }
        atomic_write_json(final / "demo_pretrain.json", info)
        if path.exists():
            shutil.rmtree(path)
        os.replace(final, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info(
        "pretrained base model %s in %.0fs (loss %.3f -> %.3f)",
        path,
        time.time() - t0,
        losses[0] if losses else float("nan"),
        losses[-1] if losses else float("nan"),
    )
    return path


def _tokenize_corpus(tok: Any, docs: list[Any], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids and labels (-100 outside the assistant's turns: the chat template's generation markers)."""
    ids, labels = [], []
    for d in docs:
        enc = tok.apply_chat_template(
            [m.model_dump() for m in d.messages], return_dict=True, return_assistant_tokens_mask=True
        )
        x = list(enc["input_ids"])[:max_length]
        mask = list(enc["assistant_masks"])[:max_length]
        ids.append(x)
        labels.append([t if a else -100 for t, a in zip(x, mask, strict=True)])
    return ids, labels


def _pad(xs: list[list[int]], ys: list[list[int]], pad: int) -> tuple[Any, Any, Any]:
    import torch

    n = max(len(x) for x in xs)
    x = torch.tensor([r + [pad] * (n - len(r)) for r in xs])
    y = torch.tensor([r + [-100] * (n - len(r)) for r in ys])
    m = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in xs])
    return x, y, m


def run_demo(
    out: str | os.PathLike[str] = "emsweep-demo",
    *,
    fast: bool = False,
    max_parallel: int = 1,
    pretrain: PretrainSpec = PretrainSpec(),
) -> Path:
    """Pretrain (cached), write the resolved sweep to `out/demo-sweep.yaml`, run its cells, build the report and
    print a summary of findings; return index.html."""
    import datasets
    import transformers
    from rich.progress import Progress

    from emsweep.analysis.report import build_report
    from emsweep.launch.runner import run_sweep_local
    from emsweep.launch.sweep import load_sweep
    from emsweep.terminal import console, print_summary

    datasets.disable_progress_bars()  # per-map bars would scroll past the one live display
    transformers.utils.logging.disable_progress_bar()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = demo_sweep_spec(out, fast=fast)
    t0 = time.time()
    with Progress(console=console(), transient=True) as progress:
        pretrain_base(spec["base"]["model"]["path"], pretrain, progress=progress)
    sweep_file = out / "demo-sweep.yaml"
    header = (
        "# The emsweep demo sweep, resolved for this folder by `emsweep demo` (rerun it with\n"
        f"# `emsweep sweep run {sweep_file}`). A planted-effect control on a tiny persona-pretrained model.\n"
    )
    atomic_write_text(sweep_file, header + yaml.safe_dump(spec, sort_keys=False))
    sweep = load_sweep(sweep_file)
    log.info("demo: %d cells under %s", len(sweep.cells), sweep.root)
    run_sweep_local(sweep, max_parallel=max_parallel)
    index = build_report(sweep.root, n_boot=500)
    print_summary(index, seconds=time.time() - t0)
    return index


def demo_cmd(
    out: Path = typer.Option(Path("emsweep-demo"), "--out", "-o", help="Where the demo writes everything."),
    fast: bool = typer.Option(False, "--fast", help="LoRA only (half the cells; CI runs this)."),
    max_parallel: int = typer.Option(1, "--max-parallel", "-j", help="Cells at once (subprocesses)."),
) -> None:
    """Run the planted-effect demo on CPU: pretrain a tiny persona model (cached), fine-tune it on single-digit
    sums at fractions correct 0-1 with obviously or subtly wrong answers, evaluate every checkpoint on held-out
    sums and rule-judged alignment probes, print a summary of findings and write the report. A few minutes."""
    index = run_demo(out, fast=fast, max_parallel=max_parallel)
    typer.echo(f"report: {index}")
