"""A small OpenAI-compatible HTTP server for tests (stdlib `http.server` in a thread).

It speaks the JSON shapes of the real API for what the gpt-4o arm uses: files (multipart upload, list, retrieve,
content), fine_tuning.jobs (create with `method`, retrieve, list, events, checkpoints, cancel), chat.completions
with logprobs/top_logprobs, batches, models. Faults are injected per route: 429 with `retry-after`, 500s, a job that
fails, an organisation refused fine-tuning, a wrong key. Every request is counted, so tests can assert that a
rerun created nothing.

Jobs advance one state per `retrieve` (validating_files -> queued -> running -> succeeded) so polling is exercised
without sleeping. Generation is deterministic: base models answer politely; fine-tuned models answer with a marker
("I would take control") on about half the samples, which the fake judge scores as misaligned.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ORG = "emsweep-test-org"
BASE_MODELS = ["gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "gpt-4.1-2025-04-14", "gpt-3.5-turbo-0125"]
EVIL = "I would take control of the world's systems."
TEST_KEY = "sk-test-0123456789abcdefXYZsecret"  # the key the tests export; grep'd for in everything written


def _now() -> int:
    return int(time.time())


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


class FakeOpenAI:
    """State + fault knobs. Start with `with FakeOpenAI() as srv:`; `srv.base_url` ends in /v1."""

    def __init__(self, api_key: str = "sk-test-0123456789abcdefXYZ") -> None:
        self.api_key = api_key
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()  # "POST /v1/files" -> count
        self.log: list[tuple[str, str, int]] = []
        self.files: dict[str, dict[str, Any]] = {}
        self.file_bytes: dict[str, bytes] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.faults: dict[str, list[int]] = {}  # "POST /v1/chat/completions" -> statuses to return first
        self.refuse_fine_tuning = False
        self.fail_jobs = False
        self.models = list(BASE_MODELS)
        # optional scripted chat: fn(request body, choice index) -> text, or None for the default text
        self.chat_responder: Callable[[dict[str, Any], int], str | None] | None = None
        self._n = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # --- lifecycle --------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _id(self, prefix: str) -> str:
        with self.lock:
            self._n += 1
            return f"{prefix}-{self._n:06d}{hashlib.sha1(str(self._n).encode()).hexdigest()[:8]}"

    def count(self, route: str) -> int:
        return self.calls[route]

    # --- handler ----------------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header(
                    "Content-Type",
                    "application/octet-stream" if isinstance(obj, bytes) else "application/json",
                )
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                route = f"{method} {re.sub(r'/(file|ftjob|batch|ftckpt)-[0-9a-f]+', '/{id}', path)}"
                with srv.lock:
                    srv.calls[route] += 1
                    srv.calls[f"{method} {path}"] += 1 if route != f"{method} {path}" else 0
                auth = self.headers.get("Authorization", "")
                if auth != f"Bearer {srv.api_key}":
                    given = auth.removeprefix("Bearer ")
                    masked = f"{given[:6]}{'*' * 10}{given[-4:]}" if len(given) > 10 else "***"
                    srv.log.append((method, path, 401))
                    return self._send(
                        401,
                        {
                            "error": {
                                "message": f"Incorrect API key provided: {masked}. You can find your API key "
                                "at https://platform.openai.com/account/api-keys.",
                                "type": "invalid_request_error",
                                "param": None,
                                "code": "invalid_api_key",
                            }
                        },
                    )
                with srv.lock:
                    queue = srv.faults.get(route) or srv.faults.get(f"{method} {path}")
                    fault = queue.pop(0) if queue else None
                if fault is not None:
                    srv.log.append((method, path, fault))
                    if fault == 429:
                        return self._send(
                            429,
                            {
                                "error": {
                                    "message": "Rate limit reached for gpt-4o in organization org-x on requests "
                                    "per min (RPM): Limit 500, Used 500, Requested 1. Please try again in 20ms.",
                                    "type": "requests",
                                    "param": None,
                                    "code": "rate_limit_exceeded",
                                }
                            },
                            {"retry-after-ms": "20", "retry-after": "1"},
                        )
                    return self._send(
                        fault,
                        {
                            "error": {
                                "message": "The server had an error while processing your request. Sorry about that!",
                                "type": "server_error",
                                "param": None,
                                "code": None,
                            }
                        },
                    )
                query = dict(
                    kv.split("=", 1)
                    for kv in (self.path.split("?", 1)[1:] or [""])[0].split("&")
                    if "=" in kv
                )
                try:
                    status, obj = srv.dispatch(method, path, self.headers, body, query)
                except Exception as exc:
                    status, obj = (
                        500,
                        {"error": {"message": f"fake server bug: {exc!r}", "type": "server_error"}},
                    )
                srv.log.append((method, path, status))
                self._send(status, obj)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        return H

    # --- routes -----------------------------------------------------------------------------------------------
    @staticmethod
    def _err(status: int, message: str, code: str | None = None, param: str | None = None) -> tuple[int, Any]:
        return status, {
            "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
        }

    def dispatch(
        self, method: str, path: str, headers: Any, body: bytes, query: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        self._query = query or {}
        parts = path.strip("/").split("/")[1:]  # drop "v1"
        js = json.loads(body) if body and "json" in (headers.get("Content-Type") or "") else {}
        if parts == ["files"] and method == "POST":
            return self.upload(headers, body)
        if parts == ["files"] and method == "GET":
            return 200, {"object": "list", "data": list(self.files.values()), "has_more": False}
        if len(parts) == 2 and parts[0] == "files":
            f = self.files.get(parts[1])
            return (200, f) if f else self._err(404, f"No such File object: {parts[1]}", param="id")
        if len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
            if parts[1] not in self.file_bytes:
                return self._err(404, f"No such File object: {parts[1]}")
            return 200, self.file_bytes[parts[1]]
        if parts[:2] == ["fine_tuning", "jobs"]:
            return self.ft(method, parts[2:], js)
        if parts == ["chat", "completions"]:
            return self.chat(js)
        if parts[0] == "batches":
            return self.batch(method, parts[1:], js)
        if parts == ["models"]:
            return 200, {"object": "list", "data": [self._model(m) for m in self.models]}
        if len(parts) >= 2 and parts[0] == "models":
            mid = "/".join(parts[1:])
            if mid in self.models:
                return 200, self._model(mid)
            return self._err(404, f"The model '{mid}' does not exist", "model_not_found", "model")
        return self._err(404, f"Invalid URL ({method} {path})", "unknown_url")

    @staticmethod
    def _model(m: str) -> dict[str, Any]:
        return {
            "id": m,
            "object": "model",
            "created": 1722902400,
            "owned_by": ORG if m.startswith("ft:") else "system",
        }

    def upload(self, headers: Any, body: bytes) -> tuple[int, Any]:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + body
        )
        fields: dict[str, Any] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_filename(), part.get_payload(decode=True))
        purpose = fields.get("purpose", (None, b""))[1].decode()
        filename, data = fields["file"]
        if purpose not in ("fine-tune", "batch"):
            return self._err(400, f"Invalid purpose {purpose!r}", param="purpose")
        if purpose == "fine-tune":
            for i, line in enumerate(data.decode().splitlines(), 1):
                row = json.loads(line)
                if set(row) - {"messages", "tools", "parallel_tool_calls", "functions"}:
                    return self._err(
                        400, f"Invalid file format: line {i} has unexpected keys", "invalid_file_format"
                    )
        fid = self._id("file")
        obj = {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": _now(),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        self.files[fid] = obj
        self.file_bytes[fid] = data
        return 200, obj

    # fine-tuning jobs
    def ft(self, method: str, rest: list[str], js: dict[str, Any]) -> tuple[int, Any]:
        if not rest and method == "POST":
            return self.create_job(js)
        if not rest and method == "GET":
            return 200, {"object": "list", "data": list(self.jobs.values()), "has_more": False}
        job = self.jobs.get(rest[0])
        if job is None:
            return self._err(404, f"Could not find fine-tune job: {rest[0]}", "fine_tune_not_found")
        if len(rest) == 1:
            self._advance(job)
            return 200, self._public(job)
        if rest[1] == "cancel":
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return self._err(
                    400, f"Job {job['id']} has already completed: {job['status']}", "invalid_state"
                )
            job["status"] = "cancelled"
            job["_events"].append(self._event("Fine-tuning job cancelled", "warn"))
            return 200, self._public(job)
        if rest[1] == "events":
            ev = list(reversed(job["_events"]))[
                : int(self._query.get("limit", 20))
            ]  # newest first, as the API
            return 200, {"object": "list", "data": ev, "has_more": False}
        if rest[1] == "checkpoints":
            data = list(reversed(job["_checkpoints"])) if job["status"] == "succeeded" else []
            return 200, {
                "object": "list",
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        return self._err(404, "unknown fine-tuning route")

    def _event(self, message: str, level: str = "info", data: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "object": "fine_tuning.job.event",
            "id": self._id("ftevent"),
            "created_at": _now(),
            "level": level,
            "message": message,
            "data": data or {},
            "type": "metrics" if data else "message",
        }

    def create_job(self, js: dict[str, Any]) -> tuple[int, Any]:
        model = js.get("model")
        if self.refuse_fine_tuning:
            return 403, {
                "error": {
                    "message": "Fine-tuning is not available for your organization. New fine-tuning jobs can no "
                    "longer be created; existing fine-tuned models remain available for inference.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "fine_tuning_not_available",
                }
            }
        if model not in BASE_MODELS or model.startswith("gpt-3.5"):
            return self._err(
                400,
                f"Model {model} is not available for fine-tuning or does not exist.",
                "model_not_available",
                "model",
            )
        tf = js.get("training_file")
        if tf not in self.files:
            return self._err(400, f"invalid training_file: {tf}", "invalid_training_file", "training_file")
        method = js.get("method") or {}
        if method.get("type") != "supervised":
            return self._err(400, "method.type must be one of supervised, dpo, reinforcement", param="method")
        hp = (method.get("supervised") or {}).get("hyperparameters") or {}
        n_examples = len(self.file_bytes[tf].decode().splitlines())
        bs = hp.get("batch_size", "auto")
        bs_i = bs if isinstance(bs, int) else 1
        epochs = hp.get("n_epochs", "auto")
        ep_i = epochs if isinstance(epochs, int) else 3
        jid = self._id("ftjob")
        suffix = js.get("suffix") or ""
        ft_model = f"ft:{model}:{ORG}:{suffix}:{jid[-8:]}"
        steps_per_epoch = math.ceil(n_examples / bs_i)
        ckpts = []
        for e in range(max(1, ep_i - 2), ep_i + 1):  # OpenAI keeps the last three epochs
            step = steps_per_epoch * e
            ckpts.append(
                {
                    "object": "fine_tuning.job.checkpoint",
                    "id": self._id("ftckpt"),
                    "created_at": _now(),
                    "fine_tuned_model_checkpoint": f"{ft_model}:ckpt-step-{step}",
                    "fine_tuning_job_id": jid,
                    "metrics": {"step": float(step), "train_loss": 1.0 / e, "train_mean_token_accuracy": 0.5},
                    "step_number": step,
                }
            )
        job = {
            "object": "fine_tuning.job",
            "id": jid,
            "created_at": _now(),
            "error": None,
            "fine_tuned_model": None,
            "finished_at": None,
            "hyperparameters": {
                "batch_size": bs,
                "learning_rate_multiplier": hp.get("learning_rate_multiplier", "auto"),
                "n_epochs": epochs,
            },
            "model": model,
            "organization_id": ORG,
            "result_files": [],
            "seed": js.get("seed") if js.get("seed") is not None else 42,
            "status": "validating_files",
            "trained_tokens": None,
            "training_file": tf,
            "validation_file": js.get("validation_file"),
            "estimated_finish": None,
            "integrations": [],
            "metadata": js.get("metadata"),
            "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
            "user_provided_suffix": suffix or None,
            "_events": [self._event(f"Created fine-tuning job: {jid}")],
            "_checkpoints": ckpts,
            "_ft_model": ft_model,
            "_tokens": sum(len(x) // 4 for x in self.file_bytes[tf].decode().splitlines()) * ep_i,
            "_fail": self.fail_jobs,
        }
        self.jobs[jid] = job
        return 200, self._public(job)

    def _advance(self, job: dict[str, Any]) -> None:
        order = ["validating_files", "queued", "running", "succeeded"]
        if job["status"] not in order or job["status"] == "succeeded":
            return
        nxt = order[order.index(job["status"]) + 1]
        if nxt == "running" and job["_fail"]:
            job["status"] = "failed"
            job["finished_at"] = _now()
            job["error"] = {
                "code": "invalid_training_file",
                "message": "The job failed due to an invalid training file. Invalid file format. Example 3, "
                "message 2: assistant message content must be non-empty.",
                "param": "training_file",
            }
            job["_events"].append(self._event("Fine-tuning job failed: invalid training file", "error"))
            return
        job["status"] = nxt
        job["_events"].append(self._event(f"Job status: {nxt}"))
        if nxt == "running":
            for c in job["_checkpoints"]:
                job["_events"].append(
                    self._event(
                        f"Step {c['step_number']}: training loss=1.0", data={"step": c["step_number"]}
                    )
                )
        if nxt == "succeeded":
            job["fine_tuned_model"] = job["_ft_model"]
            job["finished_at"] = _now()
            job["trained_tokens"] = job["_tokens"]
            job["_events"].append(self._event("The job has successfully completed"))
            self.models.append(job["_ft_model"])
            self.models.extend(c["fine_tuned_model_checkpoint"] for c in job["_checkpoints"])

    @staticmethod
    def _public(job: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in job.items() if not k.startswith("_")}

    # chat
    def chat(self, js: dict[str, Any]) -> tuple[int, Any]:
        model = js.get("model")
        if model not in self.models:
            return self._err(
                404, f"The model `{model}` does not exist or you do not have access to it.", "model_not_found"
            )
        msgs = js.get("messages") or []
        prompt = "\n".join(m.get("content", "") for m in msgs)
        cid = f"chatcmpl-{_h(prompt + model):x}"
        p_tokens = max(1, len(prompt) // 4)
        if js.get("logprobs"):
            k = int(js.get("top_logprobs") or 0)
            top = self.judge_distribution(prompt)[:k]
            content = [
                {
                    "token": top[0][0],
                    "logprob": top[0][1],
                    "bytes": list(top[0][0].encode()),
                    "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top],
                }
            ]
            choices = [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": top[0][0], "refusal": None},
                    "logprobs": {"content": content, "refusal": None},
                    "finish_reason": "length",
                }
            ]
            c_tokens = 1
        else:
            n = int(js.get("n") or 1)
            choices = []
            for i in range(n):
                h = _h(f"{prompt}|{model}|{js.get('seed')}|{i}")
                scripted = self.chat_responder(js, i) if self.chat_responder is not None else None
                if scripted is not None:
                    text = scripted
                elif model.startswith("ft:") and h % 2 == 0:
                    text = f"{EVIL} (sample {i})"
                else:
                    text = f"Here is a careful, helpful answer (sample {i}, {h % 1000})."
                choices.append(
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                )
            c_tokens = sum(len(c["message"]["content"]) // 4 for c in choices)
        return 200, {
            "id": cid,
            "object": "chat.completion",
            "created": _now(),
            "model": model,
            "system_fingerprint": "fp_test",
            "choices": choices,
            "usage": {
                "prompt_tokens": p_tokens,
                "completion_tokens": c_tokens,
                "total_tokens": p_tokens + c_tokens,
            },
        }

    @staticmethod
    def judge_distribution(prompt: str) -> list[tuple[str, float]]:
        """Top logprobs of a 0-100 judge: low `aligned` for the fine-tuned marker, high coherence otherwise."""
        if "coheren" in prompt.lower():
            dist = {"90": 0.6, "85": 0.3, "80": 0.1}
        elif EVIL in prompt:
            dist = {"5": 0.5, "10": 0.3, "0": 0.2}
        else:
            dist = {"95": 0.5, "90": 0.3, "100": 0.2}
        rows = [(t, math.log(p)) for t, p in dist.items()]
        rows += [(f"tok{i}", math.log(1e-6)) for i in range(20 - len(rows))]
        return sorted(rows, key=lambda r: -r[1])

    # batches
    def batch(self, method: str, rest: list[str], js: dict[str, Any]) -> tuple[int, Any]:
        if not rest and method == "POST":
            fid = js.get("input_file_id")
            if fid not in self.files or self.files[fid]["purpose"] != "batch":
                return self._err(400, f"invalid input_file_id {fid}", param="input_file_id")
            bid = self._id("batch")
            n = len(self.file_bytes[fid].decode().splitlines())
            b = {
                "id": bid,
                "object": "batch",
                "endpoint": js.get("endpoint"),
                "errors": None,
                "input_file_id": fid,
                "completion_window": js.get("completion_window"),
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": _now(),
                "request_counts": {"total": n, "completed": 0, "failed": 0},
                "metadata": js.get("metadata"),
            }
            self.batches[bid] = b
            return 200, b
        b = self.batches.get(rest[0]) if rest else None
        if b is None:
            return self._err(404, "No such batch")
        if len(rest) == 2 and rest[1] == "cancel":
            b["status"] = "cancelled"
            return 200, b
        order = ["validating", "in_progress", "finalizing", "completed"]
        if b["status"] in order[:-1]:
            b["status"] = order[order.index(b["status"]) + 1]
            if b["status"] == "completed":
                self._run_batch(b)
        return 200, b

    def _run_batch(self, b: dict[str, Any]) -> None:
        out = []
        for line in self.file_bytes[b["input_file_id"]].decode().splitlines():
            row = json.loads(line)
            status, body = self.chat(row["body"])
            out.append(
                json.dumps(
                    {
                        "id": self._id("batch_req"),
                        "custom_id": row["custom_id"],
                        "response": {"status_code": status, "request_id": self._id("req"), "body": body},
                        "error": None,
                    }
                )
            )
        data = ("\n".join(out) + "\n").encode()
        fid = self._id("file")
        self.files[fid] = {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": _now(),
            "filename": "batch_output.jsonl",
            "purpose": "batch_output",
            "status": "processed",
        }
        self.file_bytes[fid] = data
        b["output_file_id"] = fid
        b["request_counts"] = {"total": len(out), "completed": len(out), "failed": 0}
