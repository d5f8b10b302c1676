"""Training rows: the cell's mix -> TRL rows, and how many of them survive TRL's truncation.

Its own module because both halves are about the same rows: `load_training_rows` shapes each conversation so
the loss falls on the answer only (`messages` where the chat template has `{% generation %}` markers, else
conversational prompt/completion), and `count_surviving` / `report_survival` count, by label, the rows TRL
keeps after truncation (it drops fully masked rows silently, which would shift the correct/wrong ratio).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emsweep.data.conversation import Conversation
from emsweep.io import InputError, read_jsonl

if TYPE_CHECKING:
    from emsweep.layout import CellPaths
    from emsweep.recipe import Recipe

log = logging.getLogger("emsweep.train")


def prepare_data(recipe: Recipe, paths: CellPaths) -> dict[str, Any]:
    """The run's mix: `<run>/data/` as the executor's mix stage (or `emsweep data mix`) wrote it, with its
    manifest; built here with `data.mix.build_mix` only when `emsweep train` runs a recipe on its own.
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


def count_surviving(dataset: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
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


def report_survival(survival: dict[str, Any], manifest: dict[str, Any]) -> None:
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
