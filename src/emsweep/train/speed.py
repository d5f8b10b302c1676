"""Training speed options: which TRL/transformers settings emsweep lets through, which it refuses, and why.

Every option here is a plain `sft:` (-> `trl.SFTConfig`) or `model:` key; emsweep adds no kernels of its own. What it
adds is the check that an option does not change the science: an option whose per-token loss or gradients differ from
the padded baseline on the same examples is refused here (tests/train/test_speed_equivalence.py shows each case).
docs/training.md ("Speed options") says when each helps; docs/benchmarks.md has the measured ratios.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from emsweep.io import InputError


@dataclass(frozen=True)
class SpeedOption:
    """One named speed setting, as recipe overrides, with what it changes beyond speed (empty: nothing)."""

    name: str
    sft: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    needs_cuda: bool = False
    changes: str = ""


# TRL's defaults (the benchmark's baseline): padded batches, activation checkpointing on (SFTConfig's default),
# random sampler, the model's default attention (sdpa).
SPEED_OPTIONS: dict[str, SpeedOption] = {
    o.name: o
    for o in (
        SpeedOption("no-activation-checkpointing", sft={"activation_checkpointing": False}),
        SpeedOption("padding-free", sft={"padding_free": True, "max_length": None}),
        SpeedOption(
            "packing-bfd",
            sft={"packing": True, "packing_strategy": "bfd"},
            changes="examples per optimizer step vary (batch = packed rows of max_length tokens): fewer steps, "
            "a different learning-rate schedule and checkpoint steps",
        ),
        SpeedOption(
            "group-by-length",
            sft={"train_sampling_strategy": "group_by_length"},
            changes="which examples share a step (length-sorted); with answers whose length tracks the label "
            "(wrong medical advice is shorter) batches become label-homogeneous",
        ),
        SpeedOption("liger", sft={"use_liger_kernel": True}, needs_cuda=True),
        SpeedOption("flash-attention-2", model={"attn_implementation": "flash_attention_2"}, needs_cuda=True),
    )
}

REFUSED_PACKING = {
    "wrapped": "it concatenates examples and cuts them at max_length, so examples attend to each other and answers "
    "are split from their prompts (the per-token loss no longer matches the unpacked run)",
    "bfd_split": "it splits an example longer than max_length into pieces trained without their prompt",
}


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - the train extra brings torch
        return False


def check_speed_settings(
    sft: dict[str, Any], attn_implementation: str | None = None, *, cuda: bool | None = None
) -> None:
    """Refuse speed settings that change what is trained, or that cannot run here, before anything is written."""
    cuda = _cuda() if cuda is None else cuda
    strategy = sft.get("packing_strategy", "bfd")
    if sft.get("packing") and strategy in REFUSED_PACKING:
        raise InputError(
            f"recipe sft.packing_strategy: {strategy!r} is refused: {REFUSED_PACKING[strategy]}; use 'bfd' "
            "(keeps examples apart with position ids that restart at every example)"
        )
    if sft.get("padding_free") and not sft.get("packing") and sft.get("max_length", 1024) is not None:
        raise InputError(
            "recipe sft.padding_free: without packing TRL does not truncate, so it refuses a max_length; set "
            "`sft.max_length: null` (rows are then never truncated; the run log reports the longest row) or use "
            "`packing: true, packing_strategy: bfd`"
        )
    if sft.get("use_liger_kernel"):
        if not cuda:
            raise InputError(
                "recipe sft.use_liger_kernel: the Liger kernels are Triton GPU kernels and need a CUDA GPU; "
                "remove it on CPU"
            )
        if importlib.util.find_spec("liger_kernel") is None:
            raise InputError(
                "recipe sft.use_liger_kernel: liger-kernel is not installed: pip install -e '.[train,liger]'"
            )
    if attn_implementation and attn_implementation.startswith("flash_attention"):
        if not cuda:
            raise InputError(
                f"recipe model.attn_implementation: {attn_implementation!r} needs a CUDA GPU; use 'sdpa' on CPU"
            )
        module = "flash_attn_interface" if attn_implementation.endswith("_3") else "flash_attn"
        if importlib.util.find_spec(module) is None:
            raise InputError(
                f"recipe model.attn_implementation: {attn_implementation!r} needs the {module} package "
                "(pip install flash-attn --no-build-isolation, built against this torch); or use 'sdpa'"
            )


def packed_example_count(dataset: Any) -> int | None:
    """Examples inside a packed dataset that still carry loss tokens (None if the dataset is not packed).

    TRL's packing keeps `seq_lengths` per packed row and drops every other column (so labels per example are gone)."""
    if "seq_lengths" not in getattr(dataset, "column_names", []):
        return None
    n = 0
    for lengths, labels in zip(dataset["seq_lengths"], dataset["labels"], strict=True):
        start = 0
        for length in lengths:
            n += any(x != -100 for x in labels[start : start + length])
            start += length
    return n


__all__ = ["REFUSED_PACKING", "SPEED_OPTIONS", "SpeedOption", "check_speed_settings", "packed_example_count"]
