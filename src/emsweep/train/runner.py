"""Run one fine-tune: recipe -> data mix -> TRL `SFTTrainer` (lora / qlora / full) -> scheduled checkpoints.

What this module adds on top of TRL, and why:
- loss on the answer only, whatever the chat template: `assistant_only_loss` where the template has
  `{% generation %}` markers, else conversational prompt/completion rows (`completion_only_loss`), because TRL
  refuses assistant-only loss on templates without markers (Llama 3.1);
- counts of the rows that survive truncation (TRL drops fully masked rows silently, which shifts the
  correct/wrong ratio) in `cell.json` and the log, with a loud warning if the realised fraction moved;
- a checkpoint schedule (every N / explicit / log-spaced) and a completion marker per checkpoint, so resume and
  evaluation never use a save that was cut off;
- preemption: SIGUSR1/SIGTERM -> save a complete checkpoint at the next step boundary, exit `EXIT_PREEMPTED`
  (99) so a SLURM job can requeue itself; the restart resumes there and ends with the same weights.
  (transformers' `enable_jit_checkpoint` only handles SIGTERM, after a 3 s timer, and writes no completion
  marker; SLURM's `--signal` sends SIGUSR1 by default here, so a small callback does it instead.)

Where the parts live: `resolve.py` (recipe sections -> SFTConfig/LoraConfig/BitsAndBytesConfig kwargs, the base
model, loading it), `rows.py` (mix -> TRL rows, rows surviving truncation), `callbacks.py` (checkpoint schedule,
preemption callback and signals, log file), `checkpoints.py` (completion markers, tidying old saves). This
module is the run itself, top to bottom, and its exit contract (`Preempted`, `EXIT_PREEMPTED`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emsweep.io import InputError, atomic_write_json, clear_done, is_done, mark_done, sha256_file
from emsweep.layout import CellPaths, read_cell
from emsweep.provenance import provenance
from emsweep.train.callbacks import FileLog, PreemptSignals, make_callbacks, show_steps_on_live_display
from emsweep.train.checkpoints import (
    drop_unscheduled,
    incomplete_checkpoints,
    is_complete,
    last_complete_checkpoint,
    set_aside,
)
from emsweep.train.resolve import load_model, resolve_base_model, validate_recipe_for_training
from emsweep.train.rows import count_surviving, load_training_rows, prepare_data, report_survival

if TYPE_CHECKING:
    from emsweep.recipe import Recipe

log = logging.getLogger("emsweep.train")

EXIT_PREEMPTED = 99
"""Exit code after a preemption signal was handled and a complete checkpoint saved: requeue and rerun."""

STAGE = "train"
PREEMPTED_MARKER = "preempted.json"
"""Written into the run folder when training stopped for preemption (removed when it resumes): under
`accelerate launch` the launcher's exit code is not 99, so job scripts can check this file instead."""


class Preempted(SystemExit):
    """Raised after a preemption checkpoint was saved. A SystemExit so an uncaught one exits with code 99."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(EXIT_PREEMPTED)
        self.step = step
        self.checkpoint = checkpoint


def run_training(
    recipe: Recipe,
    output_dir: str | os.PathLike[str] | None = None,
    *,
    resume: bool = True,
    extra_callbacks: list[Any] | None = None,
) -> Path:
    """Train one cell; returns the run folder. Idempotent: a finished run (done-marker `train`) is skipped.

    Resumes from the last *complete* checkpoint unless `resume=False` (then earlier checkpoints are moved to
    `<run>/superseded/`). On SIGUSR1/SIGTERM raises `Preempted` (a SystemExit with code 99) after saving.
    `extra_callbacks` are extra `TrainerCallback`s (tests use one to interrupt at a given step).
    """
    paths = CellPaths.of(Path(output_dir) if output_dir else recipe.resolved_output_dir())
    run_dir = paths.root
    if recipe.method == "openai":  # trained by OpenAI: the executor routes it to launch.openai_arm, not here
        if is_done(run_dir, STAGE):
            return run_dir
        raise InputError(
            f"recipe {recipe.name!r} has `method: openai`: OpenAI trains it, not this process; run `emsweep train "
            "RECIPE --create-openai-jobs` (or `emsweep sweep run SWEEP --create-openai-jobs`), or `emsweep openai "
            "finetune RECIPE` and `emsweep openai poll`"
        )
    resolved = validate_recipe_for_training(recipe)  # every key checked before anything is written

    from emsweep.lock import main_rank, stage_lock

    # one trainer per run folder: a second `emsweep train` waits, then finds the marker and skips (rank 0 locks)
    with stage_lock(run_dir, STAGE) if main_rank() else contextlib.nullcontext():
        return _run_training_locked(recipe, paths, resolved, resume=resume, extra_callbacks=extra_callbacks)


def _run_training_locked(
    recipe: Recipe,
    paths: CellPaths,
    resolved: dict[str, Any],
    *,
    resume: bool,
    extra_callbacks: list[Any] | None,
) -> Path:
    run_dir = paths.root
    if is_done(run_dir, STAGE):
        if resume:
            log.info("%s: training already done (marker .done/train.json); skipping", run_dir)
            return run_dir
        clear_done(run_dir, STAGE)

    import torch
    from accelerate import PartialState

    # One process, or one rank of `accelerate launch`/torchrun: only the main one writes files. On CPU the
    # process group (gloo) must be asked for explicitly, or every rank would think it is the main one.
    cpu = bool(resolved["sft"].get("use_cpu")) or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    if recipe.accelerate_config and state.num_processes == 1:
        log.warning(
            "recipe names accelerate_config %s but this is a single process; for several GPUs run\n"
            "  accelerate launch --config_file %s --num_processes N scripts/train.py RECIPE.yaml",
            recipe.accelerate_config,
            recipe.accelerate_config,
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    paths.logs_dir.mkdir(parents=True, exist_ok=True)
    log_file = paths.logs_dir / "train.log"
    preempt_flag: dict[str, Any] = {}
    # Signals are caught from here on: one during data or model loading stops the run before the first step.
    with FileLog(log_file, enabled=state.is_main_process), PreemptSignals(preempt_flag):
        return _run(
            recipe,
            paths,
            resolved,
            resume=resume,
            log_file=log_file,
            extra=extra_callbacks or [],
            state=state,
            preempt_flag=preempt_flag,
        )


def _run(
    recipe: Recipe,
    paths: CellPaths,
    resolved: dict[str, Any],
    *,
    resume: bool,
    log_file: Path,
    extra: list[Any],
    state: Any,
    preempt_flag: dict[str, Any],
) -> Path:
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import has_generation_markers

    run_dir = paths.root
    log.info("=== emsweep train %s (method %s) -> %s", recipe.name, recipe.method, run_dir)

    with (
        state.main_process_first()
    ):  # the main rank tidies, builds data and model; the others then reuse them
        if state.is_main_process:
            cut_off = incomplete_checkpoints(run_dir)
            if cut_off:
                set_aside(run_dir, cut_off, "checkpoint save(s) cut off before completion")
            if not resume:
                set_aside(run_dir, sorted(run_dir.glob("checkpoint-*")), "--no-resume")
            (run_dir / PREEMPTED_MARKER).unlink(missing_ok=True)
        resume_from = last_complete_checkpoint(run_dir) if resume else None
        manifest = prepare_data(recipe, paths)
        base_model = resolve_base_model(recipe)
    tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=recipe.model.trust_remote_code)
    if tokenizer.chat_template is None:
        raise InputError(
            f"model {base_model}: its tokenizer has no chat template; emsweep trains on chat data "
            "(use an -Instruct model or add a chat_template to its tokenizer_config.json)"
        )
    markers = has_generation_markers(tokenizer.chat_template)
    sft_kwargs = dict(resolved["sft"])
    if markers:
        sft_kwargs.setdefault("assistant_only_loss", True)
        loss_mode = "assistant_only_loss (chat template has generation markers)"
    else:
        sft_kwargs.setdefault("completion_only_loss", True)
        if sft_kwargs.get("assistant_only_loss"):
            raise InputError(
                f"recipe sft.assistant_only_loss: the chat template of {base_model} has no "
                "{% generation %} markers; leave it unset and emsweep trains on prompt/completion rows instead"
            )
        loss_mode = "completion_only_loss on prompt/completion rows (chat template has no generation markers)"
    log.info("loss on answers only: %s", loss_mode)
    rows = load_training_rows(paths.train_jsonl, use_assistant_mask=markers)

    from datasets import Dataset

    dataset = Dataset.from_list(rows)
    from emsweep.train.signals import TASK_HELDOUT, make_signals_callback

    task_file = paths.data_dir / TASK_HELDOUT  # the checkpoint study's held-out loss (docs/study.md)
    task_rows = load_training_rows(task_file, use_assistant_mask=markers) if task_file.exists() else None
    signals = make_signals_callback(run_dir) if task_rows else None
    sft_kwargs.setdefault("report_to", "none")
    sft_kwargs.setdefault("logging_steps", 1)
    args = SFTConfig(output_dir=str(run_dir), save_strategy="no", **sft_kwargs)

    model = load_model(recipe, base_model, resolved["quantization"])
    peft_config = None
    if resolved["lora"] is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(**resolved["lora"])

    callbacks = [*make_callbacks(run_dir, recipe.checkpoints, log_file, preempt_flag), *extra]
    callbacks += [signals] if signals is not None else []
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=Dataset.from_list(task_rows) if task_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    if signals is not None:
        signals.trainer = trainer
    show_steps_on_live_display(trainer, recipe.name)
    survival = count_surviving(trainer.train_dataset, rows)
    if args.padding_free and args.max_length is None and "input_ids" in trainer.train_dataset.column_names:
        longest = max(len(x) for x in trainer.train_dataset["input_ids"])  # padding-free rows are not truncated
        log.info("padding_free without truncation: longest row %d tokens", longest)
        survival["longest_row_tokens"] = longest
    report_survival(survival, manifest)

    manifest_sha = sha256_file(paths.manifest) if paths.manifest.exists() else None
    cell_update = {
        "name": recipe.name,
        "recipe": recipe.model_dump(mode="json"),
        "method": recipe.method,
        "base_model": base_model,
        "loss_mode": loss_mode,
        "resolved": {
            "sft": {
                k: v for k, v in args.to_dict().items() if k in sft_kwargs or k in ("seed", "max_length")
            },
            "lora": resolved["lora"],
            "quantization": resolved["quantization"],
        },
        **provenance(),
        "data": {
            "manifest": str(paths.manifest),
            "manifest_sha256": manifest_sha,
            "train_sha256": sha256_file(paths.train_jsonl),
            "fraction_correct_realized": manifest.get("fraction_correct_realized"),
        },
        "truncation": survival,
    }
    if state.is_main_process:
        read_cell(paths.root, strict=False).extend(cell_update)  # merged into the launcher's record

    if resume_from is not None:
        log.info("resuming from %s (last complete checkpoint)", resume_from.name)
    if preempt_flag.get("requested"):  # signalled while loading: nothing new to save
        _preempted(run_dir, state, preempt_flag, resume_from_step(resume_from), resume_from)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    if preempt_flag.get("requested") and trainer.state.global_step < trainer.state.max_steps:
        step = int(preempt_flag.get("step", trainer.state.global_step))
        ckpt = run_dir / f"checkpoint-{step}"
        _preempted(run_dir, state, preempt_flag, step, ckpt if is_complete(ckpt) else None)

    sched = callbacks[0]
    final_step = trainer.state.global_step
    state.wait_for_everyone()
    if not state.is_main_process:
        return run_dir
    drop_unscheduled(run_dir, set(sched.scheduled))
    saved = sorted(int(d.name.split("-")[1]) for d in run_dir.glob("checkpoint-*") if is_complete(d))
    mark_done(
        run_dir,
        STAGE,
        {
            "final_step": final_step,
            "checkpoints": saved,
            "scheduled": sched.scheduled,
            "rows_after_truncation": survival["rows_after_truncation"],
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    log.info("done: %d steps, checkpoints %s", final_step, saved)
    return run_dir


def resume_from_step(ckpt: Path | None) -> int:
    return int(ckpt.name.split("-")[1]) if ckpt is not None else 0


def _preempted(run_dir: Path, state: Any, flag: dict[str, Any], step: int, ckpt: Path | None) -> None:
    """Record the preemption and leave with EXIT_PREEMPTED (a rerun resumes from `ckpt`)."""
    log.warning(
        "preempted (%s) at step %d: %s; exit %d to requeue",
        flag.get("signal", "callback"),
        step,
        f"saved {ckpt.name}" if ckpt else "no new checkpoint",
        EXIT_PREEMPTED,
    )
    if state.is_main_process:
        atomic_write_json(
            run_dir / PREEMPTED_MARKER,
            {"step": step, "checkpoint": ckpt.name if ckpt else None, "signal": flag.get("signal")},
        )
    raise Preempted(step, ckpt)


__all__: list[str] = [
    "EXIT_PREEMPTED",
    "Preempted",
    "run_training",
]
