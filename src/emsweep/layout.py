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

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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

    def checkpoint_dir(self, step: int) -> Path:
        return self.root / f"checkpoint-{step}"

    def eval_dir(self, checkpoint: str, suite: str) -> Path:
        return self.eval_root / checkpoint / suite

    def samples(self, checkpoint: str, suite: str) -> Path:
        return self.eval_dir(checkpoint, suite) / "samples.jsonl"

    def judgments(self, checkpoint: str, suite: str) -> Path:
        return self.eval_dir(checkpoint, suite) / "judgments.jsonl"

    def metrics(self, checkpoint: str, suite: str) -> Path:
        return self.eval_dir(checkpoint, suite) / "metrics.json"


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
    import json

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
