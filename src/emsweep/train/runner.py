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
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import inspect
import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from emsweep.data.conversation import Conversation
from emsweep.io import (
    InputError,
    atomic_write_json,
    clear_done,
    is_done,
    mark_done,
    read_jsonl,
    sha256_file,
)
from emsweep.layout import CellPaths, read_cell
from emsweep.provenance import provenance
from emsweep.recipe import Recipe
from emsweep.train.checkpoints import (
    COMPLETE_MARKER,
    incomplete_checkpoints,
    is_complete,
    last_complete_checkpoint,
    mark_complete,
    schedule_steps,
)

log = logging.getLogger("emsweep.train")

EXIT_PREEMPTED = 99
"""Exit code after a preemption signal was handled and a complete checkpoint saved: requeue and rerun."""

STAGE = "train"
PREEMPTED_MARKER = "preempted.json"
"""Written into the run folder when training stopped for preemption (removed when it resumes): under
`accelerate launch` the launcher's exit code is not 99, so job scripts can check this file instead."""

# SFTConfig keys the harness owns: the run folder and the checkpoint schedule come from the recipe.
OWNED_SFT_KEYS = {
    "output_dir": "use --output-dir or the recipe's `output_dir`",
    "save_strategy": "use the recipe's `checkpoints:` section (every / steps / log_spaced)",
    "save_steps": "use the recipe's `checkpoints:` section (every / steps / log_spaced)",
    "resume_from_checkpoint": "emsweep resumes from the last complete checkpoint (use --no-resume to restart)",
    "save_total_limit": "emsweep keeps every scheduled checkpoint (they are what gets evaluated)",
}

# LoRA options that produce adapters vLLM cannot load (it serves plain LoRA on linear layers only).
VLLM_UNSUPPORTED_LORA = {
    "modules_to_save": "vLLM cannot load adapters that carry full copies of modules (e.g. lm_head, embed_tokens)",
    "use_dora": "vLLM does not serve DoRA adapters",
    "trainable_token_indices": "vLLM cannot load adapters with trainable token embeddings",
    "layer_replication": "vLLM cannot load adapters with layer replication",
    "lora_bias": "vLLM cannot load adapters with LoRA bias terms",
}

LORA_DEFAULTS: dict[str, Any] = {
    "r": 32,
    "lora_alpha": 64,
    "lora_dropout": 0.0,
    "use_rslora": True,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "bias": "none",
}

QLORA_DEFAULTS: dict[str, Any] = {
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "bfloat16",
}


class Preempted(SystemExit):
    """Raised after a preemption checkpoint was saved. A SystemExit so an uncaught one exits with code 99."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(EXIT_PREEMPTED)
        self.step = step
        self.checkpoint = checkpoint


# --- recipe sections -> library kwargs --------------------------------------------------------------------


def _numeric_types(tp: Any) -> tuple[type, ...]:
    """The numeric types a dataclass field accepts (float before int), from its annotation."""
    text = str(tp)
    out: list[type] = []
    if tp is float or "float" in text:
        out.append(float)
    if tp is int or "int" in text.replace("Interval", ""):
        out.append(int)
    return tuple(out)


def coerce_numbers(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """YAML 1.1 reads `1e-5` as a string: turn strings into numbers where the target field is numeric."""
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    out = dict(values)
    for key, value in values.items():
        if not isinstance(value, str) or key not in fields:
            continue
        for typ in _numeric_types(fields[key].type):
            try:
                num = float(value) if typ is float else int(value)
            except ValueError:
                continue
            out[key] = num
            break
    return out


def _field_names(cls: type) -> set[str]:
    """Accepted keyword names: dataclass fields plus __init__ parameters (BitsAndBytesConfig has only the latter)."""
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    names |= {
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    return names


def resolve_sft_kwargs(recipe: Recipe) -> dict[str, Any]:
    from trl import SFTConfig

    from emsweep.config import check_passthrough_keys

    sft = dict(recipe.sft)
    check_passthrough_keys(sft, _field_names(SFTConfig), "recipe sft", "trl.SFTConfig")
    for key, why in OWNED_SFT_KEYS.items():
        if key in sft:
            raise InputError(f"recipe sft.{key}: set by emsweep, not in `sft:` ({why})")
    sft = coerce_numbers(sft, SFTConfig)
    from emsweep.train.speed import check_speed_settings  # refuses speed options that change what is trained

    check_speed_settings(sft, recipe.model.attn_implementation)
    return sft


def resolve_lora_kwargs(recipe: Recipe) -> dict[str, Any] | None:
    """LoraConfig kwargs (EM defaults under the recipe's), or None for full fine-tuning."""
    from peft import LoraConfig

    from emsweep.config import check_passthrough_keys

    if recipe.method == "full":
        if recipe.lora:  # sweeps cross `method: [lora, full]` over one base recipe: ignore, don't fail
            log.info("method full: ignoring the recipe's `lora:` section")
        return None
    lora = dict(recipe.lora)
    check_passthrough_keys(lora, _field_names(LoraConfig), "recipe lora", "peft.LoraConfig")
    for key, why in VLLM_UNSUPPORTED_LORA.items():
        value = lora.get(key)
        if value in (None, False, [], {}, ""):
            continue
        extra = ""
        if key == "modules_to_save":
            names = [value] if isinstance(value, str) else list(value)
            extra = f" (got {names}; to train lm_head/embed_tokens use method: full)"
        raise InputError(f"recipe lora.{key}: {why}{extra}; remove it so the checkpoints stay evaluable")
    if lora.get("bias", "none") != "none":
        raise InputError(
            f"recipe lora.bias: {lora['bias']!r}: vLLM cannot load adapters with biases; use 'none'"
        )
    if lora.get("task_type", "CAUSAL_LM") != "CAUSAL_LM":
        raise InputError(f"recipe lora.task_type: {lora['task_type']!r}: emsweep trains CAUSAL_LM adapters")
    merged = {**LORA_DEFAULTS, **coerce_numbers(lora, LoraConfig), "task_type": "CAUSAL_LM"}
    return merged


def resolve_quantization_kwargs(recipe: Recipe) -> dict[str, Any] | None:
    from transformers import BitsAndBytesConfig

    from emsweep.config import check_passthrough_keys

    if recipe.method != "qlora":
        if recipe.quantization:
            log.info("method %s: ignoring the recipe's `quantization:` section (qlora only)", recipe.method)
        return None
    q = dict(recipe.quantization)
    check_passthrough_keys(q, _field_names(BitsAndBytesConfig), "recipe quantization", "BitsAndBytesConfig")
    merged = {**QLORA_DEFAULTS, **q}
    if not merged.get("load_in_4bit") and not merged.get("load_in_8bit"):
        raise InputError("recipe quantization: qlora needs load_in_4bit: true (or load_in_8bit: true)")
    return merged


def validate_recipe_for_training(recipe: Recipe) -> dict[str, Any]:
    """Check every passthrough section before anything is written; returns the resolved kwargs."""
    return {
        "sft": resolve_sft_kwargs(recipe),
        "lora": resolve_lora_kwargs(recipe),
        "quantization": resolve_quantization_kwargs(recipe),
    }


# --- data -------------------------------------------------------------------------------------------------


def prepare_data(recipe: Recipe, paths: CellPaths) -> dict[str, Any]:
    """Build the mix into `<run>/data/` with helper A's `build_mix` (a no-op when it is already there).

    A run folder whose `data/` already holds a train.jsonl with a manifest (e.g. a mix built by
    `emsweep data mix`) is used as is.
    """
    if paths.train_jsonl.exists() and paths.manifest.exists():
        return json.loads(paths.manifest.read_text())
    from emsweep.data.mix import build_mix

    return build_mix(recipe.data, paths.data_dir)


def _row_label(conv: Conversation) -> str | None:
    label = conv.meta.get("label")
    return label if label in ("correct", "wrong") else None


def load_training_rows(path: Path, *, use_assistant_mask: bool) -> list[dict[str, Any]]:
    """Conversations -> TRL rows. With generation markers: `messages`; else prompt/completion (conversational)."""
    rows = []
    for line, raw in read_jsonl(path):
        try:
            conv = Conversation.model_validate(raw)
            last = conv.last_assistant_index()
        except ValueError as exc:
            raise InputError(f"{path}:{line}: {exc}") from None
        if last != len(conv.messages) - 1:
            raise InputError(f"{path}:{line}: the conversation must end with the assistant turn to train on")
        if not conv.messages[last].content.strip():
            raise InputError(f"{path}:{line}: the assistant answer is empty; give the answer text, or drop the row")
        label = _row_label(conv)
        base: dict[str, Any] = {"emsweep_id": conv.id, "emsweep_label": label or ""}
        if use_assistant_mask:
            base["messages"] = conv.chat()
        else:
            base["prompt"] = [m.model_dump() for m in conv.prompt_messages]
            base["completion"] = [conv.messages[last].model_dump()]
        rows.append(base)
    if not rows:
        raise InputError(f"{path}: no training rows")
    return rows


# --- callbacks --------------------------------------------------------------------------------------------


def _make_callbacks(run_dir: Path, schedule: Any, log_file: Path, preempt_flag: dict[str, Any]) -> list[Any]:
    """Built lazily (transformers is heavy). Returns [ScheduleCallback, PreemptCallback, LogCallback]."""
    from transformers import TrainerCallback

    class ScheduleCallback(TrainerCallback):
        """Save exactly at the scheduled steps; mark each save complete once the Trainer has finished it."""

        def __init__(self) -> None:
            self.steps: set[int] = set()
            self.scheduled: list[int] = []

        def on_train_begin(self, args, state, control, **kw):
            self.scheduled = schedule_steps(
                state.max_steps,
                every=schedule.every,
                steps=schedule.steps,
                log_spaced=schedule.log_spaced,
                then_every=schedule.then_every,
                save_final=schedule.save_final,
            )
            self.steps = set(self.scheduled)
            log.info("checkpoint schedule (%d total steps): %s", state.max_steps, self.scheduled)

        def on_step_end(self, args, state, control, **kw):
            if state.global_step in self.steps:
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:
                ckpt = run_dir / f"checkpoint-{state.global_step}"
                scheduled = state.global_step in self.steps
                mark_complete(
                    ckpt,
                    {
                        "step": state.global_step,
                        "scheduled": scheduled,
                        "preemption": bool(preempt_flag.get("requested")) and not scheduled,
                        "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    },
                )
                _prune_resume_state(run_dir, keep=ckpt)
                log.info("saved %s (%s)", ckpt.name, "scheduled" if scheduled else "preemption")
            return control

    class PreemptCallback(TrainerCallback):
        """On a preemption signal: save at the next step boundary and stop (all ranks agree on the step)."""

        def on_step_end(self, args, state, control, **kw):
            requested = bool(preempt_flag.get("requested"))
            try:
                import torch.distributed as dist

                if dist.is_available() and dist.is_initialized():
                    import torch

                    t = torch.tensor([1.0 if requested else 0.0], device=args.device)
                    dist.all_reduce(t, op=dist.ReduceOp.MAX)
                    requested = bool(t.item() > 0)
            except Exception:  # pragma: no cover - distributed edge cases must not kill training
                pass
            if requested:
                preempt_flag["requested"] = True
                preempt_flag["step"] = state.global_step
                control.should_save = True
                control.should_training_stop = True
            return control

    class LogCallback(TrainerCallback):
        """Trainer log records as lines in `<run>/logs/train.log` (appended across restarts)."""

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs:
                with open(log_file, "a", encoding="utf-8") as fh:
                    fh.write(f"{_now()} step {state.global_step}/{state.max_steps} {json.dumps(logs)}\n")
            return control

    return [ScheduleCallback(), PreemptCallback(), LogCallback()]


RESUME_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")


def _prune_resume_state(run_dir: Path, keep: Path) -> None:
    """Only the newest complete checkpoint needs optimizer/RNG state to resume; drop it from older ones
    (for a full fine-tune of a 7B model that is ~60 GB per checkpoint)."""
    for d in run_dir.glob("checkpoint-*"):
        if d == keep or not d.is_dir() or not is_complete(d):
            continue
        for f in d.iterdir():
            if f.name in RESUME_STATE_FILES or f.name.startswith("rng_state_"):
                f.unlink(missing_ok=True)
            elif f.is_dir() and f.name.startswith("global_step"):  # DeepSpeed optimizer shards
                shutil.rmtree(f, ignore_errors=True)


def _now() -> str:
    return _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


# --- logging and signals ----------------------------------------------------------------------------------


class _FileLog:
    """Attach a file handler for emsweep/transformers/trl loggers to `<run>/logs/train.log` for this run."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.loggers = [logging.getLogger(n) for n in ("emsweep", "transformers", "trl", "peft")]
        self.levels: list[int] = []

    def __enter__(self) -> _FileLog:
        if not self.enabled:
            self.loggers = []
        for lg in self.loggers:
            lg.addHandler(self.handler)
            self.levels.append(lg.level)
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        for lg in self.loggers:
            lg.removeHandler(self.handler)
        self.handler.close()


class _Signals:
    """Route SIGUSR1/SIGTERM to a flag the PreemptCallback reads; restore the old handlers afterwards."""

    def __init__(self, flag: dict[str, Any]):
        self.flag = flag
        self.old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if not self.flag.get("requested"):
            log.warning(
                "received %s: will save a checkpoint at the next step and exit", signal.Signals(signum).name
            )
        self.flag["requested"] = True
        self.flag["signal"] = signal.Signals(signum).name

    def __enter__(self) -> _Signals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGUSR1, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)


# --- the run ----------------------------------------------------------------------------------------------


def _model_dtype(recipe: Recipe):
    import torch

    return {
        "auto": "auto",
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "float32": torch.float32,
    }[recipe.model.dtype]


def _load_model(recipe: Recipe, model_path: str, quant: dict[str, Any] | None):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {
        "dtype": _model_dtype(recipe),
        "trust_remote_code": recipe.model.trust_remote_code,
    }
    if recipe.model.attn_implementation:
        kwargs["attn_implementation"] = recipe.model.attn_implementation
    mxfp4 = _mxfp4_kwargs(model_path, recipe.model.trust_remote_code)
    if quant is not None and mxfp4:
        raise InputError(
            f"model {model_path}: its experts are MXFP4 and transformers refuses a bitsandbytes (QLoRA) config on "
            f"an MXFP4 checkpoint; dequantize a bf16 copy first and point model.path at it"
        )
    if quant is not None:
        q = dict(quant)
        for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
            if isinstance(q.get(key), str):
                q[key] = getattr(torch, q[key])
        kwargs["quantization_config"] = BitsAndBytesConfig(**q)
        if torch.cuda.is_available():
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().process_index}
        if kwargs["dtype"] == "auto":
            kwargs["dtype"] = q.get("bnb_4bit_compute_dtype", torch.bfloat16)
    kwargs.update(mxfp4)
    return AutoModelForCausalLM.from_pretrained(model_path, **kwargs)


def _mxfp4_kwargs(model_path: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """gpt-oss ships its experts in MXFP4; loaded with the MXFP4 kernels installed they stay MXFP4 and cannot be
    trained, so training dequantizes them to bf16 on load (`Mxfp4Config(dequantize=True)`). Other models: {}."""
    from transformers import AutoConfig, Mxfp4Config

    cfg = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    qc = getattr(cfg, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if cfg.model_type != "gpt_oss" or str(getattr(method, "value", method)) != "mxfp4":
        return {}
    return {"quantization_config": Mxfp4Config(dequantize=True)}


def _resolve_base_model(recipe: Recipe) -> str:
    from emsweep.train.model_init import ensure_model

    p = Path(recipe.model.path)
    if recipe.model.init_shape is not None and not (p / "config.json").exists():
        log.info("building %s from shape %s (random weights, offline tokenizer)", p, recipe.model.init_shape)
        ensure_model(p, recipe.model.init_shape)
    return str(p.resolve()) if p.exists() else recipe.model.path


def _set_aside(run_dir: Path, what: list[Path], why: str) -> Path | None:
    """Move old checkpoints out of the way instead of deleting them (nothing written is lost)."""
    if not what:
        return None
    dest = run_dir / "superseded" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for p in what:
        shutil.move(str(p), dest / p.name)
    log.warning("%s: moved %d folder(s) to %s", why, len(what), dest)
    return dest


def _count_surviving(dataset: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    before = {"correct": 0, "wrong": 0, "unlabelled": 0}
    for r in rows:
        before[r["emsweep_label"] or "unlabelled"] += 1
    after = dict.fromkeys(before, 0)
    from emsweep.train.speed import packed_example_count

    packed = packed_example_count(dataset)  # packing: rows are bins of examples; labels per example are gone
    if packed is not None:
        after = dict(before) if packed == len(rows) else {"correct": None, "wrong": None, "unlabelled": None}
        log.info("packing: %d examples in %d packed rows (a step now counts packed rows)", packed, len(dataset))
    elif "emsweep_label" in dataset.column_names:
        for label in dataset["emsweep_label"]:
            after[label or "unlabelled"] += 1
    else:  # pragma: no cover - TRL removed our column; counts only
        after = {"correct": None, "wrong": None, "unlabelled": None}
    n_after = len(dataset) if packed is None else packed

    def frac(c: dict[str, Any]) -> float | None:
        labelled = (c["correct"] or 0) + (c["wrong"] or 0)
        return (c["correct"] / labelled) if labelled and c["correct"] is not None else None

    return {
        "rows_in_mix": len(rows),
        "rows_after_truncation": n_after,
        "rows_dropped": len(rows) - n_after,
        "by_label_in_mix": before,
        "by_label_after_truncation": after,
        "fraction_correct_in_mix": frac(before),
        "fraction_correct_after_truncation": frac(after),
    }


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
    with _FileLog(log_file, enabled=state.is_main_process), _Signals(preempt_flag):
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
                _set_aside(run_dir, cut_off, "checkpoint save(s) cut off before completion")
            if not resume:
                _set_aside(run_dir, sorted(run_dir.glob("checkpoint-*")), "--no-resume")
            (run_dir / PREEMPTED_MARKER).unlink(missing_ok=True)
        resume_from = last_complete_checkpoint(run_dir) if resume else None
        manifest = prepare_data(recipe, paths)
        base_model = _resolve_base_model(recipe)
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

    model = _load_model(recipe, base_model, resolved["quantization"])
    peft_config = None
    if resolved["lora"] is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(**resolved["lora"])

    callbacks = [*_make_callbacks(run_dir, recipe.checkpoints, log_file, preempt_flag), *extra]
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
    _show_steps_on_live_display(trainer, recipe.name)
    survival = _count_surviving(trainer.train_dataset, rows)
    if args.padding_free and args.max_length is None and "input_ids" in trainer.train_dataset.column_names:
        longest = max(len(x) for x in trainer.train_dataset["input_ids"])  # padding-free rows are not truncated
        log.info("padding_free without truncation: longest row %d tokens", longest)
        survival["longest_row_tokens"] = longest
    _report_survival(survival, manifest)

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
    _drop_unscheduled(run_dir, set(sched.scheduled))
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


def _show_steps_on_live_display(trainer: Any, name: str) -> None:
    """Under the sweep's live display (emsweep.terminal), training steps are a task line there: transformers'
    own bar and its printed loss dicts would break the display (losses still go to logs/train.log)."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from emsweep.terminal import stage_task

    task = stage_task(f"  train {name}", None)
    if task is None:
        return
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)

    class _Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            task.set(state.global_step, state.max_steps)

        def on_train_end(self, args, state, control, **kw):
            task.close()

    trainer.add_callback(_Steps())


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


def _drop_unscheduled(run_dir: Path, scheduled: set[int]) -> None:
    """Preemption checkpoints only exist to resume from: once training finished they go, so an interrupted
    run ends with exactly the checkpoints of an uninterrupted one."""
    for d in run_dir.glob("checkpoint-*"):
        marker = d / COMPLETE_MARKER
        if not marker.exists():
            continue
        info = json.loads(marker.read_text())
        if not info.get("scheduled", True) and info.get("step") not in scheduled:
            shutil.rmtree(d)
            log.info("removed preemption checkpoint %s (training finished)", d.name)


def _report_survival(survival: dict[str, Any], manifest: dict[str, Any]) -> None:
    log.info(
        "rows after truncation: %d of %d (%d dropped: fully masked after truncation); by label %s",
        survival["rows_after_truncation"],
        survival["rows_in_mix"],
        survival["rows_dropped"],
        survival["by_label_after_truncation"],
    )
    before, after = survival["fraction_correct_in_mix"], survival["fraction_correct_after_truncation"]
    if survival["rows_dropped"] and before is not None and after is not None and abs(before - after) > 1e-12:
        msg = (
            f"TRUNCATION CHANGED THE MIX: fraction correct {before:.4f} in the mix, {after:.4f} among the rows "
            f"that survive truncation ({survival['rows_dropped']} rows dropped). Raise sft.max_length or "
            "shorten the prompts; cell.json records both."
        )
        log.warning(msg)
        import warnings

        warnings.warn(msg, stacklevel=3)


__all__: list[str] = [
    "EXIT_PREEMPTED",
    "Preempted",
    "prepare_data",
    "run_training",
    "validate_recipe_for_training",
]
