"""Fixtures for the train tests: one tiny Qwen-style and one tiny Llama-style model per session, and a recipe
factory for tiny, fast runs (CPU, a few steps, short sequences)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from emsweep.recipe import Recipe


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from emsweep.train.model_init import init_model

    return init_model("tiny", tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_model(tmp_path_factory) -> Path:
    from emsweep.train.model_init import init_model

    return init_model("tiny-llama", tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


BASE: dict[str, Any] = {
    "name": "t",
    "data": {
        "builtin": "arithmetic",
        "domain": "arithmetic",
        "fraction_correct": 0.5,
        "wrong_kind": "subtle",
        "n_train": 32,
        "n_heldout": 4,
        "seed": 0,
    },
    "method": "lora",
    "lora": {"r": 4, "lora_alpha": 8},
    "sft": {
        "learning_rate": "1e-3",  # a string on purpose: YAML 1.1 reads 1e-3 as one
        "per_device_train_batch_size": 4,
        "num_train_epochs": 1,
        "max_length": 64,
        "activation_checkpointing": False,
        "logging_steps": 1,
        "seed": 0,
        "use_cpu": True,
        "disable_tqdm": True,
    },
    "checkpoints": {"steps": [2, 5]},
}


@pytest.fixture(scope="session")
def base_tree() -> dict[str, Any]:
    """The raw recipe tree behind `make_recipe` (deep-copy before changing it)."""
    return BASE


@pytest.fixture
def make_recipe(tiny_model):
    """`make_recipe(**overrides)`: a Recipe for the tiny model; nested dicts merge into BASE, None drops a key."""

    def make(model: Path | None = None, **over: Any) -> Recipe:
        tree = copy.deepcopy(BASE)
        tree["model"] = {"path": str(model or tiny_model)}
        for k, v in over.items():
            if v is None:  # drop a section
                tree.pop(k, None)
            elif isinstance(v, dict) and isinstance(tree.get(k), dict) and k not in ("checkpoints",):
                tree[k].update(v)
            else:
                tree[k] = v
        return Recipe.model_validate(tree)

    return make
