"""Check the recipe sections that pass straight through to library classes, before any work starts.

`sft:` -> `trl.SFTConfig`, `lora:` -> `peft.LoraConfig`, `quantization:` -> `transformers.BitsAndBytesConfig`,
`eval.sampling:` -> `SamplingSpec`. Those classes check little themselves (`SFTConfig(learning_rate="fast")` and
`LoraConfig(use_rslora="maybe")` construct fine and fail, or silently mean nothing, after the model has loaded),
so each value is checked here against the field's annotated type, then against ranges where a value would run but
mean nothing (0 epochs, lr <= 0, r = 0), then the real class is built once.

Results are problems `(key path, message)`; the caller (recipe loading, `sweep plan`) turns a path into
`file:line`, `--set KEY=VALUE` or the sweep axis that set it. Each distinct resolved section is checked once per
process, so planning a 100-cell sweep costs one check per distinct `sft:`/`lora:` value, not one per cell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import inspect
import math
import re
import tempfile
import typing
import warnings
from pathlib import Path
from typing import Any

from emsweep.io import InputError, dumps_json

Problem = tuple[tuple[str, ...], str]

_cache: dict[str, list[Problem]] = {}
_adapters: dict[tuple[type, str], Any] = {}

TRAIN_METHODS = ("lora", "qlora", "full")


# --- ranges: values that construct fine but train nothing, or crash deep inside torch -----------------------


def _pos(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _nonneg(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


SFT_RULES: dict[str, tuple[Any, str]] = {
    "learning_rate": (_pos, "must be > 0 (e.g. 1e-5 for full fine-tuning, 1e-4 for LoRA)"),
    "per_device_train_batch_size": (lambda v: v >= 1, "must be >= 1"),
    "per_device_eval_batch_size": (lambda v: v >= 1, "must be >= 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, "must be >= 1"),
    "seed": (lambda v: 0 <= v < 2**32, "must be an integer in 0..2**32-1"),
    "data_seed": (lambda v: v is None or 0 <= v < 2**32, "must be an integer in 0..2**32-1"),
    "weight_decay": (_nonneg, "must be >= 0"),
    "max_grad_norm": (_nonneg, "must be >= 0"),
    "warmup_ratio": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "warmup_steps": (_nonneg, "must be >= 0"),
    "logging_steps": (_pos, "must be > 0"),
    "max_length": (lambda v: v is None or v >= 1, "must be >= 1 (or null for no truncation)"),
    "max_steps": (
        lambda v: v == -1 or v > 0,
        "0 (or a negative number other than -1) trains nothing: use a positive number of steps, or -1 to train "
        "`num_train_epochs`",
    ),
}
LORA_RULES: dict[str, tuple[Any, str]] = {
    "r": (lambda v: v >= 1, "the LoRA rank must be >= 1 (e.g. 32)"),
    "lora_alpha": (_pos, "must be > 0 (e.g. 2 x r)"),
    "lora_dropout": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
}
SAMPLING_RULES: dict[str, tuple[Any, str]] = {
    "temperature": (_nonneg, "must be >= 0 (0 is greedy)"),
    "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "max_tokens": (lambda v: v >= 1, "must be >= 1"),
    "seed": (_nonneg, "must be >= 0"),
}


# --- helpers ---------------------------------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    """Annotated type of every keyword the class takes (dataclass fields, else __init__ parameters)."""
    fields = getattr(cls, "model_fields", None)
    if isinstance(fields, dict):  # a pydantic model
        return {name: f.annotation for name, f in fields.items()}
    with contextlib.suppress(Exception):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if hints:
            return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}
    if dataclasses.is_dataclass(cls):
        return {f.name: (f.type if not isinstance(f.type, str) else Any) for f in dataclasses.fields(cls)}
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:
        hints = {}
    return {
        name: hints.get(name, Any)
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def _type_name(tp: Any) -> str:
    text = getattr(tp, "__name__", None) or str(tp)
    return re.sub(r"\b(typing|collections\.abc|transformers\.[\w.]+|peft\.[\w.]+)\.", "", text)


def _check_type(cls: type, key: str, tp: Any, value: Any) -> str | None:
    """None if `value` fits `tp` (pydantic's lax rules: "1e-5" is a float, "maybe" is not a bool)."""
    from pydantic import TypeAdapter, ValidationError

    if tp is Any:
        return None
    ad = _adapters.get((cls, key))
    if ad is None:
        try:
            ad = TypeAdapter(tp)
        except Exception:  # an annotation pydantic cannot check (torch.dtype, ...): the class checks it
            ad = False
        _adapters[(cls, key)] = ad
    if ad is False:
        return None
    try:
        ad.validate_python(value)
    except ValidationError:
        return f"expected {_type_name(tp)}, got {value!r}"
    except Exception:
        return None
    return None


def _coerced(value: Any) -> Any:
    """Numbers written as strings ("1e-5", "4") read as numbers, as the train stage reads them."""
    if isinstance(value, str):
        for conv in (int, float):
            with contextlib.suppress(ValueError):
                return conv(value)
    return value


def _unknown(section: str, keys: set[str], allowed: set[str], target: str) -> list[Problem]:
    out = []
    for k in sorted(keys - allowed):
        close = difflib.get_close_matches(k, sorted(allowed), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        out.append(((section, k), f"unknown key for {target}{hint}"))
    return out


def _typed(section: str, values: dict[str, Any], cls: type, rules: dict[str, tuple[Any, str]]) -> list[Problem]:
    types = _field_types(cls)
    out: list[Problem] = []
    for k, v in values.items():
        if k not in types:
            continue
        bad = _check_type(cls, k, types[k], v)
        if bad:
            out.append(((section, k), bad))
            continue
        rule = rules.get(k)
        if rule is not None:
            ok, why = rule
            num = _coerced(v)
            try:
                fine = bool(ok(num))
            except TypeError:
                fine = True  # another type the class accepts (e.g. a list): its constructor judges it
            if not fine or (isinstance(num, float) and math.isnan(num)):
                out.append(((section, k), f"{v!r}: {why}"))
    return out


def _blame(section: str, values: dict[str, Any], exc: BaseException) -> Problem:
    """The key a constructor error is about (the first key of the section its message names)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for k in values:
        if re.search(rf"\b{re.escape(k)}\b", msg):
            return (section, k), msg
    for k, v in values.items():  # "bogus is not a valid SchedulerType": the key whose value it quotes
        if isinstance(v, str) and v and re.search(rf"(?<![\w-]){re.escape(v)}(?![\w-])", msg):
            return (section, k), msg
    return (section,), msg


def _from_input_error(section: str, exc: InputError) -> Problem:
    """Map runner's `recipe sft.key: message` errors onto (path, message)."""
    m = re.match(rf"recipe {section}(?:\.(\w+))?:\s*(.*)", str(exc), re.S)
    if not m:
        return (section,), str(exc)
    return ((section, m.group(1)) if m.group(1) else (section,)), m.group(2)


_ENV_DEPENDENT = re.compile(r"(?i)gpu|cuda|bf16|fp16|tf32|device|npu|xpu|mps|deepspeed|fsdp|distributed")


# --- sections --------------------------------------------------------------------------------------------------


def sft_problems(sft: dict[str, Any]) -> list[Problem]:
    from trl import SFTConfig

    from emsweep.train.resolve import OWNED_SFT_KEYS, coerce_numbers, field_names

    out = _unknown("sft", set(sft), field_names(SFTConfig), "trl.SFTConfig")
    for k, why in OWNED_SFT_KEYS.items():
        if k in sft:
            out.append((("sft", k), f"set by emsweep, not in `sft:` ({why})"))
    if out:
        return out
    out = _typed("sft", sft, SFTConfig, SFT_RULES)
    epochs = _coerced(sft.get("num_train_epochs", 1))
    steps = _coerced(sft.get("max_steps", -1))
    if (
        not out
        and isinstance(steps, (int, float))
        and steps <= 0
        and isinstance(epochs, (int, float))
        and epochs <= 0
    ):
        out.append(
            (
                ("sft", "num_train_epochs"),
                f"{sft.get('num_train_epochs')!r} trains nothing (no checkpoints, and eval would score only the "
                "base model): use a positive number of epochs, or set sft.max_steps",
            )
        )
    if out:
        return out
    import torch

    kwargs = coerce_numbers(dict(sft), SFTConfig)
    with tempfile.TemporaryDirectory(prefix="emsweep-check-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not torch.cuda.is_available():
            kwargs.setdefault("use_cpu", True)  # planning a GPU sweep on a login node must not fail on bf16
        try:
            SFTConfig(output_dir=f"{tmp}/run", **kwargs)
        except Exception as exc:  # TrainingArguments raises ValueError/TypeError/KeyError for bad values
            if not _ENV_DEPENDENT.search(str(exc)):
                out.append(_blame("sft", sft, exc))
    return out


def lora_problems(lora: dict[str, Any], method: str) -> list[Problem]:
    from peft import LoraConfig

    from emsweep.train.resolve import LORA_DEFAULTS, coerce_numbers, field_names, resolve_lora_kwargs

    out = _unknown("lora", set(lora), field_names(LoraConfig), "peft.LoraConfig")
    if out:
        return out
    out = _typed("lora", lora, LoraConfig, LORA_RULES)
    if out:
        return out
    from emsweep.recipe import Recipe

    try:
        merged = resolve_lora_kwargs(
            Recipe.model_construct(method=method, lora=dict(lora), quantization={}, sft={}, name="check")
        )
    except InputError as exc:
        return [_from_input_error("lora", exc)]
    if merged is None:
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            LoraConfig(**{**LORA_DEFAULTS, **coerce_numbers(merged, LoraConfig)})
    except Exception as exc:
        out.append(_blame("lora", lora, exc))
    return out


def quantization_problems(q: dict[str, Any]) -> list[Problem]:
    from transformers import BitsAndBytesConfig

    from emsweep.recipe import Recipe
    from emsweep.train.resolve import field_names, resolve_quantization_kwargs

    out = _unknown("quantization", set(q), field_names(BitsAndBytesConfig), "transformers.BitsAndBytesConfig")
    if out:
        return out
    out = _typed("quantization", q, BitsAndBytesConfig, {})
    if out:
        return out
    try:
        merged = resolve_quantization_kwargs(
            Recipe.model_construct(method="qlora", quantization=dict(q), lora={}, sft={}, name="check")
        )
    except InputError as exc:
        return [_from_input_error("quantization", exc)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            BitsAndBytesConfig(**(merged or {}))
    except Exception as exc:  # TypeError for types, AttributeError for an unknown torch dtype name
        out.append(_blame("quantization", q, exc))
    return out


def sampling_problems(sampling: dict[str, Any]) -> list[Problem]:
    from pydantic import ValidationError

    from emsweep.generate.base import SamplingSpec

    try:
        SamplingSpec.model_validate(sampling)
    except ValidationError as exc:
        out: list[Problem] = []
        for err in exc.errors():
            loc = ("eval", "sampling", *(str(p) for p in err["loc"]))
            msg = "unknown sampling key" if err["type"] == "extra_forbidden" else err["msg"]
            if err["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(err["loc"][-1]), list(SamplingSpec.model_fields), n=1)
                msg += f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(SamplingSpec.model_fields)}"
            out.append((loc, msg))
        return out
    return [(("eval", "sampling", *p[1:]), m) for p, m in _typed("sampling", sampling, SamplingSpec, SAMPLING_RULES)]


def _cached(key: Any, fn: Any, *args: Any) -> list[Problem]:
    k = dumps_json(key)
    if k not in _cache:
        _cache[k] = fn(*args)
    return list(_cache[k])


def recipe_problems(recipe: Any) -> list[Problem]:
    """Every problem in the passthrough sections (and the value checks pydantic's schema cannot express)."""
    out: list[Problem] = []
    method = recipe.method
    if method in TRAIN_METHODS:
        out += _cached(["sft", recipe.sft], sft_problems, dict(recipe.sft))
    if method in ("lora", "qlora"):
        out += _cached(["lora", method, recipe.lora], lora_problems, dict(recipe.lora), method)
    if method == "qlora":
        out += _cached(["quantization", recipe.quantization], quantization_problems, dict(recipe.quantization))
    ev = getattr(recipe, "eval", None)
    if ev is not None:
        out += _cached(["sampling", ev.sampling], sampling_problems, dict(ev.sampling))
        if ev.samples_per_paraphrase is not None and ev.samples_per_paraphrase < 1:
            out.append(
                (
                    ("eval", "samples_per_paraphrase"),
                    f"{ev.samples_per_paraphrase}: must be >= 1 (leave it out to use the suite's value)",
                )
            )
        if ev.batch_size < 1:
            out.append((("eval", "batch_size"), f"{ev.batch_size}: must be >= 1"))
    mp = Path(recipe.model.path).expanduser() if getattr(recipe, "model", None) is not None else None
    if mp is not None and mp.exists() and (not mp.is_dir() or not (mp / "config.json").exists()):
        out.append(
            (
                ("model", "path"),
                f"{mp} is not a model folder (no config.json): give a folder with config.json, tokenizer and "
                "weights, a hub id, or a path that does not exist yet together with `init_shape`",
            )
        )
    ck = getattr(recipe, "checkpoints", None)
    for i, step in enumerate((ck.steps or []) if ck is not None else []):
        if step < 1:
            out.append(
                (
                    ("checkpoints", "steps", str(i)),
                    f"{step}: checkpoint steps count from 1 (step 0, the base model, is always evaluated); "
                    "remove it",
                )
            )
    return out
