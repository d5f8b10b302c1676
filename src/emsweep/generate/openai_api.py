"""Generation and judge backend for the OpenAI API and any OpenAI-compatible server (`vllm serve`, ...).

Why a thread pool and not asyncio: the SDK client is thread-safe, its own retry loop already honours `retry-after`
on 429/5xx, and a bounded pool is the concurrency limit that keeps us under the organisation's rate limits while
the SDK waits out the occasional 429.

The **Batch API** path (`use_batch=True`) writes all requests of one call into one JSONL, uploads it, submits a
batch (half the price), polls and collects. It is resumable: every batch is recorded in `<batch_dir>/batches.json`
under the sha256 of its JSONL, so a rerun of the same requests collects the existing batch instead of paying again.

The OpenAI key is read by the SDK from `OPENAI_API_KEY` only (plus optional `OPENAI_BASE_URL`, `OPENAI_ORG_ID`);
nothing here writes it anywhere, and error messages pass through `redact`.

Over ~450 lines because it is one backend class with the API's error translation and redaction, shared by the
generation backend and the OpenAI arm.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from emsweep.generate.base import (
    GenerationBackend,
    GenerationOutput,
    GenerationRequest,
    LogprobOutput,
    LogprobRequest,
    SamplingSpec,
    TokenLogprob,
    sample_seed,
)
from emsweep.io import InputError, atomic_write_json, atomic_write_text, sha256_text
from emsweep.layout import CheckpointRef

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
BATCH_MAX_REQUESTS = 50_000  # OpenAI's per-batch request limit
BATCH_ENDPOINT = "/v1/chat/completions"
# chat.completions.create parameters the SDK takes by name; anything else in a body (vLLM's `ignore_eos`, ...) goes
# through `extra_body`, so online and Batch requests carry the same JSON.
_SDK_PARAMS = frozenset(
    [
        "model",
        "messages",
        "n",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "seed",
        "logprobs",
        "top_logprobs",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "user",
        "metadata",
        "response_format",
    ]
)
_KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_\-*]{4,}")


class OpenAIArmError(InputError):
    """A failure the user must act on (bad key, refused fine-tuning, unknown model); printed without traceback."""


class BatchPendingError(OpenAIArmError):
    """A submitted batch has not finished within the wait; its id is recorded, rerun later to collect it."""


def redact(text: str) -> str:
    """Remove the API key (and anything that looks like its tail) from text we are about to write or print."""
    key = os.environ.get(API_KEY_ENV)
    if key:
        text = text.replace(key, "sk-***")
    # the API echoes a masked key ("sk-abc1***wxyz"); drop that too
    return _KEY_PATTERN.sub("sk-***", text)


def make_client(
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    max_retries: int = 6,
    timeout: float = 120.0,
) -> Any:
    """An `openai.OpenAI` client. The key comes from OPENAI_API_KEY; `api_key` is only for local
    OpenAI-compatible servers that need no secret (e.g. `vllm serve` with "EMPTY")."""
    import openai

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # the SDK's HTTP layer logs every request at INFO; keep progress output readable unless --verbose
        for name in ("httpx2", "httpx", "openai"):
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
    if api_key is None and not os.environ.get(API_KEY_ENV):
        url = base_url or os.environ.get("OPENAI_BASE_URL") or ""
        if url and "api.openai.com" not in url:
            api_key = "EMPTY"  # a local OpenAI-compatible server (vllm serve) that checks no key
    if api_key is None and not os.environ.get(API_KEY_ENV):
        raise OpenAIArmError(
            f"{API_KEY_ENV} is not set: export your OpenAI API key in the environment "
            "(emsweep never reads keys from files or the command line)"
        )
    kwargs: dict[str, Any] = {"max_retries": max_retries, "timeout": timeout}
    if api_key is not None:
        kwargs["api_key"] = api_key
    if base_url:
        kwargs["base_url"] = base_url
    return openai.OpenAI(**kwargs)


def translate_error(exc: BaseException, what: str) -> BaseException:
    """Map SDK errors onto messages that say what to fix (key, permission, model); others pass through."""
    import openai

    msg = redact(_error_message(exc))
    if isinstance(exc, openai.AuthenticationError):
        return OpenAIArmError(
            f"{what}: the API rejected the key (401: {msg}). Check that {API_KEY_ENV} holds a valid, unexpired "
            "key for this organisation/project."
        )
    if isinstance(exc, openai.PermissionDeniedError):
        return OpenAIArmError(f"{what}: permission denied (403: {msg})")
    if isinstance(exc, openai.NotFoundError):
        return OpenAIArmError(f"{what}: not found (404: {msg})")
    if isinstance(exc, openai.BadRequestError):
        return OpenAIArmError(f"{what}: request rejected (400: {msg})")
    if isinstance(exc, openai.RateLimitError):
        return OpenAIArmError(
            f"{what}: still rate-limited after the SDK's retries (429: {msg}); lower --concurrency or "
            "check the organisation's quota/billing"
        )
    if isinstance(exc, openai.APIConnectionError):
        return OpenAIArmError(f"{what}: cannot reach the API ({msg}); check OPENAI_BASE_URL / the network")
    return exc


def _error_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            code = err.get("code")
            return f"{err['message']}" + (f" [code: {code}]" if code else "")
    return str(exc)


class OpenAIChatBackend(GenerationBackend):
    """Chat completions on api.openai.com or any OpenAI-compatible `base_url`.

    The model of a request comes from its CheckpointRef via `model_for` (subclasses, e.g. a `vllm serve` backend,
    override it for LoRA adapters). `supports_token_ids` is False: the API gives top-20 logprobs of one token, so
    the judge uses Betley's single-token method.
    """

    name = "openai"
    supports_token_ids = False
    max_top_logprobs = 20
    accepts_ignore_eos = False  # vLLM's server takes `ignore_eos` (benchmarks); api.openai.com does not

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: Any = None,
        concurrency: int = 8,
        max_retries: int = 6,
        timeout: float = 120.0,
        judge_temperature: float = 0.0,
        judge_seed: int | None = 0,
        use_batch: bool = False,
        batch_dir: str | os.PathLike[str] | None = None,
        batch_poll_s: float = 30.0,
        batch_wait_s: float | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        self.default_model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        self.client = client or make_client(
            base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=timeout
        )
        self.concurrency = max(1, int(concurrency))
        self.judge_temperature = judge_temperature
        self.judge_seed = judge_seed
        self.use_batch = use_batch
        if use_batch and batch_dir is None:
            raise InputError("the Batch API path needs a batch_dir to record batch ids for resuming")
        self.batch_dir = Path(batch_dir) if batch_dir is not None else None
        self.batch_poll_s = batch_poll_s
        self.batch_wait_s = batch_wait_s
        self.extra_body = dict(extra_body or {})
        self._usage: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    # --- identity ---------------------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.default_model or self.name

    def model_for(self, ref: CheckpointRef | None) -> str:
        """Remote model name of a checkpoint: `model` for kind api, the base model id for kind base."""
        if ref is None:
            if not self.default_model:
                raise InputError(f"{self.name} backend: no model given")
            return self.default_model
        if ref.kind == "api":
            if not ref.model:
                raise InputError(f"checkpoint {ref.key}: kind 'api' needs a `model` id")
            return ref.model
        if ref.kind == "base":
            return ref.model or ref.base_model
        raise InputError(
            f"checkpoint {ref.key} is a {ref.kind} checkpoint on disk; the {self.name} backend serves only API "
            "models (kind 'api') and base model ids; use the hf or vllm backend for local weights"
        )

    # --- usage ------------------------------------------------------------------------------------------------
    def _count(self, model: str, usage: Any, *, batch: bool = False) -> None:
        if usage is None:
            return
        get = usage.get if isinstance(usage, dict) else lambda k, d=0: getattr(usage, k, d)
        with self._lock:
            row = self._usage.setdefault(
                model, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "batch_requests": 0}
            )
            row["requests"] += 1
            row["batch_requests"] += int(batch)
            row["prompt_tokens"] += int(get("prompt_tokens", 0) or 0)
            row["completion_tokens"] += int(get("completion_tokens", 0) or 0)

    def usage_summary(self) -> dict[str, dict[str, int]]:
        """Tokens and requests per model so far (the CLI turns these into dollars with the prices table)."""
        with self._lock:
            return {k: dict(v) for k, v in self._usage.items()}

    # --- request bodies ---------------------------------------------------------------------------------------
    def _generation_body(self, req: GenerationRequest, sampling: SamplingSpec) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_for(req.checkpoint),
            "messages": req.messages,
            "n": len(req.indices()),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            # samples 0.. use the run's seed; a top-up of samples j.. gets its own, so it does not repeat them
            "seed": sampling.seed
            if not req.sample_indices or req.sample_indices[0] == 0
            else sample_seed(sampling.seed, req.request_id, req.sample_indices[0]),
        }
        if sampling.ignore_eos:
            if not self.accepts_ignore_eos:
                raise InputError(f"{self.name} backend: ignore_eos is not supported by this server")
            body["ignore_eos"] = True
        body.update(self.extra_body)
        return body

    def _logprob_body(self, req: LogprobRequest) -> dict[str, Any]:
        if req.continuation:
            raise InputError(
                f"{self.name} backend cannot continue after given token ids (supports_token_ids=False)"
            )
        body: dict[str, Any] = {
            "model": self.model_for(req.checkpoint),
            "messages": req.messages,
            "max_tokens": 1,
            "temperature": self.judge_temperature,
            "logprobs": True,
            "top_logprobs": min(req.top_k, self.max_top_logprobs),
        }
        if self.judge_seed is not None:
            body["seed"] = self.judge_seed
        body.update(self.extra_body)
        return body

    # --- parsing ----------------------------------------------------------------------------------------------
    @staticmethod
    def _parse_generation(req: GenerationRequest, data: dict[str, Any], seed: int) -> GenerationOutput:
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        texts = [(c.get("message") or {}).get("content") or "" for c in choices]
        completion = (data.get("usage") or {}).get("completion_tokens")
        per = [int(completion / len(texts))] * len(texts) if completion and texts else []
        return GenerationOutput(
            request_id=req.request_id,
            checkpoint=req.checkpoint.name if req.checkpoint else "",
            texts=texts,
            seeds=[seed] * len(texts),
            finish_reasons=[c.get("finish_reason") or "" for c in choices],
            num_output_tokens=per,
        )

    @staticmethod
    def _parse_logprobs(req: LogprobRequest, data: dict[str, Any]) -> LogprobOutput:
        choices = data.get("choices") or []
        content = ((choices[0].get("logprobs") or {}).get("content") or []) if choices else []
        top: list[TokenLogprob] = []
        if content:
            for t in content[0].get("top_logprobs") or []:
                top.append(TokenLogprob(token=t["token"], token_id=None, logprob=float(t["logprob"])))
        top.sort(key=lambda t: t.logprob, reverse=True)
        return LogprobOutput(request_id=req.request_id, top=top)

    # --- online path ------------------------------------------------------------------------------------------
    def _create(self, body: dict[str, Any], what: str) -> dict[str, Any]:
        known = {k: v for k, v in body.items() if k in _SDK_PARAMS}
        extra = {k: v for k, v in body.items() if k not in _SDK_PARAMS}
        try:
            resp = self.client.chat.completions.create(**known, **({"extra_body": extra} if extra else {}))
        except Exception as exc:
            raise translate_error(exc, what) from exc
        data = resp.model_dump() if hasattr(resp, "model_dump") else dict(resp)
        self._count(body["model"], data.get("usage"))
        return data

    def _run_pool(self, n: int, fn: Callable[[int], Any], desc: str, progress: bool) -> list[Any]:
        results: list[Any] = [None] * n
        bar = None
        if progress and n:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc=desc, unit="req")
        try:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, max(n, 1))) as pool:
                futures = {pool.submit(fn, i): i for i in range(n)}
                for fut in futures:
                    i = futures[fut]
                    results[i] = fut.result()
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return results

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingSpec, *, progress: bool = True
    ) -> list[GenerationOutput]:
        bodies = [self._generation_body(r, sampling) for r in requests]
        if self.use_batch:
            datas = self._batch(bodies, progress=progress, kind="generate")
        else:
            datas = self._run_pool(
                len(bodies),
                lambda i: self._create(bodies[i], f"generation for {requests[i].request_id}"),
                f"{self.name} generate",
                progress,
            )
        return [
            self._parse_generation(r, d, b["seed"]) for r, d, b in zip(requests, datas, bodies, strict=True)
        ]

    def top_logprobs(
        self, requests: Sequence[LogprobRequest], *, progress: bool = True
    ) -> list[LogprobOutput]:
        bodies = [self._logprob_body(r) for r in requests]
        if self.use_batch:
            datas = self._batch(bodies, progress=progress, kind="logprobs")
        else:
            datas = self._run_pool(
                len(bodies),
                lambda i: self._create(bodies[i], f"logprobs for {requests[i].request_id}"),
                f"{self.name} logprobs",
                progress,
            )
        return [self._parse_logprobs(r, d) for r, d in zip(requests, datas, strict=True)]

    # --- Batch API path ---------------------------------------------------------------------------------------
    @property
    def _batch_ledger_path(self) -> Path:
        assert self.batch_dir is not None
        return self.batch_dir / "batches.json"

    def _batch_ledger(self) -> dict[str, Any]:
        p = self._batch_ledger_path
        return json.loads(p.read_text()) if p.exists() else {}

    def _batch_record(self, key: str, **fields: Any) -> None:
        with self._lock:
            ledger = self._batch_ledger()
            ledger.setdefault(key, {}).update(fields)
            atomic_write_json(self._batch_ledger_path, ledger)

    def _batch(self, bodies: list[dict[str, Any]], *, progress: bool, kind: str) -> list[dict[str, Any]]:
        """Run `bodies` through the Batch API (chunks of 50k requests), resumably; results in input order."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(bodies), BATCH_MAX_REQUESTS):
            out.extend(self._batch_chunk(bodies[start : start + BATCH_MAX_REQUESTS], progress, kind))
        return out

    def _batch_chunk(self, bodies: list[dict[str, Any]], progress: bool, kind: str) -> list[dict[str, Any]]:
        lines = [
            json.dumps(
                {"custom_id": f"r{i}", "method": "POST", "url": BATCH_ENDPOINT, "body": body},
                sort_keys=True,
                ensure_ascii=False,
            )
            for i, body in enumerate(bodies)
        ]
        text = "\n".join(lines) + "\n"
        key = sha256_text(text)[:24]
        assert self.batch_dir is not None
        input_path = self.batch_dir / f"{key}.input.jsonl"
        output_path = self.batch_dir / f"{key}.output.jsonl"
        if output_path.exists():  # collected on an earlier run: costs nothing
            return self._read_batch_output(output_path, len(bodies), count=False)
        rec = self._batch_ledger().get(key, {})
        if not input_path.exists():
            atomic_write_text(input_path, text)
        try:
            if not rec.get("input_file_id"):
                with open(input_path, "rb") as fh:
                    f = self.client.files.create(file=(input_path.name, fh), purpose="batch")
                self._batch_record(key, input_file_id=f.id, n_requests=len(bodies), kind=kind)
                rec = self._batch_ledger()[key]
            if not rec.get("batch_id"):
                b = self.client.batches.create(
                    input_file_id=rec["input_file_id"],
                    endpoint=BATCH_ENDPOINT,
                    completion_window="24h",
                    metadata={"emsweep": kind},
                )
                self._batch_record(key, batch_id=b.id, status=b.status, submitted_at=int(time.time()))
                rec = self._batch_ledger()[key]
                log.info("submitted batch %s (%d requests)", b.id, len(bodies))
            else:
                log.info("resuming batch %s", rec["batch_id"])
            batch = self._wait_batch(rec["batch_id"], key, len(bodies), progress)
            if batch.status != "completed":
                raise OpenAIArmError(
                    f"batch {batch.id} ended with status {batch.status!r}: {redact(str(batch.errors))}; "
                    f"delete its entry in {self._batch_ledger_path} to resubmit"
                )
            content = self.client.files.content(batch.output_file_id).text if batch.output_file_id else ""
        except OpenAIArmError:
            raise
        except Exception as exc:
            raise translate_error(exc, "batch") from exc
        atomic_write_text(output_path, content)
        self._batch_record(key, status="collected", output_file_id=batch.output_file_id)
        return self._read_batch_output(output_path, len(bodies), count=True)

    def _wait_batch(self, batch_id: str, key: str, n: int, progress: bool) -> Any:
        t0 = time.monotonic()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc=f"batch {batch_id}", unit="req")
        try:
            while True:
                batch = self.client.batches.retrieve(batch_id)
                self._batch_record(key, status=batch.status)
                counts = getattr(batch, "request_counts", None)
                if bar is not None and counts is not None:
                    bar.n = int(counts.completed or 0) + int(counts.failed or 0)
                    bar.refresh()
                if batch.status in ("completed", "failed", "expired", "cancelled"):
                    return batch
                if self.batch_wait_s is not None and time.monotonic() - t0 > self.batch_wait_s:
                    raise BatchPendingError(
                        f"batch {batch_id} is still {batch.status!r}; its id is recorded in "
                        f"{self._batch_ledger_path}: rerun the same command later to collect it (no resubmission)"
                    )
                time.sleep(self.batch_poll_s)
        finally:
            if bar is not None:
                bar.close()

    def _read_batch_output(self, path: Path, n: int, *, count: bool) -> list[dict[str, Any]]:
        by_id: dict[str, dict[str, Any]] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            resp = row.get("response") or {}
            if row.get("error") or resp.get("status_code", 200) != 200:
                raise OpenAIArmError(
                    f"{path}: request {row.get('custom_id')} failed in the batch: "
                    f"{redact(json.dumps(row.get('error') or resp.get('body')))}"
                )
            body = resp.get("body") or {}
            by_id[row["custom_id"]] = body
        missing = [f"r{i}" for i in range(n) if f"r{i}" not in by_id]
        if missing:
            raise OpenAIArmError(
                f"{path}: batch output lacks {len(missing)} of {n} requests (e.g. {missing[0]})"
            )
        datas = [by_id[f"r{i}"] for i in range(n)]
        for d in datas if count else []:
            self._count(d.get("model", "?"), d.get("usage"), batch=True)
        return datas

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if callable(close):
            close()
