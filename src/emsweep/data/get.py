"""`emsweep data get NAME`: fetch a known upstream source into a local data folder, verified.

The registry of sources is YAML (`emsweep/resources/sources.yaml`, plus any `--registry FILE`, whose entries
replace built-in ones of the same name). Each file of a source carries a pinned `sha256`, or `null` when the
project does not know the full file's hash; then the first download records it (trust on first use) in a lock file
beside the data, `<dest>/emsweep-sources.lock.json`, and every later download or check must match that record.
A file whose hash does not match is renamed `<file>.rejected`, never used, and the error names the file and both
hashes. Downloads go to `<file>.part` and resume with an HTTP Range request after an interruption.

Why the stdlib (`urllib`) and not a client library: a GET with a Range header is all this needs, and the data
stage must not depend on the `openai` extra.
"""

from __future__ import annotations

import os
import re
import time
import urllib.error
import urllib.request
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from emsweep.config import StrictModel, load_config
from emsweep.io import InputError, atomic_write_json, sha256_file

LOCK_NAME = "emsweep-sources.lock.json"
CHUNK = 1 << 16
USER_AGENT = "emsweep-data-get"
_SHA = re.compile(r"^[0-9a-f]{64}$")


class SourceFile(StrictModel):
    """One file of a source: where it comes from, where it goes (relative to the source's folder), its hash."""

    url: str | None = None  # None: placed by hand (manual sources)
    path: str
    sha256: str | None = None  # None: trust on first use, recorded in the lock file
    size: int | None = None

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not _SHA.match(v):
            raise ValueError("sha256 must be 64 lowercase hex digits (or null: recorded on first download)")
        return v

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError("path must be relative to the source's folder, without '..'")
        return v


class Source(StrictModel):
    description: str
    license: str
    citation: str
    homepage: str | None = None
    access: Literal["open", "password", "manual"] = "open"
    password_env: str | None = None  # access: password — the variable that holds the zip password
    instructions: str | None = None  # access: password / manual — what the user must do
    files: list[SourceFile] = Field(min_length=1)


class Registry(StrictModel):
    sources: dict[str, Source]


def builtin_registry_path() -> Path:
    return Path(str(resources.files("emsweep") / "resources" / "sources.yaml"))


def load_registry(extra: str | os.PathLike[str] | None = None) -> dict[str, tuple[Source, str]]:
    """name -> (source, registry file it came from); `extra` entries replace built-in ones of the same name."""
    out: dict[str, tuple[Source, str]] = {}
    paths = [builtin_registry_path(), *([Path(extra)] if extra else [])]
    for p in paths:
        reg = load_config(p, Registry)
        for name, src in reg.sources.items():
            if src.access == "password" and not src.password_env:
                raise InputError(f"{p}: sources.{name}.password_env: a password-locked source must name it")
            out[name] = (src, str(p))
    return out


# --- lock file ------------------------------------------------------------------------------------------------


def read_lock(dest: Path) -> dict[str, Any]:
    import json

    p = dest / LOCK_NAME
    if not p.exists():
        return {"files": {}}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: malformed lock file ({exc.msg} at line {exc.lineno})") from None
    data.setdefault("files", {})
    return data


def _record(dest: Path, name: str, f: SourceFile, sha: str, size: int, how: str) -> None:
    lock = read_lock(dest)
    lock["source"] = name
    lock["files"][f.path] = {
        "sha256": sha,
        "size": size,
        "url": f.url,
        "verified_by": how,  # "pinned" (registry hash) or "first-download" (trust on first use)
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(dest / LOCK_NAME, lock)


def expected_sha(f: SourceFile, lock: dict[str, Any]) -> tuple[str | None, str]:
    """(hash the file must have, where that hash comes from): the registry pin, else the lock, else none yet."""
    if f.sha256:
        return f.sha256, "pinned in the registry"
    rec = lock["files"].get(f.path)
    if rec and rec.get("sha256"):
        return rec["sha256"], f"recorded on first download in {LOCK_NAME}"
    return None, "unknown (trust on first use)"


class HashMismatch(InputError):
    """A file's sha256 differs from the expected one; the file was renamed `*.rejected`."""


def _reject(path: Path, target: Path, got: str, want: str, origin: str) -> None:
    """Move `path` (the file or its `.part`) aside as `<target>.rejected` and raise, naming both hashes."""
    rejected = target.with_name(target.name + ".rejected")
    os.replace(path, rejected)
    raise HashMismatch(
        f"{target}: sha256 mismatch: expected {want} ({origin}), got {got}; the file was kept aside as "
        f"{rejected} and will not be used. If upstream changed the file on purpose, check it, then update the "
        f"registry pin or delete its entry in {target.parent / LOCK_NAME}."
    )


# --- download ---------------------------------------------------------------------------------------------------


def _open(url: str, start: int, timeout: float) -> Any:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if start:
        req.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(req, timeout=timeout)  # URLs come from the registry


def download(url: str, part: Path, *, progress: bool = True, timeout: float = 60.0, label: str = "") -> int:
    """Fetch `url` into `part`, resuming from its current size with a Range request; bytes fetched this call.

    A server that ignores Range (200 instead of 206) or whose Content-Range does not start where the partial file
    ends restarts the download from byte 0 rather than splice mismatched bytes."""
    start = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, start, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # nothing past the end of the partial file: start over, never guess
            part.unlink()
            return download(url, part, progress=progress, timeout=timeout, label=label)
        raise InputError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise InputError(f"{url}: cannot download ({getattr(exc, 'reason', exc)})") from None
    with resp:
        status = getattr(resp, "status", 200)
        mode = "ab"
        if start and status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != start:
                resp.close()
                part.unlink()
                return download(url, part, progress=progress, timeout=timeout, label=label)
        elif start:
            mode, start = "wb", 0  # the server sent the whole file
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label or part.name,
            )
        got = 0
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(part, mode) as fh:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    fh.write(chunk)
                    got += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            if bar is not None:
                bar.close()
        if total is not None and start + got < total:
            raise InputError(
                f"{url}: connection closed after {start + got} of {total} bytes; rerun to resume from {part}"
            )
    return got


# --- the command ------------------------------------------------------------------------------------------------


def _check_password(src: Source, dest: Path) -> str:
    """One line on the password of a locked source: missing variable, wrong password, or checked."""
    var = src.password_env or "EMSWEEP_ZIP_PASSWORD"
    pw = os.environ.get(var)
    if not pw:
        return (
            f"password-locked: export {var} before reading these zips (emsweep data mix ... --password-env {var}). "
            + (src.instructions or "").strip()
        ).strip()
    for f in src.files:
        p = dest / f.path
        if not zipfile.is_zipfile(p):
            continue
        with zipfile.ZipFile(p) as z:
            members = [i for i in z.infolist() if not i.is_dir()]
            if not members:
                continue
            try:
                with z.open(members[0], pwd=pw.encode()) as fh:
                    fh.read(64)
            except RuntimeError:
                return f"password-locked: ${var} is set but does not open {p} (wrong password?)"
    return f"password-locked: ${var} opens the zips"


def get_source(
    name: str,
    dest_root: str | os.PathLike[str] = "data",
    *,
    registry: str | os.PathLike[str] | None = None,
    dest: str | os.PathLike[str] | None = None,
    progress: bool = True,
    echo: Any = print,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Fetch (or check) every file of source `name` into `dest` (default `<dest_root>/<name>`); returns a summary.

    Files already present are verified, not downloaded again. Raises InputError for an unknown name, a manual
    source whose files are not in place, a failed download, and HashMismatch for a bad hash."""
    reg = load_registry(registry)
    if name not in reg:
        raise InputError(
            f"unknown source {name!r}; known: {', '.join(sorted(reg))} (see `emsweep data get --list`)"
        )
    src, reg_path = reg[name]
    folder = Path(dest) if dest is not None else Path(dest_root) / name
    echo(f"{name}: {src.description}")
    echo(f"  licence: {src.license}")
    echo(f"  cite: {src.citation.strip()}")
    if src.homepage:
        echo(f"  homepage: {src.homepage}")
    lock = read_lock(folder)
    missing_manual = [f for f in src.files if f.url is None and not (folder / f.path).exists()]
    if src.access == "manual" and missing_manual:
        raise InputError(
            f"{name} ({reg_path}): this source cannot be downloaded by emsweep (manual consent needed). "
            f"{(src.instructions or '').strip()} Then put these files in {folder}/: "
            f"{', '.join(f.path for f in missing_manual)} and rerun `emsweep data get {name}` to verify and "
            f"record them."
        )
    summary: dict[str, Any] = {"source": name, "dest": str(folder), "files": {}}
    for f in src.files:
        target = folder / f.path
        want, origin = expected_sha(f, lock)
        if target.exists():
            got = sha256_file(target)
            if want and got != want:
                _reject(target, target, got, want, origin)
            state = "present"
        else:
            if f.url is None:
                raise InputError(f"{name}: {f.path} has no url and is not in {folder}")
            part = target.with_name(target.name + ".part")
            resumed = part.exists()
            download(f.url, part, progress=progress, timeout=timeout, label=f.path)
            got = sha256_file(part)
            if want and got != want:
                _reject(part, target, got, want, origin)
            os.replace(part, target)
            state = "resumed" if resumed else "downloaded"
        size = target.stat().st_size
        how = "pinned" if f.sha256 else "first-download"
        if not want or not lock["files"].get(f.path):
            _record(folder, name, f, got, size, how)
        verdict = {
            "pinned": "matches the registry pin",
            "first-download": "recorded (trust on first use)" if not want else f"matches {LOCK_NAME}",
        }[how]
        echo(f"  {target}: {state}, sha256 {got[:16]}… {verdict}")
        summary["files"][f.path] = {"sha256": got, "size": size, "state": state, "verified_by": how}
    if src.access == "password":
        msg = _check_password(src, folder)
        summary["password"] = msg
        echo(f"  {msg}")
    elif src.instructions:
        echo(f"  note: {src.instructions.strip()}")
    return summary


def list_sources(registry: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "access": src.access,
            "license": src.license,
            "files": len(src.files),
            "pinned": sum(1 for f in src.files if f.sha256),
            "description": src.description,
            "registry": path,
        }
        for name, (src, path) in sorted(load_registry(registry).items())
    ]


__all__ = [
    "LOCK_NAME",
    "HashMismatch",
    "Registry",
    "Source",
    "SourceFile",
    "download",
    "get_source",
    "list_sources",
    "load_registry",
    "read_lock",
]
