"""What a judge is: the things that determine its output, never the path it was loaded from.

- A local model (a folder): the SHA-256 `fingerprint` over the contents of its weights, config and tokenizer files
  (`model_fingerprint`). Hashing 15 GB takes minutes, so each file's hash is remembered in a small JSON beside the
  model (`.emsweep_fingerprint.json`, keyed by file name, size and mtime); a read-only folder remembers it in the
  user cache (`$EMSWEEP_CACHE_DIR`, else `$XDG_CACHE_HOME/emsweep`, else `~/.cache/emsweep`).
- An API model (OpenAI, an OpenAI-compatible server): its model id; the provider answers for what it serves.
- Plus the kind (`logprob`, `categorical`, `rule`, ...), the decoding parameters (top-k, digit-trie pruning,
  the 0.25 number-mass rule, the None labels), the scoring method's version and the judge prompts' SHA-256.

`JudgeIdentity.model_key` is what the judgment cache key uses: `sha256:<fingerprint>` for a local model, the model
id for an API model. So a different judge at the same path never reuses another's scores, and the same judge
copied elsewhere reuses all of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emsweep.io import InputError, atomic_write_json

log = logging.getLogger(__name__)

MEMO_NAME = ".emsweep_fingerprint.json"
FINGERPRINT_VERSION = 1
LOCAL_PREFIX = "sha256:"
# Files whose contents determine a model's output. Everything else (README, training logs, emsweep_init.json,
# optimizer states in sub-folders) does not, and is left out so that copying or annotating a model keeps its id.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".npz")
CONFIG_NAMES = ("config.json", "generation_config.json", "adapter_config.json", "preprocessor_config.json")
TOKENIZER_NAMES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.json",
    "chat_template.jinja",
)
_SKIP = {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt"}


def _is_model_file(name: str) -> bool:
    if name.startswith(".") or name in _SKIP or name.startswith("rng_state"):
        return False
    return name in CONFIG_NAMES or name in TOKENIZER_NAMES or name.endswith(WEIGHT_SUFFIXES)


def model_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The weights, config and tokenizer files of a model folder (top level; symlinks followed), sorted."""
    root = Path(folder)
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise InputError(f"{root}: cannot list the judge model folder ({exc.strerror or exc})") from None
    return [p for p in entries if _is_model_file(p.name) and p.is_file()]


def _user_cache_dir() -> Path:
    env = os.environ.get("EMSWEEP_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "emsweep"


def _memo_paths(root: Path) -> list[Path]:
    """Where a folder's file hashes may be remembered: beside the model, then the user cache."""
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:32]
    return [root / MEMO_NAME, _user_cache_dir() / "fingerprints" / f"{key}.json"]


def _read_memo(paths: list[Path]) -> dict[str, Any]:
    for p in paths:
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("version") == FINGERPRINT_VERSION:
            return dict(data.get("files") or {})
    return {}


def _write_memo(paths: list[Path], files: dict[str, Any]) -> None:
    payload = {"version": FINGERPRINT_VERSION, "files": files}
    for p in paths:
        try:
            atomic_write_json(p, payload)
            return
        except OSError:
            continue
    log.warning("judge fingerprint: could not remember the file hashes (%s); they are recomputed next time", paths)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise InputError(
            f"{path}: cannot read this judge model file to fingerprint the judge ({exc.strerror or exc}); "
            "fix its permissions or point --judge at a readable copy"
        ) from None
    return h.hexdigest()


def model_fingerprint(folder: str | os.PathLike[str]) -> str:
    """SHA-256 over (file name, content SHA-256) of the folder's weights, config and tokenizer files.

    Each file's hash is reused while its size and mtime are unchanged, so a 15 GB judge is read once."""
    root = Path(folder)
    files = model_files(root)
    if not any(f.name.endswith(WEIGHT_SUFFIXES) for f in files):
        raise InputError(
            f"{root}: no model weights found (*.safetensors, *.bin, ...); cannot identify the judge model"
        )
    paths = _memo_paths(root)
    memo = _read_memo(paths)
    out: dict[str, Any] = {}
    changed = False
    for f in files:
        try:
            st = f.stat()
        except OSError as exc:
            raise InputError(f"{f}: cannot read this judge model file ({exc.strerror or exc})") from None
        stamp = [st.st_size, st.st_mtime_ns]
        old = memo.get(f.name)
        if isinstance(old, dict) and old.get("stamp") == stamp and isinstance(old.get("sha256"), str):
            out[f.name] = old
        else:
            out[f.name] = {"stamp": stamp, "sha256": _sha256_file(f)}
            changed = True
    if changed or set(memo) != set(out):
        _write_memo(paths, out)
    h = hashlib.sha256()
    for name in sorted(out):
        h.update(f"{name}\0{out[name]['sha256']}\n".encode())
    return h.hexdigest()


def local_model_folder(model: str) -> Path | None:
    """The folder behind a local judge: the path itself, or a hub id already in the local HF cache (offline)."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p
    if "/" not in model or model.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:
        return None


@dataclass(frozen=True)
class JudgeIdentity:
    """What determines a judge's output; `id` is a short hash of it (the display path is not part of it)."""

    kind: str
    model: str | None = None  # display: the path or model id as given
    model_key: str | None = None  # what the cache key uses: "sha256:<fingerprint>" or the API model id
    fingerprint: str | None = None
    decoding: dict[str, Any] = field(default_factory=dict)
    method_version: int = 0
    prompt_sha256: str | None = None
    kinds: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """Hash of the model key, decoding and method version. Kinds and prompts are not in it: every judgment
        row carries the hash of its own exact judge input (`prompt_sha256`), so one judge can judge many suites."""
        blob = json.dumps(
            {
                "model_key": self.model_key,
                "decoding": self.decoding,
                "method_version": self.method_version,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The `judge_identity` record of judgments.jsonl rows and metrics.json (see docs/judge.md)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "kinds": list(self.kinds) or [self.kind],
            "model": self.model,
            "model_key": self.model_key,
            "fingerprint": self.fingerprint,
            "prompt_sha256": self.prompt_sha256,
            "decoding": dict(self.decoding),
            "method_version": self.method_version,
        }



def prompts_sha256(prompts: list[str] | tuple[str, ...]) -> str:
    """One hash over a set of judge prompt templates (order-free)."""
    h = hashlib.sha256()
    for p in sorted(set(prompts)):
        h.update(hashlib.sha256(p.encode("utf-8")).digest())
    return h.hexdigest()


def model_identity(model: str, *, local: bool | None = None) -> tuple[str, str | None]:
    """(model_key, fingerprint) of a judge model: a folder (or cached hub snapshot) is fingerprinted; anything
    else is an API model known by its id. `local=False` forces the API form (OpenAI, a served model)."""
    folder = local_model_folder(model) if local is not False else None
    if folder is None:
        if local:
            raise InputError(f"judge model {model!r}: not a local folder, and not in the local Hugging Face cache")
        return model, None
    fp = model_fingerprint(folder)
    return LOCAL_PREFIX + fp, fp


def is_legacy_judge_key(judge: str) -> bool:
    """Cache rows written before judge identities were keyed by a path string: those cannot be proven to belong
    to any judge. API model ids (no path separator) are their own identity and stay valid."""
    if judge.startswith(LOCAL_PREFIX):
        return False
    return os.sep in judge or "/" in judge or judge.startswith((".", "~"))
