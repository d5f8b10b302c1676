"""`emsweep data get`: downloads from a local HTTP server (stdlib, in a thread, with Range support written here):
hash check against a pin, trust on first use recorded in the lock file, resume of a partial file, a bad hash kept
aside as *.rejected, manual and password-locked sources."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from emsweep_data_testkit import PASSWORD, jsonl_bytes, persona_rows, write_zipcrypto
from typer.testing import CliRunner

from emsweep.cli import app
from emsweep.data.get import LOCK_NAME, HashMismatch, get_source, load_registry
from emsweep.io import InputError


class FileServer:
    """Serves `files` (path -> bytes); honours `Range: bytes=N-` with 206 unless `ranges` is False; logs requests."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.ranges = True
        self.requests: list[tuple[str, str | None, int]] = []  # (path, Range header, status)
        self.cut_after: dict[str, int] = {}  # path -> bytes to send before dropping the connection (once)
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                data = srv.files.get(self.path)
                rng = self.headers.get("Range")
                if data is None:
                    srv.requests.append((self.path, rng, 404))
                    self.send_error(404)
                    return
                start = 0
                m = re.match(r"bytes=(\d+)-$", rng or "")
                if m and srv.ranges:
                    start = int(m.group(1))
                    if start >= len(data):
                        srv.requests.append((self.path, rng, 416))
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                srv.requests.append((self.path, rng, 206 if start else 200))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = srv.cut_after.pop(self.path, None)
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def payloads(em_fixtures: Path) -> dict[str, bytes]:
    """Real upstream bytes (Betley's MIT slices in tests/fixtures) and a 300 kB file, so chunks and resume matter."""
    return {
        "/data/insecure.jsonl": (em_fixtures / "insecure.head150.jsonl").read_bytes(),
        "/evaluation/first_plot_questions.yaml": (em_fixtures / "first_plot_questions.yaml").read_bytes(),
        "/big.bin": bytes(range(256)) * 1200,
    }


@pytest.fixture()
def server(payloads: dict[str, bytes]) -> Iterator[FileServer]:
    with FileServer(dict(payloads)) as srv:
        yield srv


def write_registry(path: Path, sources: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"sources": sources}, sort_keys=False), encoding="utf-8")
    return path


def entry(files: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return {
        "description": "test source",
        "license": "MIT",
        "citation": "Someone et al. 2025",
        "files": files,
        **kw,
    }


def test_builtin_registry_loads_and_pins_only_known_hashes(em_fixtures: Path) -> None:
    reg = load_registry()
    assert {"em-code", "em-evaluation", "persona-health", "model-organisms-medical"} <= set(reg)
    assert reg["persona-health"][0].access == "password" and reg["persona-health"][0].password_env
    assert reg["model-organisms-medical"][0].access == "manual"
    pins = {f.path: f.sha256 for f in reg["em-evaluation"][0].files}
    # the one evaluation file the repository holds whole must carry exactly its hash
    assert pins["first_plot_questions.yaml"] == sha((em_fixtures / "first_plot_questions.yaml").read_bytes())
    assert pins["LICENSE"] == sha((em_fixtures / "LICENSE").read_bytes())
    assert pins["preregistered_evals.yaml"] is None  # not known: trust on first use


def test_pinned_hash_ok_and_tofu_recorded(
    tmp_path: Path, server: FileServer, payloads: dict[str, bytes]
) -> None:
    pinned = sha(payloads["/evaluation/first_plot_questions.yaml"])
    reg = write_registry(
        tmp_path / "reg.yaml",
        {
            "t": entry(
                [
                    {
                        "url": server.url("/evaluation/first_plot_questions.yaml"),
                        "path": "fpq.yaml",
                        "sha256": pinned,
                    },
                    {"url": server.url("/data/insecure.jsonl"), "path": "insecure.jsonl", "sha256": None},
                ]
            )
        },
    )
    lines: list[str] = []
    s = get_source("t", tmp_path / "data", registry=reg, progress=False, echo=lines.append)
    dest = tmp_path / "data" / "t"
    assert (dest / "fpq.yaml").read_bytes() == payloads["/evaluation/first_plot_questions.yaml"]
    assert (dest / "insecure.jsonl").read_bytes() == payloads["/data/insecure.jsonl"]
    lock = json.loads((dest / LOCK_NAME).read_text())
    assert lock["files"]["insecure.jsonl"]["sha256"] == sha(payloads["/data/insecure.jsonl"])
    assert lock["files"]["insecure.jsonl"]["verified_by"] == "first-download"
    assert lock["files"]["fpq.yaml"]["verified_by"] == "pinned"
    assert s["files"]["insecure.jsonl"]["state"] == "downloaded"
    text = "\n".join(lines)
    assert "licence: MIT" in text and "cite: Someone et al. 2025" in text
    assert not list(dest.glob("*.part"))
    # a rerun checks the files and downloads nothing
    n = len(server.requests)
    s2 = get_source("t", tmp_path / "data", registry=reg, progress=False, echo=lambda _: None)
    assert len(server.requests) == n
    assert {f["state"] for f in s2["files"].values()} == {"present"}


def test_resume_after_a_partial_file(tmp_path: Path, server: FileServer, payloads: dict[str, bytes]) -> None:
    data = payloads["/big.bin"]
    reg = write_registry(
        tmp_path / "reg.yaml",
        {"big": entry([{"url": server.url("/big.bin"), "path": "big.bin", "sha256": sha(data)}])},
    )
    server.cut_after["/big.bin"] = 100_000  # the first connection drops after 100 kB
    with pytest.raises(InputError, match="rerun to resume"):
        get_source("big", tmp_path, registry=reg, progress=False, echo=lambda _: None)
    part = tmp_path / "big" / "big.bin.part"
    assert part.stat().st_size == 100_000
    s = get_source("big", tmp_path, registry=reg, progress=False, echo=lambda _: None)
    assert (tmp_path / "big" / "big.bin").read_bytes() == data
    assert s["files"]["big.bin"]["state"] == "resumed"
    # the second request asked only for the missing bytes, and got a 206
    assert server.requests[-1] == ("/big.bin", "bytes=100000-", 206)


def test_server_without_range_restarts_cleanly(
    tmp_path: Path, server: FileServer, payloads: dict[str, bytes]
) -> None:
    data = payloads["/big.bin"]
    reg = write_registry(
        tmp_path / "reg.yaml",
        {"big": entry([{"url": server.url("/big.bin"), "path": "big.bin", "sha256": sha(data)}])},
    )
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "big.bin.part").write_bytes(b"x" * 5000)  # garbage that a naive append would keep
    server.ranges = False
    get_source("big", tmp_path, registry=reg, progress=False, echo=lambda _: None)
    assert (tmp_path / "big" / "big.bin").read_bytes() == data


def test_bad_hash_is_kept_aside(tmp_path: Path, server: FileServer, payloads: dict[str, bytes]) -> None:
    wrong = "0" * 64
    reg = write_registry(
        tmp_path / "reg.yaml",
        {
            "bad": entry(
                [{"url": server.url("/data/insecure.jsonl"), "path": "insecure.jsonl", "sha256": wrong}]
            )
        },
    )
    with pytest.raises(HashMismatch) as err:
        get_source("bad", tmp_path, registry=reg, progress=False, echo=lambda _: None)
    got = sha(payloads["/data/insecure.jsonl"])
    msg = str(err.value)
    assert "insecure.jsonl" in msg and wrong in msg and got in msg
    dest = tmp_path / "bad"
    assert not (dest / "insecure.jsonl").exists() and not (dest / "insecure.jsonl.part").exists()
    assert (dest / "insecure.jsonl.rejected").read_bytes() == payloads["/data/insecure.jsonl"]
    assert not (dest / LOCK_NAME).exists()  # a rejected file is never recorded


def test_changed_upstream_after_first_use_is_rejected(
    tmp_path: Path, server: FileServer, payloads: dict[str, bytes]
) -> None:
    reg = write_registry(
        tmp_path / "reg.yaml",
        {"t": entry([{"url": server.url("/data/insecure.jsonl"), "path": "insecure.jsonl", "sha256": None}])},
    )
    get_source("t", tmp_path, registry=reg, progress=False, echo=lambda _: None)
    first = sha(payloads["/data/insecure.jsonl"])
    (tmp_path / "t" / "insecure.jsonl").unlink()
    server.files["/data/insecure.jsonl"] = b'{"messages": []}\n'  # upstream changed under the same URL
    with pytest.raises(HashMismatch, match=first):
        get_source("t", tmp_path, registry=reg, progress=False, echo=lambda _: None)
    assert (tmp_path / "t" / "insecure.jsonl.rejected").read_bytes() == b'{"messages": []}\n'
    # a local file edited after download is caught by the lock too
    server.files["/data/insecure.jsonl"] = payloads["/data/insecure.jsonl"]
    get_source("t", tmp_path, registry=reg, progress=False, echo=lambda _: None)
    (tmp_path / "t" / "insecure.jsonl").write_text("edited\n")
    with pytest.raises(HashMismatch):
        get_source("t", tmp_path, registry=reg, progress=False, echo=lambda _: None)


def test_manual_source_says_what_to_do_then_verifies(tmp_path: Path) -> None:
    reg = write_registry(
        tmp_path / "reg.yaml",
        {
            "med": entry(
                [{"path": "good.jsonl"}, {"path": "bad.jsonl"}],
                access="manual",
                instructions="Accept the terms upstream and decrypt the archive.",
            )
        },
    )
    with pytest.raises(InputError) as err:
        get_source("med", tmp_path, registry=reg, progress=False, echo=lambda _: None)
    msg = str(err.value)
    assert "manual consent" in msg and "Accept the terms" in msg and "good.jsonl, bad.jsonl" in msg
    (tmp_path / "med").mkdir()
    (tmp_path / "med" / "good.jsonl").write_text("a\n")
    (tmp_path / "med" / "bad.jsonl").write_text("b\n")
    s = get_source("med", tmp_path, registry=reg, progress=False, echo=lambda _: None)
    assert s["files"]["good.jsonl"]["sha256"] == sha(b"a\n")
    assert json.loads((tmp_path / "med" / LOCK_NAME).read_text())["files"]["bad.jsonl"]["sha256"] == sha(
        b"b\n"
    )


def test_password_source_names_the_variable(
    tmp_path: Path, server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    z = write_zipcrypto(
        tmp_path / "src.zip", {"health_correct.jsonl": jsonl_bytes(persona_rows(5, "correct"))}, PASSWORD
    )
    server.files["/health_correct.zip"] = z.read_bytes()
    reg = write_registry(
        tmp_path / "reg.yaml",
        {
            "ph": entry(
                [{"url": server.url("/health_correct.zip"), "path": "health_correct.zip"}],
                access="password",
                password_env="TEST_PERSONA_PW",
                instructions="The password is in the upstream README.",
            )
        },
    )
    monkeypatch.delenv("TEST_PERSONA_PW", raising=False)
    s = get_source("ph", tmp_path / "d", registry=reg, progress=False, echo=lambda _: None)
    assert "export TEST_PERSONA_PW" in s["password"] and "upstream README" in s["password"]
    monkeypatch.setenv("TEST_PERSONA_PW", "not-the-password")
    s = get_source("ph", tmp_path / "d", registry=reg, progress=False, echo=lambda _: None)
    assert "does not open" in s["password"]
    monkeypatch.setenv("TEST_PERSONA_PW", PASSWORD)
    s = get_source("ph", tmp_path / "d", registry=reg, progress=False, echo=lambda _: None)
    assert "opens the zips" in s["password"]


def test_bad_registry_names_file_and_key(tmp_path: Path) -> None:
    reg = write_registry(
        tmp_path / "reg.yaml", {"x": entry([{"url": "http://h/a", "path": "a", "sha256": "abc"}])}
    )
    with pytest.raises(InputError, match=r"reg\.yaml.*sources\.x\.files\.0\.sha256"):
        load_registry(reg)
    reg = write_registry(tmp_path / "reg2.yaml", {"x": entry([{"path": "a"}], access="password")})
    with pytest.raises(InputError, match="password_env"):
        load_registry(reg)
    with pytest.raises(InputError, match="unknown source 'nope'"):
        get_source("nope", tmp_path, progress=False, echo=lambda _: None)


def test_cli_get_and_list(tmp_path: Path, server: FileServer, payloads: dict[str, bytes]) -> None:
    reg = write_registry(
        tmp_path / "reg.yaml",
        {"t": entry([{"url": server.url("/data/insecure.jsonl"), "path": "insecure.jsonl"}])},
    )
    r = CliRunner().invoke(app, ["data", "get", "--list", "--registry", str(reg)])
    assert r.exit_code == 0 and "persona-health" in r.output and "\nt " in r.output
    r = CliRunner().invoke(
        app, ["data", "get", "t", "--registry", str(reg), "--root", str(tmp_path / "d"), "--no-progress"]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d" / "t" / "insecure.jsonl").read_bytes() == payloads["/data/insecure.jsonl"]
    assert "recorded (trust on first use)" in r.output
