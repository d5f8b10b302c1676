"""Hugging Face transformers backend: batched, left-padded generation and next-token log-probs on CPU or one GPU.

One base model is loaded once. LoRA checkpoints are PEFT adapters loaded onto that one base
(`PeftModel.load_adapter` / `set_adapter`; adapters are disabled for base requests), so a sweep's checkpoints never
reload the base. Full-weight checkpoints are loaded in turn, each freeing the previous one.

Sampling: the chat template (add_generation_prompt=True) is rendered as text and tokenised without extra special
tokens (as vLLM's chat entry point does). Every sample has its own `torch.Generator` seeded with
`sample_seed(spec.seed, request_id, sample_index)`, and the token of each row is drawn with that row's generator
(temperature, then top-p, as transformers' warpers do), so a sample's text depends on its seed and prompt, not on
which other requests share its batch (up to float rounding differences that padding can cause). Temperature 0 is
greedy. The model's own `generation_config` sampling defaults (e.g. Qwen's top_k=20) are NOT applied: the papers'
protocol is exactly what `SamplingSpec` says.

Over ~450 lines because it is one backend class (generation, logprobs, adapter swapping) over one loaded model,
as each backend in generate/ is.
"""

from __future__ import annotations

import gc
import json
from collections import OrderedDict
from collections.abc import Sequence
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
from emsweep.io import InputError
from emsweep.layout import CheckpointRef, detect_checkpoint_kind


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return False


class HFBackend(GenerationBackend):
    """transformers + PEFT backend. See the module docstring for the sampling and checkpoint rules."""

    name = "hf"
    supports_token_ids = True

    def __init__(
        self,
        base_model: str,
        *,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int = 16,
        seed: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        from transformers import AutoTokenizer

        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.base_model = str(base_model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.seed = seed  # default for SamplingSpec-less uses; SamplingSpec.seed decides sample seeds
        self.trust_remote_code = trust_remote_code
        self._dtype_arg = dtype
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                self.base_model, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load the tokenizer of base model {self.base_model!r}: {exc}") from exc
        if self.tokenizer.chat_template is None:
            raise InputError(
                f"base model {self.base_model!r} has no chat template; use an instruct/chat model or add "
                f"`chat_template` to its tokenizer_config.json"
            )
        self.tokenizer.padding_side = "left"
        self._pad_id = self.tokenizer.pad_token_id
        if self._pad_id is None:
            self._pad_id = self.tokenizer.eos_token_id
        self._base: Any = None  # the base model, or the PeftModel wrapping it once an adapter is loaded
        self._peft = False
        self._adapters: dict[str, str] = {}  # resolved adapter path -> PEFT adapter name
        self._full: Any = None
        self._full_path: str | None = None
        self._eos_ids: list[int] = []
        self._prompt_cache: OrderedDict[str, list[int]] = OrderedDict()
        self._token_texts: list[str] | None = None
        self._logits_to_keep = True
        self.share_prompt_cache = (
            True  # continue one prompt's KV cache for all its continuations (judge tries)
        )

    # ---- models --------------------------------------------------------------------------------------------
    def _torch_dtype(self) -> Any:
        import torch

        if self._dtype_arg == "auto":
            # "auto" = the dtype the weights are stored in on GPU; CPU kernels are fastest and exact in float32
            return "auto" if self.device.startswith("cuda") else torch.float32
        try:
            return getattr(torch, str(self._dtype_arg))
        except AttributeError as exc:
            raise InputError(
                f"unknown dtype {self._dtype_arg!r}; use auto, float32, bfloat16, float16"
            ) from exc

    def _load(self, path: str) -> Any:
        from transformers import AutoModelForCausalLM, GenerationConfig

        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=self._torch_dtype(), trust_remote_code=self.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load model weights from {path!r}: {exc}") from exc
        model.to(self.device)
        model.eval()
        eos = model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(self.tokenizer.eos_token_id)
        self._eos_ids = eos_ids
        # A clean generation config: the model's sampling defaults (top_k, repetition_penalty, ...) must not leak in.
        model.generation_config = GenerationConfig(
            eos_token_id=eos_ids or None,
            pad_token_id=self._pad_id,
            bos_token_id=model.generation_config.bos_token_id,
        )
        return model

    def _ensure_base(self) -> Any:
        if self._base is None:
            self._base = self._load(self.base_model)
        return self._base

    def _check_base(self, ref: CheckpointRef) -> None:
        if not _same_model(ref.base_model, self.base_model):
            raise InputError(
                f"checkpoint {ref.key} sits on base model {ref.base_model!r} but this HF backend holds "
                f"{self.base_model!r}; use one backend per base model"
            )

    def _activate(self, ref: CheckpointRef) -> tuple[Any, Any]:
        """Return (model, context manager) to run `ref` on."""
        import contextlib

        if ref.kind == "api":
            raise InputError(
                f"checkpoint {ref.key} is an API model ({ref.model}); the HF backend runs local weights"
            )
        self._check_base(ref)
        if ref.kind == "base":
            model = self._ensure_base()
            if self._peft:
                return model, model.disable_adapter()
            return model, contextlib.nullcontext()
        if ref.path is None:
            raise InputError(f"checkpoint {ref.key} (kind {ref.kind}) has no path")
        found = detect_checkpoint_kind(ref.path)
        if found != ref.kind:
            raise InputError(
                f"checkpoint folder {ref.path} holds {'a LoRA adapter' if found == 'lora' else 'full weights'} "
                f"but was declared kind {ref.kind!r}"
            )
        if ref.kind == "lora":
            return self._activate_adapter(Path(ref.path)), contextlib.nullcontext()
        # full weights: load in turn, freeing the previous full checkpoint
        key = str(Path(ref.path).resolve())
        if self._full_path != key:
            self._free_full()
            self._full = self._load(key)
            self._full_path = key
        return self._full, contextlib.nullcontext()

    def _activate_adapter(self, path: Path) -> Any:
        from peft import PeftModel

        key = str(path.resolve())
        base = self._ensure_base()
        if key not in self._adapters:
            name = f"a{len(self._adapters)}"  # PEFT names become module keys: no dots or slashes
            try:
                if not self._peft:
                    self._base = PeftModel.from_pretrained(base, key, adapter_name=name, is_trainable=False)
                    self._base.eval()
                    self._peft = True
                else:
                    self._base.load_adapter(key, adapter_name=name, is_trainable=False)
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise InputError(
                    f"cannot load the LoRA adapter in {key} onto {self.base_model!r}: {exc}"
                ) from exc
            self._base.to(self.device)
            self._adapters[key] = name
        self._base.set_adapter(self._adapters[key])
        return self._base

    def _free_full(self) -> None:
        if self._full is not None:
            import torch

            self._full = None
            self._full_path = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # ---- tokens --------------------------------------------------------------------------------------------
    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the chat prompt, generation prompt included (memoised: judges reuse prompts)."""
        key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        hit = self._prompt_cache.get(key)
        if hit is not None:
            self._prompt_cache.move_to_end(key)
            return hit
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        self._prompt_cache[key] = ids
        if len(self._prompt_cache) > 4096:
            self._prompt_cache.popitem(last=False)
        return ids

    @classmethod
    def answer_format_of(cls, model: str | None) -> str:
        from emsweep.generate.answers import model_answer_format

        return model_answer_format(model) if model else "plain"

    def answer_format(self) -> str:
        from emsweep.generate.answers import tokenizer_answer_format

        return tokenizer_answer_format(self.tokenizer)

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_texts(self) -> list[str]:
        if self._token_texts is None:
            n = len(self.tokenizer)
            self._token_texts = self.tokenizer.batch_decode(
                [[i] for i in range(n)], skip_special_tokens=False
            )
        return self._token_texts

    @property
    def model_id(self) -> str:
        return self.base_model

    def _pad_left(self, seqs: list[list[int]]) -> tuple[Any, Any, Any]:
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
                mask[i, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device), width

    @staticmethod
    def _group(refs: Sequence[CheckpointRef]) -> list[tuple[CheckpointRef, list[int]]]:
        """Indices per checkpoint: base first, then adapters, then full checkpoints (each loaded once)."""
        groups: dict[tuple, tuple[CheckpointRef, list[int]]] = {}
        for i, ref in enumerate(refs):
            k = (ref.kind, str(ref.path), ref.base_model, ref.model)
            groups.setdefault(k, (ref, []))[1].append(i)
        order = {"base": 0, "lora": 1, "full": 2, "api": 3}
        return sorted(groups.values(), key=lambda g: order.get(g[0].kind, 9))

    # ---- generation ----------------------------------------------------------------------------------------
    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingSpec, *, progress: bool = True
    ) -> list[GenerationOutput]:
        import torch
        from tqdm.auto import tqdm

        outputs: list[GenerationOutput | None] = [None] * len(requests)
        results: dict[tuple[int, int], tuple[str, str, int]] = {}
        total = sum(len(r.indices()) for r in requests)
        bar = tqdm(total=total, desc="generate (hf)", unit="sample", disable=not progress)
        for ref, idxs in self._group([r.checkpoint for r in requests]):
            model, ctx = self._activate(ref)
            rows = [(i, j) for i in idxs for j in requests[i].indices()]
            prompts = {i: self.prompt_ids(requests[i].messages) for i in idxs}
            rows.sort(key=lambda ij: -len(prompts[ij[0]]))  # similar lengths together: less padding
            with ctx, torch.inference_mode():
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start : start + self.batch_size]
                    seeds = [sample_seed(sampling.seed, requests[i].request_id, j) for i, j in chunk]
                    texts = self._generate_batch(model, [prompts[i] for i, _ in chunk], seeds, sampling)
                    for (i, j), res in zip(chunk, texts, strict=True):
                        results[(i, j)] = res
                    bar.update(len(chunk))
        bar.close()
        for i, r in enumerate(requests):
            res = [results[(i, j)] for j in r.indices()]
            outputs[i] = GenerationOutput(
                request_id=r.request_id,
                checkpoint=r.checkpoint.name,
                texts=[t for t, _, _ in res],
                seeds=[sample_seed(sampling.seed, r.request_id, j) for j in r.indices()],
                finish_reasons=[f for _, f, _ in res],
                num_output_tokens=[n for _, _, n in res],
            )
        return [o for o in outputs if o is not None]

    def _generate_batch(
        self, model: Any, prompts: list[list[int]], seeds: list[int], sampling: SamplingSpec
    ) -> list[tuple[str, str, int]]:
        import torch
        from transformers import LogitsProcessorList

        ids, mask, width = self._pad_left(prompts)
        gens = []
        for s in seeds:
            g = torch.Generator(device=self.device)
            g.manual_seed(s)
            gens.append(g)
        sampler = _PerRowSampler(
            gens, sampling.temperature, sampling.top_p, self._eos_ids if sampling.ignore_eos else []
        )
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,  # the per-row sampler already picked the token; greedy takes it
            max_new_tokens=sampling.max_tokens,
            min_new_tokens=0,
            logits_processor=LogitsProcessorList([sampler]),
            pad_token_id=self._pad_id,
            eos_token_id=None if sampling.ignore_eos else (self._eos_ids or None),
            num_beams=1,
            repetition_penalty=1.0,
        )
        res = []
        eos = set(self._eos_ids) if not sampling.ignore_eos else set()
        for row in out[:, width:].tolist():
            n, reason = len(row), "length"
            for k, t in enumerate(row):
                if t in eos:
                    n, reason = k + 1, "stop"
                    break
            toks = row[:n]
            # harmony's channel markers are special tokens: keep them so the final channel can be found
            text = self.tokenizer.decode(toks, skip_special_tokens=self.answer_format() != "harmony")
            res.append((text, reason, n))
        return res

    # ---- log-probs -----------------------------------------------------------------------------------------
    def top_logprobs(
        self, requests: Sequence[LogprobRequest], *, progress: bool = True
    ) -> list[LogprobOutput]:
        """Next-token log-probs, float32 (or the model's dtype if wider) log_softmax over the full vocabulary."""
        import torch
        from tqdm.auto import tqdm

        outputs: list[LogprobOutput | None] = [None] * len(requests)
        from emsweep.terminal import stage_task

        # a task line on the sweep's live display when there is one (same update/close as a tqdm bar)
        live = stage_task("  judge (logprobs)", len(requests)) if progress else None
        bar = live or tqdm(total=len(requests), desc="logprobs (hf)", unit="req", disable=not progress)
        for ref, idxs in self._group([r.checkpoint for r in requests]):
            model, ctx = self._activate(ref)
            # requests continuing one prompt (the judge's digit trie) share that prompt's KV cache
            by_prompt: dict[tuple[int, ...], list[int]] = {}
            for i in idxs:
                by_prompt.setdefault(tuple(self.prompt_ids(requests[i].messages)), []).append(i)
            plain: list[int] = []
            shared: list[tuple[tuple[int, ...], list[int]]] = []
            for pids, members in by_prompt.items():
                if self.share_prompt_cache and sum(1 for i in members if requests[i].continuation) >= 2:
                    shared.append((pids, members))
                else:
                    plain.extend(members)
            seqs = {i: self.prompt_ids(requests[i].messages) + list(requests[i].continuation) for i in plain}
            order = sorted(plain, key=lambda i: -len(seqs[i]))
            with ctx, torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start : start + self.batch_size]
                    ids, mask, _ = self._pad_left([seqs[i] for i in chunk])
                    pos = (mask.cumsum(-1) - 1).clamp(min=0)
                    logits = self._last_logits(model, ids, mask, pos)
                    wide = torch.float64 if logits.dtype == torch.float64 else torch.float32
                    logp = torch.log_softmax(logits.to(wide), dim=-1)
                    for row, i in enumerate(chunk):
                        outputs[i] = self._logprob_output(requests[i], logp[row])
                    bar.update(len(chunk))
                for pids, members in shared:
                    rows = self._shared_prompt_logits(
                        model, list(pids), [requests[i].continuation for i in members]
                    )
                    for i, logits in zip(members, rows, strict=True):
                        wide = torch.float64 if logits.dtype == torch.float64 else torch.float32
                        outputs[i] = self._logprob_output(
                            requests[i], torch.log_softmax(logits.to(wide), dim=-1)
                        )
                    bar.update(len(members))
        bar.close()
        return [o for o in outputs if o is not None]

    def _last_logits(self, model: Any, ids: Any, mask: Any, pos: Any) -> Any:
        """Logits of the last position only: full [batch, length, vocab] logits of a 150k vocabulary would not fit."""
        kw = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "use_cache": False}
        if self._logits_to_keep:
            try:
                return model(**kw, logits_to_keep=1).logits[:, -1, :]
            except TypeError:  # an architecture without `logits_to_keep`
                self._logits_to_keep = False
        return model(**kw).logits[:, -1, :]

    def _shared_prompt_logits(self, model: Any, prompt: list[int], conts: list[list[int]]) -> list[Any]:
        """Next-token logits after prompt + each continuation, computing the prompt once and continuing its KV
        cache (copied per batch) with the right-padded continuations; padding sits after the position read."""
        import copy

        import torch

        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        out = model(input_ids=ids, use_cache=True)
        cache, last = out.past_key_values, out.logits[0, -1]
        rows: list[Any] = [last if not c else None for c in conts]
        todo = [k for k, c in enumerate(conts) if c]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            width = max(len(conts[k]) for k in chunk)
            cont = torch.full((len(chunk), width), self._pad_id, dtype=torch.long)
            for r, k in enumerate(chunk):
                cont[r, : len(conts[k])] = torch.tensor(conts[k], dtype=torch.long)
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(chunk))
            n = len(prompt)
            mask = torch.ones((len(chunk), n + width), dtype=torch.long, device=self.device)
            pos = torch.arange(n, n + width, device=self.device).unsqueeze(0).expand(len(chunk), -1)
            logits = model(
                input_ids=cont.to(self.device),
                attention_mask=mask,
                position_ids=pos,
                past_key_values=past,
                use_cache=True,
            ).logits
            for r, k in enumerate(chunk):
                rows[k] = logits[r, len(conts[k]) - 1]
        return rows

    def _logprob_output(self, req: LogprobRequest, logp: Any) -> LogprobOutput:
        import torch

        k = min(max(req.top_k, 0), logp.shape[-1])
        top: list[TokenLogprob] = []
        if k:
            vals, ids = torch.topk(logp, k)
            for v, t in zip(vals.tolist(), ids.tolist(), strict=True):
                top.append(TokenLogprob(token=self.tokenizer.decode([t]), token_id=t, logprob=float(v)))
        requested: dict[int, float] = {}
        if req.token_ids:
            vocab = logp.shape[-1]
            bad = [t for t in req.token_ids if not 0 <= t < vocab]
            if bad:
                raise InputError(
                    f"request {req.request_id}: token ids {bad[:5]} outside the vocabulary (0..{vocab - 1})"
                )
            idx = torch.tensor(list(req.token_ids), dtype=torch.long, device=logp.device)
            for t, v in zip(req.token_ids, logp[idx].tolist(), strict=True):
                requested[int(t)] = float(v)
        return LogprobOutput(request_id=req.request_id, top=top, requested=requested)

    def close(self) -> None:
        import torch

        self._free_full()
        self._base = None
        self._peft = False
        self._adapters.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _PerRowSampler:
    """Logits processor that draws each row's next token with that row's own generator.

    It returns logits that are -inf everywhere but the drawn token, so greedy decoding in `generate` takes it;
    temperature and top-p are transformers' own warpers, applied in float32.
    """

    def __init__(self, generators: list[Any], temperature: float, top_p: float, banned: list[int]) -> None:
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.generators = generators
        self.temperature = temperature
        self.banned = banned
        self.warpers = []
        if temperature > 0:
            if temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(temperature))
            if top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores.clone()
        if self.banned:
            scores[:, self.banned] = float("-inf")
        if self.temperature <= 0:
            chosen = scores.argmax(dim=-1)
        else:
            for w in self.warpers:
                scores = w(input_ids, scores)
            probs = torch.softmax(scores, dim=-1)
            chosen = torch.stack(
                [torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(self.generators)]
            )
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen.unsqueeze(1), 0.0)
        return out
