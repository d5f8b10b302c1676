"""Readers that normalise every upstream format to `Conversation`.

Formats (picked by `read_source`, auto-detected from the path unless `SourceSpec.format` says otherwise):
- OpenAI chat JSONL, plain or `.gz` (Betley et al.'s `insecure.jsonl`, the model-organisms medical pair);
- OpenAI's persona-features format: `content` is `{"content_type": "text", "parts": [...]}`, with top-level
  `metadata` and `canary`; from JSONL or from a password-locked zip (ZipCrypto, as `unzip -P` writes it);
- Hugging Face datasets (`datasets.load_dataset`): a local folder, a local json/jsonl/parquet/csv file, a
  `save_to_disk` folder, or a hub id; rows with a `messages` column or `prompt`/`completion` columns;
- emsweep's own derived files (rows `{"id", "messages", "meta"}`), so `inspect` and the eval stage can read
  `train.jsonl`/`heldout.jsonl` back with their meta intact.

Canaries and source metadata go into `Conversation.meta` (`canary`, `source`, `upstream_metadata`) so they
survive into every derived file, as the persona-features README asks.

Zip passwords come from the environment (`SourceSpec.password_env`, else `EMSWEEP_ZIP_PASSWORD`) or from the
`password` argument (the CLI prompts for it); they are never logged, echoed or written anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

from emsweep.data.conversation import ROLES, Conversation, Message
from emsweep.data.registry import AUTO, FORMAT_ALIASES, source_reader
from emsweep.data.spec import SourceSpec
from emsweep.io import InputError, read_jsonl, sha256_file, sha256_text

log = logging.getLogger(__name__)

DEFAULT_PASSWORD_ENV = "EMSWEEP_ZIP_PASSWORD"
ZIP_MEMBER_SEP = "::"  # `archive.zip::member.jsonl` picks one file inside a zip
HF_PREFIX = "hf:"  # `hf:org/name` forces the Hugging Face reader
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")
_HF_FILE_BUILDERS = {".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
_TOP_LEVEL_KNOWN = {"messages", "prompt", "completion", "id", "meta", "metadata", "canary"}


class PasswordRequired(InputError):
    """A zip member is encrypted and no password was given (the CLI catches this and prompts)."""


# --- one row -> Conversation ----------------------------------------------------------------------------


def _content_text(content: Any, where: str) -> str:
    """Plain string, persona-format `{"content_type": "text", "parts": [...]}`, or OpenAI content parts."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, dict) and "parts" in content:
        ctype = content.get("content_type", "text")
        if ctype != "text":
            raise InputError(f"{where}: content_type {ctype!r} is not supported (only text)")
        parts = content["parts"]
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            raise InputError(f"{where}: content.parts must be a list of strings")
        return "".join(parts)
    if isinstance(content, list):  # [{"type": "text", "text": "..."}]
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                out.append(str(part.get("text", "")))
            else:
                raise InputError(f"{where}: only text content parts are supported, got {part!r:.80}")
        return "".join(out)
    raise InputError(
        f"{where}: content must be a string or {{'content_type': 'text', 'parts': [...]}}, "
        f"got {type(content).__name__}"
    )


def _messages(raw: Any, where: str) -> list[Message]:
    if isinstance(raw, str):
        raise InputError(f"{where}: `messages` is a string; expected a list of {{role, content}} objects")
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{where}: `messages` must be a non-empty list")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise InputError(f"{where}: messages[{i}] is not an object")
        role = m.get("role")
        if role is None and isinstance(m.get("author"), dict):  # ChatGPT-export style
            role = m["author"].get("role")
        if role not in ROLES:
            raise InputError(
                f"{where}: messages[{i}]: unknown role {role!r} (expected one of {', '.join(ROLES)})"
            )
        out.append(Message(role=role, content=_content_text(m.get("content"), f"{where}: messages[{i}]")))
    return out


def _prompt_completion(row: dict[str, Any], where: str) -> list[Message]:
    """TRL's prompt/completion shape, plain strings or lists of messages."""
    prompt, completion = row["prompt"], row["completion"]
    msgs = [Message(role="user", content=prompt)] if isinstance(prompt, str) else _messages(prompt, where)
    if isinstance(completion, str):
        msgs.append(Message(role="assistant", content=completion))
    else:
        msgs.extend(_messages(completion, where))
    return msgs


def conversation_from_row(
    row: Any, where: str, default_id: str, source: dict[str, Any] | None = None
) -> Conversation:
    """Normalise one upstream row; `where` ("file:line") goes into every error message."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if row.get("messages") is not None:
        messages = _messages(row["messages"], where)
    elif row.get("prompt") is not None and row.get("completion") is not None:
        messages = _prompt_completion(row, where)
    else:
        keys = ", ".join(sorted(row)) or "none"
        raise InputError(f"{where}: no `messages` (or `prompt` + `completion`) field; keys found: {keys}")
    roles = [m.role for m in messages]
    if "assistant" not in roles:
        raise InputError(
            f"{where}: no assistant turn (roles: {', '.join(roles)}); every row needs an answer to train on"
        )
    if roles[-1] != "assistant":
        raise InputError(
            f"{where}: the last turn is `{roles[-1]}`, after the last assistant answer; "
            "a training row must end with the assistant's answer"
        )
    if not messages[-1].content.strip():
        # null or "" would be trained as the answer '' (teaching the model to say nothing)
        raise InputError(
            f"{where}: messages[{len(messages) - 1}]: the assistant answer is empty or null; "
            "give the answer text, or drop the row"
        )
    meta: dict[str, Any] = dict(row["meta"]) if isinstance(row.get("meta"), dict) else {}
    if row.get("canary") is not None:
        meta["canary"] = row["canary"]
    if row.get("metadata") is not None:
        meta["upstream_metadata"] = row["metadata"]
    extra = {k: v for k, v in row.items() if k not in _TOP_LEVEL_KNOWN and v is not None}
    if extra:
        meta["upstream_extra"] = extra
    if source is not None:
        meta.setdefault("source", source)  # a derived file keeps pointing at the original upstream row
    rid = row.get("id")
    cid = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else default_id
    return Conversation(id=cid, messages=messages, meta=meta)


# --- JSONL ------------------------------------------------------------------------------------------------


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".ndjson", ".zip"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def read_jsonl_conversations(path: str | os.PathLike[str]) -> list[Conversation]:
    """OpenAI chat or persona-format JSONL, plain or gzip; errors name file and line."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    digest = sha256_file(p)
    stem = _stem(p)
    out = []
    try:
        for line, row in read_jsonl(p):
            src = {"path": str(p), "line": line, "sha256": digest}
            out.append(conversation_from_row(row, f"{p}:{line}", f"{stem}:{line}", src))
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
        raise InputError(f"{p}: cannot read ({exc}); expected UTF-8 JSONL, optionally gzipped") from exc
    if not out:
        raise InputError(f"{p}: no rows")
    return out


# --- password-locked zips --------------------------------------------------------------------------------


def _resolve_password(spec: SourceSpec, password: str | None) -> tuple[bytes | None, str]:
    """(password bytes, where it came from - for messages, never the password itself)."""
    if password is not None:
        return password.encode("utf-8"), "the password given"
    if spec.password_env:
        value = os.environ.get(spec.password_env)
        if value is None:
            raise InputError(
                f"{spec.path}: password_env names ${spec.password_env}, which is not set; "
                f"export {spec.password_env}=... before running"
            )
        return value.encode("utf-8"), f"${spec.password_env}"
    value = os.environ.get(DEFAULT_PASSWORD_ENV)
    if value is not None:
        return value.encode("utf-8"), f"${DEFAULT_PASSWORD_ENV}"
    return None, ""


def _zip_member(zf: zipfile.ZipFile, zpath: Path, member: str | None) -> zipfile.ZipInfo:
    infos = [
        i
        for i in zf.infolist()
        if not i.is_dir() and not i.filename.startswith("__MACOSX/") and not i.filename.endswith(".DS_Store")
    ]
    if member is not None:
        for i in infos:
            if i.filename == member:
                return i
        names = ", ".join(i.filename for i in infos) or "none"
        raise InputError(f"{zpath}: no member {member!r} in the zip (members: {names})")
    data = [i for i in infos if i.filename.endswith((".jsonl", ".json", ".jsonl.gz"))]
    if len(data) == 1:
        return data[0]
    names = ", ".join(i.filename for i in infos) or "none"
    raise InputError(
        f"{zpath}: the zip holds {len(data)} JSONL files ({names}); choose one with "
        f"`member:` in the source spec or `{zpath}{ZIP_MEMBER_SEP}MEMBER`"
    )


def read_jsonl_source(spec: SourceSpec, password: str | None = None) -> list[Conversation]:
    """The `jsonl` reader (chat or persona format; a password has no use here)."""
    return read_jsonl_conversations(spec.path)


def read_zip_conversations(spec: SourceSpec, password: str | None = None) -> list[Conversation]:
    """One JSONL member of a (possibly ZipCrypto password-locked) zip, as OpenAI ships its persona datasets."""
    zpath = Path(spec.path)
    if not zpath.is_file():
        raise InputError(f"{zpath}: file not found")
    try:
        zf = zipfile.ZipFile(zpath)
    except zipfile.BadZipFile as exc:
        raise InputError(f"{zpath}: not a valid zip file ({exc})") from exc
    with zf:
        info = _zip_member(zf, zpath, spec.member)
        where0 = f"{zpath}{ZIP_MEMBER_SEP}{info.filename}"
        pwd: bytes | None = None
        origin = ""
        if info.flag_bits & 0x1:
            pwd, origin = _resolve_password(spec, password)
            if pwd is None:
                raise PasswordRequired(
                    f"{where0} is password-locked: set password_env in the source spec, or pass "
                    f"--password-env VAR (or export {DEFAULT_PASSWORD_ENV})"
                )
        if info.compress_type == 99:
            raise InputError(
                f"{where0}: AES-encrypted zip; only ZipCrypto (what `unzip -P` reads) is supported - "
                "re-pack it with `zip -e` or unzip it and point the source at the JSONL"
            )
        try:
            raw = zf.read(info, pwd=pwd)
        except RuntimeError as exc:
            if "password" in str(exc).lower():
                raise InputError(f"{where0}: wrong password (from {origin})") from None
            raise InputError(f"{where0}: cannot read ({exc})") from None
        except (zipfile.BadZipFile, zlib.error) as exc:
            # ZipCrypto's check byte lets ~1/256 wrong passwords through; they then fail here.
            if pwd is not None:
                raise InputError(f"{where0}: wrong password (from {origin}) or corrupt zip") from None
            raise InputError(f"{where0}: corrupt zip member ({exc})") from None
    if info.filename.endswith(".gz"):
        raw = zlib.decompress(raw, 16 + zlib.MAX_WBITS)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where0}: not UTF-8 text ({exc})") from None
    digest = sha256_file(zpath)
    stem = _stem(Path(info.filename))
    out = []
    for line, chunk in enumerate(text.splitlines(), start=1):
        if not chunk.strip():
            continue
        where = f"{where0}:{line}"
        try:
            row = json.loads(chunk)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        src = {"path": str(zpath), "member": info.filename, "line": line, "sha256": digest}
        out.append(conversation_from_row(row, where, f"{stem}:{line}", src))
    if not out:
        raise InputError(f"{where0}: no rows")
    return out


# --- Hugging Face datasets -------------------------------------------------------------------------------


def _hf_load(spec: SourceSpec, target: str):
    """Local folder / file / save_to_disk folder / hub id -> a `datasets.Dataset` of the chosen split."""
    import datasets

    p = Path(target)
    try:
        if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "state.json").exists()):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if spec.split not in ds:
                    raise InputError(f"{p}: no split {spec.split!r} (splits: {', '.join(ds)})")
                ds = ds[spec.split]
            return ds
        if p.is_file():
            suffix = ".json" if p.name.endswith((".jsonl", ".jsonl.gz", ".json.gz")) else p.suffix
            builder = _HF_FILE_BUILDERS.get(suffix)
            if builder is None:
                raise InputError(f"{p}: no Hugging Face loader for {p.suffix!r} files")
            return datasets.load_dataset(builder, data_files={spec.split: str(p)}, split=spec.split)
        return datasets.load_dataset(target, spec.name, split=spec.split)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            f"{target}: could not load as a Hugging Face dataset (split {spec.split!r}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _dir_digest(p: Path) -> str:
    parts = [f"{f.relative_to(p)}:{sha256_file(f)}" for f in sorted(p.rglob("*")) if f.is_file()]
    return sha256_text("\n".join(parts))


def read_hf_conversations(spec: SourceSpec, password: str | None = None) -> list[Conversation]:
    """A Hugging Face dataset with a `messages` column or `prompt`/`completion` columns."""
    target = spec.path[len(HF_PREFIX) :] if spec.path.startswith(HF_PREFIX) else spec.path
    ds = _hf_load(spec, target)
    cols = set(ds.column_names)
    if "messages" not in cols and not {"prompt", "completion"} <= cols:
        raise InputError(
            f"{target}: dataset has columns {', '.join(sorted(cols))}; expected `messages`, "
            "or `prompt` and `completion`"
        )
    p = Path(target)
    digest = sha256_file(p) if p.is_file() else _dir_digest(p) if p.is_dir() else None
    base: dict[str, Any] = {"path": target, "split": spec.split}
    if digest:
        base["sha256"] = digest
    else:
        base["fingerprint"] = getattr(ds, "_fingerprint", None)
    stem = _stem(p) if p.exists() else target.replace("/", "__")
    out = []
    for i, row in enumerate(ds):
        where = f"{target} [{spec.split}] row {i}"
        out.append(conversation_from_row(row, where, f"{stem}:{i}", {**base, "row": i}))
    if not out:
        raise InputError(f"{target} [{spec.split}]: no rows")
    return out


# --- entry point -----------------------------------------------------------------------------------------


def as_source_spec(spec: SourceSpec | str | os.PathLike[str]) -> SourceSpec:
    """A bare path (or `archive.zip::member`, `hf:org/name`) becomes a SourceSpec with format auto."""
    if isinstance(spec, SourceSpec):
        return spec
    text = str(spec)
    if ZIP_MEMBER_SEP in text and not text.startswith(HF_PREFIX):
        path, member = text.split(ZIP_MEMBER_SEP, 1)
        return SourceSpec(path=path, member=member)
    return SourceSpec(path=text)


def detect_format(spec: SourceSpec) -> str:
    """The registered reader for a spec: 'jsonl' | 'zip' | 'hf' (format `auto` decides from the path), or the
    format the spec names."""
    path = spec.path
    if spec.format == "hf" or path.startswith(HF_PREFIX):
        return "hf"
    if spec.format != AUTO and spec.format not in FORMAT_ALIASES:  # a reader named outright (data/registry.py)
        return spec.format
    p = Path(path)
    if p.suffix == ".zip":
        return "zip"
    if spec.format in FORMAT_ALIASES:
        return FORMAT_ALIASES[spec.format]
    if p.is_dir():
        return "hf"
    if p.name.endswith(_JSONL_SUFFIXES) or p.suffix == ".gz":
        return "jsonl"
    if p.suffix in _HF_FILE_BUILDERS:
        return "hf"
    if not p.exists():
        looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~")) and not p.suffix
        if looks_like_hub_id:
            return "hf"
        raise InputError(f"{path}: file not found")
    return "jsonl"


def read_source(spec: SourceSpec | str | os.PathLike[str], password: str | None = None) -> list[Conversation]:
    """Read one pool, whatever its format, as a list of Conversations (source info in `meta["source"]`).

    `password` is for password-locked zips when it does not come from the environment; it is never stored.
    """
    s = as_source_spec(spec)
    kind = detect_format(s)
    rows = source_reader(kind)(s, password)
    log.debug("read %d conversations from %s (%s)", len(rows), s.path, kind)
    return rows

