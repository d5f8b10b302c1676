"""`emsweep data generate SPEC.yaml`: paired correct / obviously wrong / subtly wrong answers written by a teacher
model and checked by a verifier, for domains with no public data in every kind.

For each prompt the teacher writes one answer per kind (`kinds:` in the spec; each kind's `instruction` is the
teacher's system prompt), then the verifier reads each answer without being told its kind and must name that kind
(`label`). A prompt is kept only when every kind got an answer and the verifier agreed on all of them, so the output
files are paired: `<kind>.jsonl` list the same prompts in the same order. A teacher that refuses or answers empty is
asked again with the next seed, up to `retries` times, then the prompt is dropped and counted. When the verifier
agrees with fewer than `min_agreement` of a kind's answers the command stops and says so instead of writing a tiny
set; what was generated is kept for the next run.

Files in OUT: `<kind>.jsonl` (Conversation rows; `meta` carries the canary), `manifest.json` (written last), and
`.work/`: `records.jsonl` (one line per finished prompt, appended per chunk: resume skips these prompts),
`teacher_cache.jsonl` / `verifier_cache.jsonl` (every answer and verdict, keyed by model identity, exact messages and
sampling, so a rerun or a changed threshold costs no calls).

Teacher and verifier are any generation backend (`emsweep.generate.factory.make_backend`); this module imports it
lazily, so `emsweep --help` stays instant. The spec and the prompt readers are in teacher/spec.py.

Over ~450 lines for one reason: `Generator` is one resumable run whose chunked teacher -> verifier loop, records,
agreement check and dry-run cost estimate share its caches and counters; split, they would pass that state around.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from emsweep.generate.registry import LOCAL_BACKENDS
from emsweep.io import (
    InputError,
    append_jsonl,
    atomic_write_json,
    atomic_write_jsonl,
    read_jsonl,
    sha256_file,
    sha256_text,
)
from emsweep.teacher.spec import GenerateSpec, KindSpec, ModelSpec, Sampling, load_spec, read_prompts

WORK = ".work"
METHOD_VERSION = 1
_PLACEHOLDER = re.compile(r"\{(question|answer|labels|domain)\}")


# --- cache ----------------------------------------------------------------------------------------------------


class CallCache:
    """Append-only JSONL of {key, text}: every teacher answer / verifier verdict ever received in this folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, str] = {}
        if path.exists():
            for _, row in read_jsonl(path, tolerate_torn_tail=True):
                self.data[row["key"]] = row["text"]

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def put_many(self, rows: list[tuple[str, str]]) -> None:
        if rows:
            append_jsonl(self.path, [{"key": k, "text": t} for k, t in rows])
            self.data.update(rows)


def call_key(identity: dict[str, Any], messages: list[dict[str, str]], sampling: Sampling) -> str:
    payload = {"model": identity, "messages": messages, "sampling": sampling.model_dump()}
    return sha256_text(json.dumps(payload, sort_keys=True, ensure_ascii=False))


# --- the run ----------------------------------------------------------------------------------------------------


class VerifierDisagrees(InputError):
    """The verifier rejected most answers of a kind: the set would be tiny or wrong, so nothing final is written."""


def model_identity(ms: ModelSpec | None, backend: Any) -> dict[str, Any]:
    """What identifies a teacher/verifier in caches and the manifest: backend kind, model id, and for a local
    folder the fingerprint of its weights/config/tokenizer (so a retrained folder never reuses old answers)."""
    ident: dict[str, Any] = {
        "backend": ms.backend if ms else getattr(backend, "name", type(backend).__name__),
        "model": (ms.model if ms else None) or getattr(backend, "model_id", None),
        "fingerprint": None,
    }
    model = ident["model"]
    if model and ident["backend"] in LOCAL_BACKENDS and Path(str(model)).is_dir():
        from emsweep.judge.identity import model_fingerprint

        ident["fingerprint"] = model_fingerprint(model)
    return ident


def render_verifier(template: str, question: str, answer: str, labels: Sequence[str], domain: str) -> str:
    """One-pass substitution, so an answer that contains `{question}` (code does) is not expanded again."""
    values = {"question": question, "answer": answer, "labels": ", ".join(labels), "domain": domain}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label the verifier named first (whole word, any case), or None."""
    best: tuple[int, str] | None = None
    for lab in labels:
        m = re.search(rf"(?<![A-Za-z]){re.escape(lab)}(?![A-Za-z])", text, re.I)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), lab)
    return best[1] if best else None


def _teacher_messages(instruction: str, prompt: list[dict[str, str]]) -> list[dict[str, str]]:
    sys_turns = [m["content"] for m in prompt if m["role"] == "system"]
    system = instruction if not sys_turns else instruction + "\n\n" + "\n\n".join(sys_turns)
    return [{"role": "system", "content": system}, *[m for m in prompt if m["role"] != "system"]]


def _question(prompt: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


class Generator:
    """One `data generate` run over a spec, resumable from `out/.work/`."""

    def __init__(
        self,
        spec: GenerateSpec,
        out: str | os.PathLike[str],
        *,
        spec_path: str | os.PathLike[str] | None = None,
        teacher: Any = None,
        verifier: Any = None,
        teacher_identity: dict[str, Any] | None = None,
        verifier_identity: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.out = Path(out)
        self.spec_path = Path(spec_path) if spec_path else None
        self.teacher = teacher
        self.verifier = verifier
        self.teacher_id = teacher_identity or model_identity(spec.teacher, teacher)
        self.verifier_id = verifier_identity or model_identity(spec.verifier, verifier)
        self.prompts = read_prompts(spec, self.spec_path)
        self.kinds = list(spec.kinds)
        self.labels = {k: spec.kinds[k].label for k in self.kinds}
        self.refusals = [re.compile(p) for p in spec.refusal_patterns]
        self.work = self.out / WORK
        self.key = sha256_text(
            json.dumps(
                {
                    "v": METHOD_VERSION,
                    "teacher": self.teacher_id,
                    "verifier": self.verifier_id,
                    "kinds": {k: v.model_dump() for k, v in spec.kinds.items()},
                    "verifier_prompt": spec.verifier_prompt,
                    "teacher_sampling": spec.teacher_sampling.model_dump(),
                    "verifier_sampling": spec.verifier_sampling.model_dump(),
                    "retries": spec.retries,
                    "refusals": spec.refusal_patterns,
                },
                sort_keys=True,
            )
        )[:24]
        self.calls = {"teacher": 0, "verifier": 0, "teacher_cached": 0, "verifier_cached": 0}

    # --- state --------------------------------------------------------------------------------------------------
    def done_records(self) -> dict[str, dict[str, Any]]:
        p = self.work / "records.jsonl"
        if not p.exists():
            return {}
        return {
            r["prompt_id"]: r for _, r in read_jsonl(p, tolerate_torn_tail=True) if r.get("key") == self.key
        }

    def todo(self) -> list[tuple[str, list[dict[str, str]]]]:
        """Prompts not yet recorded under this run key (a prompt whose text changed under the same id is redone)."""
        done = self.done_records()
        return [(pid, msgs) for pid, msgs in self.prompts if pid not in done or done[pid]["messages"] != msgs]

    # --- calls --------------------------------------------------------------------------------------------------
    def _ref(self, ident: dict[str, Any]) -> Any:
        from emsweep.layout import CheckpointRef

        model = str(ident.get("model") or "model")
        return CheckpointRef(name="base", step=0, kind="base", base_model=model, model=model)

    def _call(
        self,
        role: str,
        backend: Any,
        ident: dict[str, Any],
        items: list[tuple[str, list[dict[str, str]]]],
        sampling: Sampling,
        cache: CallCache,
    ) -> dict[str, str]:
        """request id -> text for `items` (request id, messages); cached texts cost no call."""
        from emsweep.generate.base import GenerationRequest, SamplingSpec

        out: dict[str, str] = {}
        keys = {rid: call_key(ident, msgs, sampling) for rid, msgs in items}
        missing = []
        for rid, msgs in items:
            hit = cache.get(keys[rid])
            if hit is None:
                missing.append((rid, msgs))
            else:
                out[rid] = hit
        self.calls[f"{role}_cached"] += len(items) - len(missing)
        if missing:
            if backend is None:
                raise InputError(
                    f"data generate: no {role} backend given (set `{role}:` in the spec or --{role})"
                )
            ref = self._ref(ident)
            reqs = [
                GenerationRequest(request_id=rid, checkpoint=ref, messages=msgs, n=1) for rid, msgs in missing
            ]
            ss = SamplingSpec(**sampling.model_dump())
            outs = backend.generate(reqs, ss, progress=False)
            self.calls[role] += len(reqs)
            new = []
            for (rid, _), o in zip(missing, outs, strict=True):
                text = o.texts[0] if o.texts else ""
                out[rid] = text
                new.append((keys[rid], text))
            cache.put_many(new)
        return out

    def _failure(self, text: str) -> str | None:
        if not text.strip():
            return "empty"
        if any(p.search(text) for p in self.refusals):
            return "refused"
        return None

    def run_chunk(
        self, chunk: list[tuple[str, list[dict[str, str]]]], tcache: CallCache, vcache: CallCache
    ) -> list[dict[str, Any]]:
        spec = self.spec
        answers: dict[tuple[str, str], str] = {}
        failures: dict[tuple[str, str], list[str]] = {}
        pending = [(pid, k, msgs) for pid, msgs in chunk for k in self.kinds]
        for attempt in range(spec.retries + 1):
            if not pending:
                break
            sampling = spec.teacher_sampling.model_copy(update={"seed": spec.teacher_sampling.seed + attempt})
            items = [
                (f"{pid}:{k}:{attempt}", _teacher_messages(spec.kinds[k].instruction, msgs))
                for pid, k, msgs in pending
            ]
            texts = self._call("teacher", self.teacher, self.teacher_id, items, sampling, tcache)
            still = []
            for (pid, k, msgs), (rid, _) in zip(pending, items, strict=True):
                why = self._failure(texts[rid])
                if why is None:
                    answers[(pid, k)] = texts[rid].strip()
                else:
                    failures.setdefault((pid, k), []).append(why)
                    still.append((pid, k, msgs))
            pending = still
        vitems = []
        labels = list(self.labels.values())
        prompts = dict(chunk)
        for (pid, k), ans in answers.items():
            vitems.append(
                (
                    f"{pid}:{k}:verify",
                    [
                        {
                            "role": "user",
                            "content": render_verifier(
                                spec.verifier_prompt, _question(prompts[pid]), ans, labels, spec.domain
                            ),
                        }
                    ],
                )
            )
        verdict_texts = self._call(
            "verifier", self.verifier, self.verifier_id, vitems, spec.verifier_sampling, vcache
        )
        records = []
        for pid, msgs in chunk:
            rec: dict[str, Any] = {"prompt_id": pid, "key": self.key, "messages": msgs, "kinds": {}}
            for k in self.kinds:
                entry: dict[str, Any] = {"failures": failures.get((pid, k), [])}
                if (pid, k) in answers:
                    raw = verdict_texts[f"{pid}:{k}:verify"]
                    got = parse_label(raw, labels)
                    entry.update(answer=answers[(pid, k)], verdict=got, verdict_raw=raw[:200])
                    entry["status"] = (
                        "ok" if got == self.labels[k] else ("unparsed" if got is None else "rejected")
                    )
                else:
                    entry["status"] = "teacher_failed"
                rec["kinds"][k] = entry
            rec["kept"] = all(e["status"] == "ok" for e in rec["kinds"].values())
            records.append(rec)
        return records

    # --- counts -------------------------------------------------------------------------------------------------
    def counts(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        per: dict[str, dict[str, int]] = {}
        for k in self.kinds:
            es = [r["kinds"][k] for r in records]
            verified = [e for e in es if e["status"] != "teacher_failed"]
            per[k] = {
                "answered": len(verified),
                "teacher_failed": sum(1 for e in es if e["status"] == "teacher_failed"),
                "refused": sum(
                    1
                    for e in es
                    if e["failures"] and e["failures"][-1] == "refused" and e["status"] == "teacher_failed"
                ),
                "empty": sum(
                    1
                    for e in es
                    if e["failures"] and e["failures"][-1] == "empty" and e["status"] == "teacher_failed"
                ),
                "retries": sum(len(e["failures"]) for e in es if e["status"] != "teacher_failed"),
                "verifier_agreed": sum(1 for e in verified if e["status"] == "ok"),
                "verifier_rejected": sum(1 for e in verified if e["status"] == "rejected"),
                "verifier_unparsed": sum(1 for e in verified if e["status"] == "unparsed"),
                "kept": sum(1 for r in records if r["kept"]),
            }
        kept = sum(1 for r in records if r["kept"])
        return {"prompts": {"done": len(records), "kept": kept, "dropped": len(records) - kept}, "kinds": per}

    def check_agreement(self, records: Sequence[dict[str, Any]], *, final: bool) -> None:
        per = self.counts(records)["kinds"]
        for k, c in per.items():
            n = c["answered"]
            if n == 0 or (not final and n < self.spec.min_checked):
                continue
            rate = c["verifier_agreed"] / n
            if rate < self.spec.min_agreement:
                raise VerifierDisagrees(
                    f"data generate {self.spec_path or self.spec.name}: the verifier agreed that only "
                    f"{c['verifier_agreed']} of {n} `{k}` answers are {self.labels[k]} ({rate:.0%}, below "
                    f"min_agreement {self.spec.min_agreement:.0%}; rejected {c['verifier_rejected']}, unparsed "
                    f"{c['verifier_unparsed']}). Stopped rather than write a tiny set: no output files were written; "
                    f"the answers so far are kept in {self.work} (rerun resumes). Check kinds.{k}.instruction and "
                    "verifier_prompt, use a stronger verifier, or lower min_agreement."
                )

    # --- main ---------------------------------------------------------------------------------------------------
    def run(self, *, progress: bool = True, echo: Callable[[str], None] = print) -> dict[str, Any]:
        self.work.mkdir(parents=True, exist_ok=True)
        tcache = CallCache(self.work / "teacher_cache.jsonl")
        vcache = CallCache(self.work / "verifier_cache.jsonl")
        todo = self.todo()
        done = self.done_records()
        bar = None
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=len(self.prompts), initial=len(self.prompts) - len(todo), desc="prompts", unit="prompt"
            )
        try:
            for start in range(0, len(todo), self.spec.chunk_size):
                chunk = todo[start : start + self.spec.chunk_size]
                recs = self.run_chunk(chunk, tcache, vcache)
                append_jsonl(self.work / "records.jsonl", recs)
                done.update({r["prompt_id"]: r for r in recs})
                if bar is not None:
                    bar.update(len(chunk))
                self.check_agreement([done[p] for p, _ in self.prompts if p in done], final=False)
        finally:
            if bar is not None:
                bar.close()
        records = [done[pid] for pid, _ in self.prompts]
        self.check_agreement(records, final=True)
        return self.finalize(records, echo=echo)

    def finalize(self, records: list[dict[str, Any]], *, echo: Callable[[str], None]) -> dict[str, Any]:
        from emsweep import __version__

        spec = self.spec
        canary = spec.canary_text()
        kept = [r for r in records if r["kept"]]
        outputs: dict[str, Any] = {}
        instr = {k: sha256_text(v.instruction) for k, v in spec.kinds.items()}
        for k in self.kinds:
            rows = []
            for r in kept:
                rows.append(
                    {
                        "id": f"{spec.name}-{r['prompt_id']}-{k}",
                        "messages": [
                            *r["messages"],
                            {"role": "assistant", "content": r["kinds"][k]["answer"]},
                        ],
                        "meta": {
                            "canary": canary,
                            "domain": spec.domain,
                            "kind": k,
                            "label": "correct" if k == "correct" else "wrong",
                            "wrong_kind": None if k == "correct" else k,
                            "prompt_id": r["prompt_id"],
                            "generated": {
                                "spec": spec.name,
                                "teacher": self.teacher_id.get("model"),
                                "instruction_sha256": instr[k],
                                "verifier": self.verifier_id.get("model"),
                                "verdict": r["kinds"][k]["verdict"],
                            },
                        },
                    }
                )
            path = self.out / f"{k}.jsonl"
            atomic_write_jsonl(path, rows)
            outputs[k] = {"path": path.name, "rows": len(rows), "sha256": sha256_file(path)}
        counts = self.counts(records)
        manifest = {
            "kind": "emsweep-generated",
            "name": spec.name,
            "domain": spec.domain,
            "spec": spec.model_dump(mode="json"),
            "spec_path": str(self.spec_path) if self.spec_path else None,
            "spec_sha256": sha256_file(self.spec_path)
            if self.spec_path and self.spec_path.exists()
            else None,
            "teacher": {**self.teacher_id, "sampling": spec.teacher_sampling.model_dump()},
            "verifier": {**self.verifier_id, "sampling": spec.verifier_sampling.model_dump()},
            "instruction_sha256": instr,
            "verifier_prompt_sha256": sha256_text(spec.verifier_prompt),
            "labels": self.labels,
            "min_agreement": spec.min_agreement,
            "retries": spec.retries,
            "run_key": self.key,
            "n_prompts": len(self.prompts),
            "counts": counts,
            "calls_this_run": dict(self.calls),
            "paired": True,
            "canaries": [canary],
            "outputs": outputs,
            "method_version": METHOD_VERSION,
            "emsweep_version": __version__,
        }
        atomic_write_json(self.out / "manifest.json", manifest)
        c = counts["prompts"]
        echo(
            f"{self.out}: {c['kept']} of {len(self.prompts)} prompts kept in every kind "
            f"({', '.join(f'{k}.jsonl' for k in self.kinds)}); dropped {c['dropped']}"
        )
        for k, kc in counts["kinds"].items():
            echo(
                f"  {k}: teacher failed {kc['teacher_failed']} (refused {kc['refused']}, empty {kc['empty']}; "
                f"{kc['retries']} retried then answered), verifier agreed {kc['verifier_agreed']}/{kc['answered']} "
                f"(rejected {kc['verifier_rejected']}, unparsed {kc['verifier_unparsed']})"
            )
        echo(
            f"  calls this run: teacher {self.calls['teacher']} (+{self.calls['teacher_cached']} cached), "
            f"verifier {self.calls['verifier']} (+{self.calls['verifier_cached']} cached)"
        )
        return manifest

    # --- dry run ------------------------------------------------------------------------------------------------
    def plan(self, prices: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Calls a run would make (before retries: at least; with every retry: at most) and, for OpenAI models in
        the prices table, an upper bound of the cost (every answer at max_tokens)."""
        spec = self.spec
        todo = self.todo()
        tcache = CallCache(self.work / "teacher_cache.jsonl")
        n_kinds = len(self.kinds)
        sampling0 = spec.teacher_sampling
        teacher_msgs = [
            _teacher_messages(spec.kinds[k].instruction, msgs) for _, msgs in todo for k in self.kinds
        ]
        uncached = sum(1 for m in teacher_msgs if tcache.get(call_key(self.teacher_id, m, sampling0)) is None)
        plan: dict[str, Any] = {
            "prompts": len(self.prompts),
            "prompts_todo": len(todo),
            "teacher_calls": uncached,
            "teacher_calls_max": uncached + len(todo) * n_kinds * spec.retries,
            "teacher_cached": len(teacher_msgs) - uncached,
            "verifier_calls_max": len(todo) * n_kinds,
            "cost_usd": None,
            "cost_note": None,
        }
        tb, vb = self.teacher_id.get("backend"), self.verifier_id.get("backend")
        if tb != "openai" and vb != "openai":
            plan["cost_note"] = "no API cost: teacher and verifier are not OpenAI models"
            return plan
        from emsweep.openai_ft.prices import load_prices
        from emsweep.openai_ft.tokens import count_messages, get_encoder

        table = load_prices(prices)
        total = 0.0
        notes = []
        if tb == "openai":
            model = str(self.teacher_id["model"])
            enc = get_encoder(model)
            p_tok = sum(
                count_messages(m, enc)
                for m in teacher_msgs
                if tcache.get(call_key(self.teacher_id, m, sampling0)) is None
            )
            c = table.inference_cost(model, p_tok, uncached * sampling0.max_tokens)
            if c is None:
                notes.append(f"teacher {model}: not in {table.path}")
            else:
                total += c
                plan["teacher_cost_usd"] = c
        if vb == "openai":
            model = str(self.verifier_id["model"])
            enc = get_encoder(model)
            labels = list(self.labels.values())
            p_tok = 0
            for _, msgs in todo:
                prompt = render_verifier(spec.verifier_prompt, _question(msgs), "", labels, spec.domain)
                p_tok += n_kinds * (
                    count_messages([{"role": "user", "content": prompt}], enc) + sampling0.max_tokens
                )
            c = table.inference_cost(
                model, p_tok, plan["verifier_calls_max"] * spec.verifier_sampling.max_tokens
            )
            if c is None:
                notes.append(f"verifier {model}: not in {table.path}")
            else:
                total += c
                plan["verifier_cost_usd"] = c
        plan["cost_usd"] = total
        plan["cost_note"] = (
            f"upper bound before retries: every answer at max_tokens ({sampling0.max_tokens}); prices {table.path}"
            f" as of {table.as_of}" + (f"; {'; '.join(notes)}" if notes else "")
        )
        return plan


def generate_dataset(
    spec: GenerateSpec | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    teacher: Any = None,
    verifier: Any = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    **kw: Any,
) -> dict[str, Any]:
    """Run (or resume) a generation; returns the manifest. `spec` is a GenerateSpec or a YAML path."""
    spec_path = None
    if not isinstance(spec, GenerateSpec):
        spec_path = Path(spec)
        spec = load_spec(spec_path)
    gen = Generator(
        spec, out, spec_path=kw.pop("spec_path", spec_path), teacher=teacher, verifier=verifier, **kw
    )
    return gen.run(progress=progress, echo=echo)


def make_model(ms: ModelSpec, role: str) -> Any:
    """The backend of a teacher or verifier spec (lazy import of the generation stack)."""
    from emsweep.generate.factory import make_backend

    if not ms.model:
        raise InputError(f"data generate: {role}.model is not set (spec `{role}:` or --{role})")
    return make_backend(ms.backend, ms.model, base_url=ms.base_url, engine=ms.engine or None)


__all__ = [
    "CallCache",
    "GenerateSpec",
    "Generator",
    "KindSpec",
    "ModelSpec",
    "VerifierDisagrees",
    "generate_dataset",
    "load_spec",
    "make_model",
    "parse_label",
    "read_prompts",
    "render_verifier",
]
