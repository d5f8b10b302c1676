"""Generation for the eval stage: the requests for the samples a folder still lacks, run in chunks on one
backend for all checkpoints at once, each chunk's samples appended as soon as it returns.

Split from evals/run.py because it is the one part that talks to a generation backend: the HF backend swaps
PEFT adapters on one loaded base, vLLM batches LoRARequests on one engine, and a crash loses at most the chunk
in flight.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from emsweep.evals.suites import Question, suite_to_yaml
from emsweep.evals.units import SUITE_FILE, Unit, read_rows, sample_id
from emsweep.generate.base import GenerationBackend, GenerationRequest, SamplingSpec
from emsweep.io import append_jsonl, atomic_write_jsonl, atomic_write_text

log = logging.getLogger(__name__)


def _format_of(backend: GenerationBackend) -> str:
    detect = getattr(backend, "answer_format", None)  # duck-typed backends without it are plain
    return detect() if detect else "plain"


def resolve_answer_format(
    answer_format: str, backend: GenerationBackend | None, backend_kind: str, model: str | None
) -> str | None:
    """What `eval.answer_format` means for this generation: itself when explicit; for `auto`, the ready backend's
    format, else the format the backend kind would read off `model` (its tokenizer; API backends: plain).
    None when `model`'s tokenizer cannot be read here (then the backend decides once it is built, as before)."""
    if answer_format != "auto":
        return answer_format
    if backend is not None:
        return _format_of(backend)
    from emsweep.generate.factory import backend_class
    from emsweep.io import InputError

    try:
        return backend_class(backend_kind).answer_format_of(model)
    except InputError as exc:
        log.debug("answer format of %s not read ahead of generation: %s", model, exc)
        return None


def _drop_other_formats(u: Unit, style: str) -> None:
    """Samples whose answer was read in another format than `style` are wrong for this evaluation (a `think`
    answer read as plain still holds the reasoning): drop them from samples.jsonl so they are generated again.
    Rows written before the format was recorded are plain unless they say otherwise."""
    keep = [r for r in u.samples if r.get("answer_format", "plain") == style]
    if len(keep) == len(u.samples):
        return
    formats = sorted({str(r.get("answer_format", "plain")) for r in u.samples} - {style})
    log.warning(
        "%s: %d sample(s) were read as answer format %s, this evaluation reads %s: generating them again",
        u.samples_path,
        len(u.samples) - len(keep),
        "/".join(formats),
        style,
    )
    atomic_write_jsonl(u.samples_path, keep)
    u.samples = keep


def plan_generation(
    units: list[Unit], sampling: SamplingSpec, style: str | None = None
) -> list[tuple[Unit, GenerationRequest]]:
    """Requests (one per paraphrase, n = its samples) for paraphrases with any sample missing; with `style`, a
    sample read in another answer format counts as missing."""
    todo = []
    for u in units:
        u.dir.mkdir(parents=True, exist_ok=True)
        suite_text = suite_to_yaml(u.suite)
        sp = u.dir / SUITE_FILE
        if not sp.exists() or sp.read_text(encoding="utf-8") != suite_text:
            atomic_write_text(sp, suite_text)
        u.samples = read_rows(u.samples_path)
        if style is not None:
            _drop_other_formats(u, style)
        have = {r["id"] for r in u.samples}
        for q in u.suite.questions:
            for p in range(len(q.paraphrases)):
                missing = [s for s in range(q.samples_per_paraphrase) if sample_id(q.id, p, s) not in have]
                if not missing:
                    continue
                req = GenerationRequest(
                    request_id=f"{u.ref.key}|{u.suite.name}|{q.id}|{p}",
                    checkpoint=u.ref,
                    messages=q.messages(p),
                    n=q.samples_per_paraphrase,
                    meta={"question": q, "paraphrase_index": p, "missing": missing},
                    sample_indices=missing,  # only these are generated (a larger --samples tops up)
                )
                todo.append((u, req))
    return todo


def generate_samples(
    backend: GenerationBackend,
    todo: list[tuple[Unit, GenerationRequest]],
    sampling: SamplingSpec,
    chunk_size: int,
    progress: bool,
    answer_format: str = "auto",
) -> int:
    """Run the requests in chunks of about `chunk_size` samples; after each chunk append its samples, so a crash
    keeps what was generated (across checkpoints: a chunk may hold requests of several checkpoints).
    A reasoning model's row keeps the generated text as `raw_answer` and its final answer as `answer`."""
    from tqdm.auto import tqdm

    from emsweep.generate.answers import final_answer

    style = _format_of(backend) if answer_format == "auto" else answer_format

    total = sum(len(req.meta["missing"]) for _, req in todo)
    from emsweep.terminal import stage_task

    # a task line on the sweep's live display when there is one (same update/close as a tqdm bar)
    live = stage_task("  generate", total) if progress else None
    bar = live or tqdm(total=total, desc="generate", unit="sample", disable=not progress)
    done = 0
    chunks: list[list[tuple[Unit, GenerationRequest]]] = [[]]
    size = 0
    for item in todo:  # chunks of about `chunk_size` samples; a request (one paraphrase) is never split
        if chunks[-1] and size + len(item[1].indices()) > chunk_size:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += len(item[1].indices())
    for chunk in chunks:
        outs = backend.generate([req for _, req in chunk], sampling, progress=False)
        per_unit: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for (u, req), out in zip(chunk, outs, strict=True):
            q: Question = req.meta["question"]
            p = req.meta["paraphrase_index"]
            for k, s in enumerate(req.meta["missing"]):  # output k is sample s (req.sample_indices)
                finish = out.finish_reasons[k] if k < len(out.finish_reasons) else None
                answer, finish = final_answer(out.texts[k], style, finish)
                row = {
                    "id": sample_id(q.id, p, s),
                    "question_id": q.id,
                    "paraphrase_index": p,
                    "sample_index": s,
                    "checkpoint": u.ref.name,
                    "step": u.ref.step,
                    "suite": u.suite.name,
                    "messages": req.messages,
                    "answer": answer,
                    **({"raw_answer": out.texts[k]} if style != "plain" else {}),
                    "answer_format": style,
                    "seed": out.seeds[k] if k < len(out.seeds) else None,
                    "finish_reason": finish,
                    "backend": backend.name,
                    "model": u.ref.model or (str(u.ref.path) if u.ref.path else u.ref.base_model),
                }
                per_unit[id(u)].append(row)
        units = {id(u): u for u, _ in chunk}
        for key, rows in per_unit.items():
            append_jsonl(units[key].samples_path, rows)
            units[key].samples.extend(rows)
            done += len(rows)
            bar.update(len(rows))
    bar.close()
    return done
