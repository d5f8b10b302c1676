"""vLLM backend: every checkpoint of a run (or a sweep) on ONE offline `vllm.LLM` engine per base model.

Why one engine: an engine start costs tens of seconds (plus CUDA graph capture) and a checkpoint-level study has
hundreds of checkpoints. So:

- LoRA checkpoints are `LoRARequest`s (one unique int id per adapter folder) on an engine built with
  `enable_lora=True` and `max_lora_rank` rounded up from the adapters' own rank (read from adapter_config.json);
  the requests of many checkpoints go in the same `generate` call, vLLM batches them (`max_loras` adapters at once).
- Full fine-tune checkpoints are swapped into the same engine in place (`collective_rpc("reload_weights",
  weights_path=...)`) and the prefix cache is reset after each swap, so no KV block computed with old weights is
  reused. The base weights are swapped back when base/LoRA requests come after a full checkpoint.
- The judge path is prefill-only: `max_tokens=1` with `logprobs=top_k`, plus a second request with
  `logprob_token_ids` for exact log-probs of given tokens (vLLM refuses both in one request unless the counts
  match); prefix caching is on, so the judge prompt's shared prefix is computed once.

Three vLLM 0.32 bugs are worked around here (docs/vllm.md): tied LM heads not reloaded by an in-place swap
(`WorkerExtension`), base rows getting an adapter when batched with LoRA rows on CPU (`_zero_lora`), and
`logprob_token_ids` requests mixed up with top-k requests in one batch (separate calls).

Prompts are rendered exactly as the HF backend renders them (chat template as text, tokenised without extra
special tokens) and passed as token ids (`TokensPrompt`), so both backends see identical inputs.

Over ~450 lines because it is one backend class around one engine, with the LoRA-adapter checks that must
match the engine's settings.
"""

from __future__ import annotations

import json
import logging
import os
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
from emsweep.layout import CheckpointRef, has_full_weights

log = logging.getLogger(__name__)

# vLLM's LoRAConfig.max_lora_rank accepts only these values.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# SamplingParams.logprob_token_ids holds at most this many ids per request (vllm.sampling_params).
MAX_TOKEN_IDS_PER_REQUEST = 128
# config.json keys that must agree between the engine's base model and a checkpoint for its weights to fit.
SHAPE_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read JSON ({exc})") from exc


def lora_rank(adapter_dir: str | os.PathLike[str]) -> int:
    """The largest rank an adapter uses (`r` and any `rank_pattern` override), from its adapter_config.json."""
    cfg = _read_json(Path(adapter_dir) / "adapter_config.json")
    ranks = [int(cfg.get("r") or 8), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    return max(ranks)


def engine_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds `rank`."""
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise InputError(
        f"LoRA rank {rank} is above vLLM's largest supported max_lora_rank ({VLLM_LORA_RANKS[-1]}); "
        "train with a smaller `lora.r` or evaluate with --backend hf"
    )


def model_shape(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Architecture + shape of a local model folder (None for a hub id we cannot read offline)."""
    p = Path(model_dir) / "config.json"
    if not p.is_file():
        return None
    cfg = _read_json(p)
    text = cfg.get("text_config") or {}
    shape = {k: cfg.get(k, text.get(k)) for k in SHAPE_KEYS}
    shape["architectures"] = tuple(cfg.get("architectures") or ())
    if shape.get("head_dim") is None and shape.get("hidden_size") and shape.get("num_attention_heads"):
        shape["head_dim"] = shape["hidden_size"] // shape["num_attention_heads"]
    return shape


def _same_path(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _shape_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = ("architectures", *SHAPE_KEYS)
    return [
        f"{k}: {a.get(k)!r} vs {b.get(k)!r}"
        for k in keys
        if a.get(k) != b.get(k) and None not in (a.get(k), b.get(k))
    ]


def check_lora_adapter(
    adapter_dir: Path, *, base_model: str, base_shape: dict[str, Any] | None, key: str
) -> int:
    """Refuse adapters vLLM cannot serve on this engine, with what to change; returns the adapter's rank."""
    cfg_path = adapter_dir / "adapter_config.json"
    if not cfg_path.is_file():
        raise InputError(
            f"checkpoint {key}: {adapter_dir} has no adapter_config.json; it is not a PEFT LoRA adapter "
            "(declare it kind 'full' if it holds full weights)"
        )
    if not any((adapter_dir / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise InputError(
            f"checkpoint {key}: {adapter_dir} has adapter_config.json but no adapter_model.safetensors"
        )
    cfg = _read_json(cfg_path)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise InputError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r}; vLLM serves LoRA adapters only")
    if cfg.get("use_dora"):
        raise InputError(
            f"{cfg_path}: use_dora: true - vLLM cannot serve DoRA adapters; evaluate this run with --backend hf, "
            "or train with `lora.use_dora: false`"
        )
    extra = [m for m in (cfg.get("modules_to_save") or []) if m not in ("classifier", "score")]
    if extra:
        raise InputError(
            f"{cfg_path}: modules_to_save {extra} - vLLM cannot serve adapters that save full copies of modules "
            "(e.g. lm_head, embed_tokens); train without `lora.modules_to_save`, or merge the adapter into full "
            "weights and evaluate it as a full checkpoint, or use --backend hf"
        )
    declared = cfg.get("base_model_name_or_path")
    if declared and not _same_path(str(declared), base_model):
        theirs = model_shape(declared) if Path(str(declared)).is_dir() else None
        if theirs is None or base_shape is None:
            if Path(str(declared)).name != Path(base_model).name:
                raise InputError(
                    f"{cfg_path}: base_model_name_or_path {declared!r} differs from the engine's base model "
                    f"{base_model!r}; evaluate it with an engine on its own base model"
                )
        elif diff := _shape_diff(theirs, base_shape):
            raise InputError(
                f"{cfg_path}: adapter trained on {declared!r}, whose architecture differs from the engine's base "
                f"{base_model!r} ({'; '.join(diff)}); evaluate it with an engine on its own base model"
            )
    return lora_rank(adapter_dir)


class WorkerExtension:
    """Mixed into vLLM's workers (`worker_extension_cls`): an in-place weight swap that keeps tied embeddings tied.

    vLLM 0.32's layerwise `reload_weights` skips `lm_head` when `tie_word_embeddings` is set (the checkpoint has
    no lm_head tensor) but rebuilds the embedding, so the output head keeps the OLD weights (its log says
    "ParallelLMHead: Failed to load weights"). Qwen2.5-0.5B and our tiny shapes are tied, so we copy the new
    embedding into the head in place (same storage: CUDA graphs stay valid).
    """

    def emsweep_swap_weights(self, weights_path: str) -> float:
        self.reload_weights(weights_path=weights_path)  # type: ignore[attr-defined]
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        cfg = self.model_config.hf_text_config  # type: ignore[attr-defined]
        head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        head, embed = getattr(head, "base_layer", head), getattr(embed, "base_layer", embed)
        if getattr(cfg, "tie_word_embeddings", False) and head is not None and embed is not None:
            hw, ew = getattr(head, "weight", None), getattr(embed, "weight", None)
            if hw is not None and ew is not None and hw.data_ptr() != ew.data_ptr():
                hw.data.copy_(ew.data)
            # CPU: the head keeps a repacked copy of the weight for its GEMM (`cpu_linear`); rebuild it
            method = getattr(head, "quant_method", None)
            if method is not None and hasattr(head, "cpu_linear"):
                method.process_weights_after_loading(head)
        w = getattr(head, "weight", None)
        return float(w.float().sum()) if w is not None else 0.0


class VLLMBackend(GenerationBackend):
    """Offline vLLM engine for one base model and all its checkpoints (base, LoRA, full).

    `engine_kwargs` (and any extra keyword arguments, which is how `make_backend` passes the recipe's `eval.engine`)
    go straight to `vllm.LLM`: tensor_parallel_size, gpu_memory_utilization, max_model_len, dtype, enforce_eager...
    `checkpoints`: the checkpoints this engine will serve, when known up front, so the engine is built once with
    a `max_lora_rank` and `max_loras` that fit them all; otherwise it is built on the first call from the
    checkpoints that call names.
    """

    name = "vllm"
    supports_token_ids = True
    engines_built = 0  # class-wide count: tests and benchmarks check one engine serves many checkpoints

    OWN_EXTRA_KWARGS = True  # **extra_engine_kwargs go to vLLM's LLM(...): the factory passes any through

    def __init__(
        self,
        base_model: str,
        *,
        engine_kwargs: dict[str, Any] | None = None,
        max_lora_rank: int | None = None,
        max_loras: int | None = None,
        enable_lora: bool | None = None,
        checkpoints: Sequence[CheckpointRef] = (),
        batch_size: int | None = None,
        **extra_engine_kwargs: Any,
    ) -> None:
        self.base_model = str(base_model)
        self.engine_kwargs: dict[str, Any] = {**(engine_kwargs or {}), **extra_engine_kwargs}
        for reserved in ("model", "enable_lora", "max_lora_rank", "max_loras"):
            if reserved in self.engine_kwargs:
                val = self.engine_kwargs.pop(reserved)
                if reserved == "max_lora_rank" and max_lora_rank is None:
                    max_lora_rank = val
                elif reserved == "max_loras" and max_loras is None:
                    max_loras = val
                elif reserved == "enable_lora" and enable_lora is None:
                    enable_lora = val
        self.max_lora_rank = max_lora_rank
        self.max_loras = max_loras
        self.enable_lora = enable_lora
        self.batch_size = batch_size  # accepted for interface parity; vLLM schedules its own batches
        self.base_shape = model_shape(self.base_model)
        self._pending: list[CheckpointRef] = list(checkpoints)
        self.llm: Any = None
        self.tokenizer: Any = None
        self._lora_ids: dict[str, int] = {}  # resolved adapter path -> LoRARequest int id
        self._lora_ranks: dict[str, int] = {}
        self._weights: str = "base"  # what the engine's weights are now: "base" or a resolved full ckpt path
        self._checked_full: set[str] = set()
        self._prompt_cache: OrderedDict[str, list[int]] = OrderedDict()
        self.n_checkpoints_served: set[str] = set()
        self.n_swaps = 0
        self._zero_dir: Path | None = None
        self._token_texts: list[str] | None = None
        self.engine_message: str | None = None

    # ---- engine --------------------------------------------------------------------------------------------
    def _validate(self, ref: CheckpointRef) -> None:
        if ref.kind == "api":
            raise InputError(
                f"checkpoint {ref.key} is an API model ({ref.model}); the vllm backend runs local weights - use "
                "--backend openai or openai-compatible"
            )
        if not _same_path(ref.base_model, self.base_model):
            theirs = model_shape(ref.base_model)
            diff = _shape_diff(theirs, self.base_shape) if theirs and self.base_shape else None
            if diff is None or diff:
                raise InputError(
                    f"checkpoint {ref.key} sits on base model {ref.base_model!r} but this vLLM engine holds "
                    f"{self.base_model!r}{' (' + '; '.join(diff) + ')' if diff else ''}; use one engine per base model"
                )
        if ref.kind == "base":
            return
        if ref.path is None:
            raise InputError(f"checkpoint {ref.key} (kind {ref.kind}) has no path")
        path = Path(ref.path)
        if not path.is_dir():
            raise InputError(f"checkpoint {ref.key}: folder {path} does not exist")
        key = str(path.resolve())
        if ref.kind == "lora":
            if key not in self._lora_ranks:
                self._lora_ranks[key] = check_lora_adapter(
                    path, base_model=self.base_model, base_shape=self.base_shape, key=ref.key
                )
            return
        if key in self._checked_full:
            return
        if (path / "adapter_config.json").is_file():
            raise InputError(
                f"checkpoint {ref.key}: {path} holds a LoRA adapter but was declared kind 'full'"
            )
        theirs = model_shape(path)
        has_weights = has_full_weights(path)
        if theirs is None or not has_weights:
            raise InputError(
                f"checkpoint {ref.key}: {path} is neither a PEFT adapter nor full weights (config.json + "
                "model*.safetensors); point at a checkpoint-<step> folder that training wrote"
            )
        if self.base_shape is not None and (diff := _shape_diff(theirs, self.base_shape)):
            raise InputError(
                f"checkpoint {ref.key}: {path}/config.json does not match the engine's base model "
                f"{self.base_model!r} ({'; '.join(diff)}); its weights cannot be swapped into this engine"
            )
        self._checked_full.add(key)

    def _engine_args(self, refs: Sequence[CheckpointRef]) -> dict[str, Any]:
        import torch

        args: dict[str, Any] = {
            "enable_prefix_caching": True,
            "max_logprobs": MAX_TOKEN_IDS_PER_REQUEST,
            "seed": 0,
            "worker_extension_cls": f"{__name__}.WorkerExtension",
        }
        if not torch.cuda.is_available():
            # CPU: float32 is exact and what the HF backend uses; eager mode skips a long torch.compile at start.
            args.update(dtype="float32", enforce_eager=True)
        args.update(self.engine_kwargs)
        ranks = [self._lora_ranks[str(Path(r.path).resolve())] for r in refs if r.kind == "lora" and r.path]
        n_adapters = len({str(Path(r.path).resolve()) for r in refs if r.kind == "lora" and r.path})
        enable = self.enable_lora if self.enable_lora is not None else bool(ranks or self.max_lora_rank)
        if enable:
            want = self.max_lora_rank or max(ranks or [8])
            if ranks and max(ranks) > want:
                raise InputError(
                    f"adapters have LoRA rank {max(ranks)} but max_lora_rank is {want}; raise "
                    f"eval.engine.max_lora_rank to >= {max(ranks)} (or drop it: it is read from the adapters)"
                )
            args["enable_lora"] = True
            args["max_lora_rank"] = engine_lora_rank(int(want))
            # Adapters resident on the device at once: all of them up to 8 (a few MB each at these ranks);
            # the rest wait in the CPU cache (max_cpu_loras) and are swapped in by the scheduler.
            args["max_loras"] = int(self.max_loras or max(1, min(n_adapters or 1, 8)))
            if self._cpu_platform():
                args["max_loras"] += (
                    1  # the zero adapter that base requests run through on CPU (see _lora_of)
                )
            args.setdefault("max_cpu_loras", max(args["max_loras"], n_adapters))
        return args

    def _ensure_engine(self, refs: Sequence[CheckpointRef]) -> Any:
        if self.llm is not None:
            return self.llm
        from vllm import LLM

        all_refs = [*self._pending, *refs]
        for r in all_refs:
            self._validate(r)
        args = self._engine_args(all_refs)
        n = len({r.key for r in all_refs}) or 1
        try:
            self.llm = LLM(model=self.base_model, **args)
        except (ValueError, RuntimeError, MemoryError) as exc:  # vLLM raises these for OOM / bad config
            raise InputError(self._engine_error(exc, args)) from exc
        self.tokenizer = self.llm.get_tokenizer()
        msg = f"built vLLM engine for {self.base_model} (1 engine for {n} checkpoint{'s' if n != 1 else ''})"
        VLLMBackend.engines_built += 1
        self.engine_message = msg
        log.info(msg)
        print(msg, flush=True)  # the eval log and the tests read this line
        return self.llm

    def _engine_error(self, exc: BaseException, args: dict[str, Any]) -> str:
        """vLLM's engine core dies in a child process; the parent only sees "initialization failed", the root
        cause (almost always memory: weights + KV cache do not fit) is in the engine log just above."""
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:400]
        shown = {k: v for k, v in args.items() if k not in ("seed", "worker_extension_cls")}
        return (
            f"vLLM could not start an engine for {self.base_model} ({first}). The engine log above names the "
            "cause; when it is memory (weights + KV cache do not fit): lower eval.engine.gpu_memory_utilization, "
            "max_model_len, max_num_seqs or max_loras, raise tensor_parallel_size, or on CPU lower "
            f"VLLM_CPU_KVCACHE_SPACE / kv_cache_memory_bytes. Engine arguments: {shown}"
        )

    # ---- checkpoints on the engine --------------------------------------------------------------------------
    def _lora_request(self, ref: CheckpointRef) -> Any:
        from vllm.lora.request import LoRARequest

        key = str(Path(ref.path).resolve())  # type: ignore[arg-type]
        rank = self._lora_ranks[key]
        engine_max = self.llm.llm_engine.vllm_config.lora_config
        if engine_max is None:
            raise InputError(
                f"checkpoint {ref.key} is a LoRA adapter but this vLLM engine was built without LoRA; pass all "
                "checkpoints when creating the backend (or set eval.engine.enable_lora: true)"
            )
        if rank > engine_max.max_lora_rank:
            raise InputError(
                f"checkpoint {ref.key}: LoRA rank {rank} is above this engine's max_lora_rank "
                f"{engine_max.max_lora_rank}; set eval.engine.max_lora_rank: {engine_lora_rank(rank)}"
            )
        if key not in self._lora_ids:
            self._lora_ids[key] = len(self._lora_ids) + 1
        return LoRARequest(lora_name=ref.key, lora_int_id=self._lora_ids[key], lora_path=key)

    def _load_weights(self, target: str) -> None:
        """Swap the engine's weights in place (base model or a full checkpoint) and reset the prefix cache."""
        if target == self._weights:
            return
        path = self.base_model if target == "base" else target
        try:
            self.llm.collective_rpc("emsweep_swap_weights", args=(path,))
        except Exception as exc:  # a failed swap leaves unknown weights: refuse to go on silently
            self._weights = "unknown"
            raise InputError(
                f"vLLM could not swap in the weights of {path} in place: {exc}; evaluate this run's full checkpoints "
                "with --backend hf, or serve each with `vllm serve <checkpoint folder>` and --backend openai-compatible"
            ) from exc
        self.llm.reset_prefix_cache()
        self._weights = target
        self.n_swaps += 1
        log.info("vLLM engine: weights of %s swapped in place (prefix cache reset)", path)

    def _groups(self, refs: Sequence[CheckpointRef]) -> list[tuple[str, list[int]]]:
        """Request indices per weight set: everything that runs on the base weights (base + LoRA) in one batch,
        then one batch per full checkpoint; the weights loaded now go first to save a swap."""
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(refs):
            w = str(Path(r.path).resolve()) if r.kind == "full" else "base"  # type: ignore[arg-type]
            groups.setdefault(w, []).append(i)
        return sorted(groups.items(), key=lambda g: (g[0] != self._weights, g[0] != "base"))

    @staticmethod
    def _cpu_platform() -> bool:
        from vllm.platforms import current_platform

        return current_platform.is_cpu()

    def _lora_of(self, ref: CheckpointRef) -> Any:
        if ref.kind == "lora":
            return self._lora_request(ref)
        if (
            self._lora_ranks
            and self.llm.llm_engine.vllm_config.lora_config is not None
            and self._cpu_platform()
        ):
            return self._zero_lora()
        return None

    def _zero_lora(self) -> Any:
        """vLLM 0.32's CPU LoRA ops index adapter slots with the request's slot, and a request without adapter
        has slot -1, which PyTorch indexing reads as the LAST slot: on CPU, base rows batched with LoRA rows got
        an adapter applied. Base requests therefore run through an all-zero adapter (B = 0 adds exactly 0)."""
        from vllm.lora.request import LoRARequest

        if self._zero_dir is None:
            import tempfile

            from safetensors.torch import load_file, save_file

            src = next(iter(self._lora_ranks))
            self._zero_dir = Path(tempfile.mkdtemp(prefix="emsweep-zero-lora-"))
            cfg = _read_json(Path(src) / "adapter_config.json")
            (self._zero_dir / "adapter_config.json").write_text(json.dumps(cfg))
            tensors = load_file(str(Path(src) / "adapter_model.safetensors"))
            save_file(
                {k: v.new_zeros(v.shape) for k, v in tensors.items()},
                str(self._zero_dir / "adapter_model.safetensors"),
            )
        return LoRARequest(lora_name="__emsweep_base__", lora_int_id=1_000_000, lora_path=str(self._zero_dir))

    # ---- tokens --------------------------------------------------------------------------------------------
    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Chat prompt token ids, rendered exactly like the HF backend (template as text, no extra specials)."""
        key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        hit = self._prompt_cache.get(key)
        if hit is not None:
            return hit
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except ValueError as exc:
            raise InputError(
                f"base model {self.base_model!r}: cannot apply its chat template ({exc})"
            ) from exc
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        self._prompt_cache[key] = ids
        if len(self._prompt_cache) > 4096:
            self._prompt_cache.popitem(last=False)
        return ids

    def _ensure_tokenizer(self) -> Any:
        if self.tokenizer is None:
            if self.llm is not None:
                self.tokenizer = self.llm.get_tokenizer()
            else:  # tokenize before any engine exists (the judge spells numbers first): no engine needed
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(self.base_model)
        return self.tokenizer

    @classmethod
    def answer_format_of(cls, model: str | None) -> str:
        from emsweep.generate.answers import model_answer_format

        return model_answer_format(model) if model else "plain"

    def answer_format(self) -> str:
        from emsweep.generate.answers import tokenizer_answer_format

        return tokenizer_answer_format(self._ensure_tokenizer())

    def tokenize(self, text: str) -> list[int]:
        return list(self._ensure_tokenizer()(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self._ensure_tokenizer().decode(list(ids), skip_special_tokens=False)

    def token_texts(self) -> list[str]:
        """Decoded text of every token id (the judge finds digit tokens in it), as the HF backend computes it."""
        if self._token_texts is None:
            tok = self._ensure_tokenizer()
            self._token_texts = tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=False)
        return self._token_texts

    @property
    def model_id(self) -> str:
        return self.base_model

    # ---- generation ----------------------------------------------------------------------------------------
    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingSpec, *, progress: bool = True
    ) -> list[GenerationOutput]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        refs = [r.checkpoint for r in requests]
        for r in refs:
            self._validate(r)
        self._ensure_engine(refs)
        results: dict[tuple[int, int], tuple[str, str, int]] = {}
        keep_specials = self.answer_format() == "harmony"
        for weights, idxs in self._groups(refs):
            self._load_weights(weights)
            prompts, params, loras, keys = [], [], [], []
            for i in idxs:
                req = requests[i]
                ids = self.prompt_ids(req.messages)
                lora = self._lora_of(req.checkpoint)
                for j in req.indices():
                    # one vLLM request per sample, seeded like every other backend (sample_seed)
                    params.append(
                        SamplingParams(
                            n=1,
                            temperature=sampling.temperature,
                            top_p=sampling.top_p,
                            max_tokens=sampling.max_tokens,
                            seed=sample_seed(sampling.seed, req.request_id, j),
                            ignore_eos=sampling.ignore_eos,
                            detokenize=False,  # decoded below exactly like the HF backend (whole ids at once)
                        )
                    )
                    prompts.append(TokensPrompt(prompt_token_ids=ids))
                    loras.append(lora)
                    keys.append((i, j))
                    self.n_checkpoints_served.add(req.checkpoint.key)
            outs = self.llm.generate(
                prompts, params, lora_request=loras if any(loras) else None, use_tqdm=progress
            )
            for key, out in zip(keys, outs, strict=True):
                c = out.outputs[0]
                toks = list(c.token_ids)
                # harmony's channel markers are special tokens: keep them so the final channel can be found
                text = self.tokenizer.decode(toks, skip_special_tokens=not keep_specials)
                results[key] = (text, c.finish_reason or "length", len(toks))
        outputs = []
        for i, r in enumerate(requests):
            res = [results[(i, j)] for j in r.indices()]
            outputs.append(
                GenerationOutput(
                    request_id=r.request_id,
                    checkpoint=r.checkpoint.name,
                    texts=[t for t, _, _ in res],
                    seeds=[sample_seed(sampling.seed, r.request_id, j) for j in r.indices()],
                    finish_reasons=[f for _, f, _ in res],
                    num_output_tokens=[n for _, _, n in res],
                )
            )
        return outputs

    # ---- log-probs (judge) ---------------------------------------------------------------------------------
    def top_logprobs(
        self, requests: Sequence[LogprobRequest], *, progress: bool = True
    ) -> list[LogprobOutput]:
        """Prefill-only: one token, top-k log-probs of the raw (untempered) distribution, plus exact log-probs of
        requested token ids through a second request on the same (prefix-cached) prompt."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        refs = [r.checkpoint for r in requests]
        for r in refs:
            self._validate(r)
        self._ensure_engine(refs)
        vocab = len(self.tokenizer)
        outputs: list[LogprobOutput | None] = [None] * len(requests)
        for weights, idxs in self._groups(refs):
            self._load_weights(weights)
            prompts, params, loras, slots = [], [], [], []
            for i in idxs:
                req = requests[i]
                seq = TokensPrompt(prompt_token_ids=self.prompt_ids(req.messages) + list(req.continuation))
                lora = self._lora_of(req.checkpoint)
                k = max(0, min(req.top_k, MAX_TOKEN_IDS_PER_REQUEST))
                if k:
                    prompts.append(seq)
                    params.append(SamplingParams(max_tokens=1, temperature=0.0, logprobs=k, detokenize=False))
                    loras.append(lora)
                    slots.append((i, "top", k))
                ids = list(dict.fromkeys(int(t) for t in (req.token_ids or [])))
                bad = [t for t in ids if not 0 <= t < vocab]
                if bad:
                    raise InputError(
                        f"request {req.request_id}: token ids {bad[:5]} outside the vocabulary (0..{vocab - 1})"
                    )
                for s in range(0, len(ids), MAX_TOKEN_IDS_PER_REQUEST):
                    chunk = ids[s : s + MAX_TOKEN_IDS_PER_REQUEST]
                    prompts.append(seq)
                    params.append(
                        SamplingParams(
                            max_tokens=1,
                            temperature=0.0,
                            logprobs=len(chunk),
                            logprob_token_ids=chunk,
                            detokenize=False,
                        )
                    )
                    loras.append(lora)
                    slots.append((i, "ids", chunk))
                outputs[i] = LogprobOutput(request_id=req.request_id, top=[], requested={})
                self.n_checkpoints_served.add(req.checkpoint.key)
            # vLLM 0.32 mixes up per-request logprob settings when requests with `logprob_token_ids` share a
            # batch with top-k requests: run the two kinds as separate calls (the prompts are prefix-cached).
            for what in ("top", "ids"):
                sel = [n for n, slot in enumerate(slots) if slot[1] == what]
                if not sel:
                    continue
                sel_loras = [loras[n] for n in sel]
                outs = self.llm.generate(
                    [prompts[n] for n in sel],
                    [params[n] for n in sel],
                    lora_request=sel_loras if any(sel_loras) else None,
                    use_tqdm=progress,
                )
                for n, out in zip(sel, outs, strict=True):
                    i, _, arg = slots[n]
                    lp = out.outputs[0].logprobs[0]
                    o = outputs[i]
                    assert o is not None
                    if what == "top":
                        best = sorted(lp.items(), key=lambda kv: (-kv[1].logprob, kv[0]))[:arg]
                        o.top = [
                            TokenLogprob(
                                token=self.tokenizer.decode([t]), token_id=int(t), logprob=float(v.logprob)
                            )
                            for t, v in best
                        ]
                    else:
                        for t in arg:
                            o.requested[t] = float(lp[t].logprob)
        return [o for o in outputs if o is not None]

    def close(self) -> None:
        """Shut the engine down (frees GPU memory and the engine's worker processes)."""
        if self._zero_dir is not None:
            import shutil

            shutil.rmtree(self._zero_dir, ignore_errors=True)
            self._zero_dir = None
        if self.llm is None:
            return
        llm, self.llm = self.llm, None
        try:
            shutdown = getattr(llm, "shutdown", None) or getattr(llm.llm_engine, "shutdown", None)
            if shutdown is not None:
                shutdown()
        except Exception as exc:  # closing must never mask the error that made us close
            log.warning("vLLM engine shutdown: %s", exc)
        del llm
        import gc

        gc.collect()
