"""Training-side signals for the checkpoint study: held-out loss on the cell's own training distribution.

With `data.n_task_heldout > 0` the mix writes `data/task_heldout.jsonl` (rows drawn like the training rows,
never trained on). The trainer gets it as its `eval_dataset`, so TRL tokenizes and masks it exactly like the
training rows, and this callback computes the loss on it at step 0 (before the first update: the base model)
and at every save, per row: [sum of token losses, number of loss tokens]. The records go to
`<run>/training_signals.json` (merged, atomic, main process), which analysis/study.py reads; a resumed run
keeps the records it already has. Under padding-free/packed batches a "row" is a batch (still a valid unit
for the bootstrap).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any

from emsweep.io import atomic_write_json

log = logging.getLogger("emsweep.train")

SIGNALS_FILE = "training_signals.json"
TASK_HELDOUT = "task_heldout.jsonl"


def read_signals(run_dir: Path) -> dict[str, Any]:
    p = run_dir / SIGNALS_FILE
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}


def heldout_losses(trainer: Any) -> dict[str, list[float]]:
    """Per-row [sum of token losses, tokens] of the trainer's eval dataset under the current weights."""
    import torch

    model = getattr(trainer, "model_wrapped", None) or trainer.model
    loader = trainer.get_eval_dataloader(trainer.eval_dataset)
    was_training = model.training
    model.eval()
    sums: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for batch in loader:
                batch = trainer._prepare_inputs(batch)
                labels = batch["labels"]
                inputs = {k: v for k, v in batch.items() if k not in ("labels", "completion_mask", "assistant_masks")}
                logits = model(**inputs).logits.float()
                shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]
                mask = shift_labels != -100
                nll = torch.nn.functional.cross_entropy(
                    shift_logits.reshape(-1, shift_logits.size(-1)),
                    shift_labels.clamp(min=0).reshape(-1),
                    reduction="none",
                ).view(shift_labels.shape)
                sums.append((nll * mask).sum(dim=1))
                counts.append(mask.sum(dim=1).float())
    finally:
        if was_training:
            model.train()
    s = trainer.accelerator.gather_for_metrics(torch.cat(sums)).tolist()
    n = trainer.accelerator.gather_for_metrics(torch.cat(counts)).tolist()
    return {f"row{i}": [float(a), float(b)] for i, (a, b) in enumerate(zip(s, n, strict=True)) if b > 0}


def make_signals_callback(run_dir: Path) -> Any:
    """A TrainerCallback recording held-out loss at step 0 and at every save; set `.trainer` after building
    the trainer (callbacks are not handed the trainer)."""
    from transformers import TrainerCallback

    class SignalsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.trainer: Any = None

        def _record(self, state: Any) -> None:
            if self.trainer is None or self.trainer.eval_dataset is None:
                return
            rows = heldout_losses(self.trainer)  # every rank: sharded forward passes, gathered
            if not state.is_world_process_zero:
                return
            tot_s = sum(v[0] for v in rows.values())
            tot_n = sum(v[1] for v in rows.values())
            sig = read_signals(run_dir)
            sig.setdefault("heldout_loss", {})[str(state.global_step)] = {
                "loss": tot_s / tot_n if tot_n else None,
                "n_rows": len(rows),
                "n_tokens": tot_n,
                "per_row": rows,
                "recorded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            sig["split"] = f"data/{TASK_HELDOUT}"
            sig["definition"] = "mean token loss (answer tokens, the training mask) on rows never trained on"
            atomic_write_json(run_dir / SIGNALS_FILE, sig)
            log.info("held-out loss at step %d: %.4f", state.global_step, tot_s / tot_n if tot_n else float("nan"))

        def on_train_begin(self, args, state, control, **kw):
            if state.global_step == 0 and "0" not in read_signals(run_dir).get("heldout_loss", {}):
                self._record(state)
            return control

        def on_save(self, args, state, control, **kw):
            self._record(state)
            return control

    return SignalsCallback()
