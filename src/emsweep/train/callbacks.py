"""What the harness hooks into a TRL run: Trainer callbacks, the run's log file, and the preemption signals.

- `make_callbacks`: save exactly at the scheduled steps and mark each save complete (resume and evaluation
  never use a save that was cut off); on a preemption signal save at the next step boundary and stop; append
  the Trainer's log records to `<run>/logs/train.log`.
- `PreemptSignals`: SIGUSR1/SIGTERM -> a flag the preemption callback reads (transformers'
  `enable_jit_checkpoint` only handles SIGTERM, after a 3 s timer, and writes no completion marker; SLURM's
  `--signal` sends SIGUSR1 by default here). `FileLog`: the emsweep/transformers/TRL/PEFT loggers into the
  run's log file. `show_steps_on_live_display`: training steps as a task line of the sweep's live display.
Apart from the run so `runner.py` reads as the run alone; transformers is imported lazily (it is heavy).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import signal
from pathlib import Path
from typing import Any

from emsweep.train.checkpoints import mark_complete, prune_resume_state, schedule_steps

log = logging.getLogger("emsweep.train")


def make_callbacks(run_dir: Path, schedule: Any, log_file: Path, preempt_flag: dict[str, Any]) -> list[Any]:
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
                prune_resume_state(run_dir, keep=ckpt)
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


def _now() -> str:
    return _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


# --- logging and signals ----------------------------------------------------------------------------------


class FileLog:
    """Attach a file handler for emsweep/transformers/trl loggers to `<run>/logs/train.log` for this run."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.loggers = [logging.getLogger(n) for n in ("emsweep", "transformers", "trl", "peft")]
        self.levels: list[int] = []

    def __enter__(self) -> FileLog:
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


class PreemptSignals:
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

    def __enter__(self) -> PreemptSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGUSR1, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)


def show_steps_on_live_display(trainer: Any, name: str) -> None:
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
