"""Where every file of a run lives. One place, so every stage and executor agrees on paths.

```
checkpoints/<sweep>/<cell>/
  cell.json                         resolved recipe, versions, git sha, data manifest hash, axis values
  data/{train,heldout}.jsonl        the mix, with data/manifest.json
  checkpoint-<step>/                TRL's folders (LoRA adapter or full weights)
  eval/<checkpoint>/<suite>/        samples.jsonl, judgments.jsonl, metrics.json
  logs/                             stage logs (appended across restarts)
  .done/<stage>.json                done-markers
```
Step 0 is the base model: it has no weights folder, and its eval folder is `eval/checkpoint-0/`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DEFAULT_ROOT = Path("checkpoints")
BASE_CHECKPOINT = "checkpoint-0"

CheckpointKind = Literal["base", "lora", "full", "api"]


@dataclass(frozen=True)
class CheckpointRef:
    """One model to evaluate: the base model (step 0), a LoRA adapter, a full checkpoint, or an API model id.

    `base_model` is what the weights sit on (a local folder or hub id); for kind "api" `model` is the remote
    model id (e.g. an OpenAI fine-tuned model) and `path` is None.
    """

    name: str
    step: int
    kind: CheckpointKind
    base_model: str
    path: Path | None = None
    model: str | None = None
    cell: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        """Unique across a sweep: cell/checkpoint."""
        return f"{self.cell}/{self.name}" if self.cell else self.name


@dataclass(frozen=True)
class CellPaths:
    root: Path

    @classmethod
    def of(cls, root: str | os.PathLike[str]) -> CellPaths:
        return cls(Path(root))

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def cell_json(self) -> Path:
        return self.root / "cell.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def train_jsonl(self) -> Path:
        return self.data_dir / "train.jsonl"

    @property
    def heldout_jsonl(self) -> Path:
        return self.data_dir / "heldout.jsonl"

    @property
    def manifest(self) -> Path:
        return self.data_dir / "manifest.json"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def eval_root(self) -> Path:
        return self.root / "eval"

    def eval_dir(self, checkpoint: str, suite: str) -> Path:
        return self.eval_root / checkpoint / suite

    def samples(self, checkpoint: str, suite: str) -> Path:
        return self.eval_dir(checkpoint, suite) / "samples.jsonl"

    def judgments(self, checkpoint: str, suite: str) -> Path:
        return self.eval_dir(checkpoint, suite) / "judgments.jsonl"

    def metrics(self, checkpoint: str, suite: str) -> Path:
        return self.eval_dir(checkpoint, suite) / "metrics.json"


# --- cell.json ------------------------------------------------------------------------------------------------
CELL_FILE = "cell.json"


@dataclass(frozen=True)
class CellRecord:
    """A cell's `cell.json`: what the cell is (resolved recipe, axes) and what made it (versions, git sha).

    The launcher writes it when it starts a cell; each stage adds its own keys with `extend`, the only writer
    (merge, then an atomic rename); every reader goes through `read_cell`. An absent file is an empty record.
    """

    path: Path
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def recipe(self) -> dict[str, Any] | None:
        """The resolved recipe as recorded (a plain dict), or None (imported API cells, older files)."""
        rec = self.data.get("recipe")
        return rec if isinstance(rec, dict) else None

    @property
    def base_model(self) -> str | None:
        """What training resolved the base model to (a folder or hub id), or None."""
        got = self.data.get("base_model")
        return str(got) if got else None

    def extend(self, update: Mapping[str, Any], *, stamp: bool = False) -> CellRecord:
        """Merge `update` into the file as it is on disk now and write it atomically. `stamp` records
        `created` (first write only) and `updated` times."""
        from emsweep.io import atomic_write_json

        merged = dict(read_cell(self.path.parent, strict=False).data)
        merged.update(update)
        if stamp:
            now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            merged["created"] = merged.get("created") or now
            merged["updated"] = now
        atomic_write_json(self.path, merged)
        return CellRecord(self.path, merged)


def read_cell(run_dir: str | os.PathLike[str], *, strict: bool = True) -> CellRecord:
    """The `cell.json` of a run folder (an empty record when there is none). Malformed JSON is an InputError
    naming the file and line, or, with `strict=False`, an empty record (writers then replace it)."""
    p = Path(run_dir) / CELL_FILE
    if not p.exists():
        return CellRecord(p, {})
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if not strict:
            return CellRecord(p, {})
        from emsweep.io import InputError

        where = f"{p}:{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(p)
        raise InputError(f"{where}: malformed JSON ({exc}); delete it and rerun the cell") from None
    if not isinstance(data, dict):
        if not strict:
            return CellRecord(p, {})
        from emsweep.io import InputError

        raise InputError(f"{p}: expected a JSON object, got {type(data).__name__}")
    return CellRecord(p, data)


# --- checkpoint folders -----------------------------------------------------------------------------------------
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
FULL_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def has_full_weights(path: str | os.PathLike[str]) -> bool:
    """A transformers weights file (single or sharded) is in the folder."""
    p = Path(path)
    return any((p / f).is_file() for f in FULL_WEIGHTS) or any(p.glob("model-*.safetensors"))


def detect_checkpoint_kind(path: str | os.PathLike[str], *, strict: bool = True) -> Literal["lora", "full"]:
    """ "lora" for a PEFT adapter folder (it has adapter_config.json), "full" otherwise.

    `strict` also checks the weights are there (adapter weights, or config.json plus model weights) and raises
    InputError naming the folder when they are not; the lenient form is for listing a run's own saves.
    """
    p = Path(path)
    is_adapter = (p / ADAPTER_CONFIG).is_file()
    if not strict:
        return "lora" if is_adapter else "full"
    from emsweep.io import InputError

    if not p.is_dir():
        raise InputError(f"checkpoint folder {p} does not exist (or is not a folder)")
    if is_adapter:
        if not any((p / f).is_file() for f in ADAPTER_WEIGHTS):
            raise InputError(
                f"checkpoint folder {p} has adapter_config.json but no adapter weights "
                f"({' or '.join(ADAPTER_WEIGHTS)}); was it copied completely?"
            )
        return "lora"
    if (p / "config.json").is_file() and has_full_weights(p):
        return "full"
    raise InputError(
        f"checkpoint folder {p} is neither a PEFT adapter (adapter_config.json + adapter_model.safetensors) "
        f"nor full model weights (config.json + model*.safetensors); point at a checkpoint-<step> folder that "
        f"training wrote"
    )


def checkpoint_step(name: str) -> int | None:
    """`checkpoint-125` -> 125; anything else -> None."""
    if not name.startswith("checkpoint-"):
        return None
    tail = name[len("checkpoint-") :]
    return int(tail) if tail.isdigit() else None


# --- API checkpoints (the gpt-4o arm) -------------------------------------------------------------------------
# An OpenAI cell has no weights folders: `emsweep openai poll` / `import` write `<cell>/openai_checkpoints.json`
# (step 0 = base model id, then the fine-tuned model ids OpenAI kept, by step). `list_checkpoints` reads it
# through `read_api_checkpoints`, so every stage sees API checkpoints like local ones.
API_CHECKPOINTS_FILE = "openai_checkpoints.json"


def read_api_checkpoints(run_dir: str | os.PathLike[str], cell: str | None = None) -> list[CheckpointRef]:
    """CheckpointRefs (kind "base" for step 0, "api" after) of an API cell, by step; [] if it is not one."""
    p = Path(run_dir) / API_CHECKPOINTS_FILE
    if not p.exists():
        return []
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        base = str(data["base_model"])
        rows = sorted(data["checkpoints"], key=lambda r: int(r["step"]))
        return [
            CheckpointRef(
                name=str(r["name"]),
                step=int(r["step"]),
                kind=r["kind"],
                base_model=base,
                path=None,
                model=str(r["model"]),
                cell=cell if cell is not None else Path(run_dir).name,
                meta={k: r[k] for k in ("alias", "metrics") if r.get(k)},
            )
            for r in rows
        ]
    except (ValueError, KeyError, TypeError) as exc:
        from emsweep.io import InputError

        raise InputError(f"{p}: malformed API checkpoint list ({exc}); rerun `emsweep openai poll`") from None
