"""The rule judge: checkable answers scored without a model (regex, exact match, or a Python callable).

A rule question in a suite (`type: rule`, see docs/judge.md) gives one `RuleSpec` per metric:
- `regex`: `re.search(regex, answer)` (flags inline, e.g. `(?i)`); `ignore_case: true` adds re.IGNORECASE;
- `exact`: `answer.strip() == exact.strip()`, case-sensitive unless `ignore_case: true`;
- `callable`: "module:function", called as `fn(answer, question)`; returns a 0-100 number, a label, or None.
`match` / `no_match` are what a regex or exact rule yields: numbers (a 0-100 metric) or strings (labels).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, ClassVar

from emsweep.io import InputError
from emsweep.judge.base import JudgeItem, Judgment, RuleSpec
from emsweep.judge.identity import JudgeIdentity

RULE_METHOD_VERSION = 1


@lru_cache(maxsize=256)
def resolve_callable(spec: str) -> Callable[..., Any]:
    """`module:function` -> the function; an InputError that says what is wrong otherwise."""
    mod, sep, name = spec.partition(":")
    if not sep or not mod or not name:
        raise InputError(f"rule callable {spec!r}: write it as 'package.module:function'")
    try:
        module = importlib.import_module(mod)
    except ImportError as exc:
        raise InputError(f"rule callable {spec!r}: cannot import {mod!r} ({exc})") from None
    fn = module
    for part in name.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise InputError(f"rule callable {spec!r}: {mod} has no {name!r}")
    if not callable(fn):
        raise InputError(f"rule callable {spec!r}: {name!r} is not callable")
    return fn


def callable_sha256(spec: str) -> str | None:
    """A hash of the callable's source, so an edited rule function is another judge (None if no source)."""
    try:
        src = inspect.getsource(resolve_callable(spec))
    except (OSError, TypeError):
        return None
    return hashlib.sha256(src.encode()).hexdigest()


def check_rule(spec: RuleSpec, where: str) -> None:
    """Validate a rule at suite load time (the callable imports, the regex compiles, values are in range)."""
    given = [k for k in ("regex", "exact", "callable") if getattr(spec, k) is not None]
    if len(given) != 1:
        raise InputError(f"{where}: give exactly one of regex / exact / callable (got {given or 'none'})")
    if spec.regex is not None:
        try:
            re.compile(spec.regex)
        except re.error as exc:
            raise InputError(f"{where}: regex {spec.regex!r} does not compile ({exc})") from None
    if spec.callable is not None:
        try:
            resolve_callable(spec.callable)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
    for key in ("match", "no_match"):
        v = getattr(spec, key)
        if isinstance(v, bool) or (v is not None and not isinstance(v, (int, float, str))):
            raise InputError(f"{where}: {key} must be a number 0-100 or a label string, got {v!r}")
        if isinstance(v, (int, float)) and not 0 <= v <= 100:
            raise InputError(f"{where}: {key} must be within 0-100, got {v}")


def _verdict(metric: str, value: Any, where: str) -> Judgment:
    if value is None:
        return Judgment(metric=metric, kind="rule", none_reason="unparsable", mass=0.0)
    if isinstance(value, str):
        return Judgment(metric=metric, kind="rule", label=value, probs={value: 1.0}, mass=1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: returned {value!r}; a rule must yield a 0-100 number, a label or None")
    v = float(value)
    if not 0.0 <= v <= 100.0:
        raise InputError(f"{where}: returned {v}; a numeric rule must yield a value within 0-100")
    return Judgment(metric=metric, kind="rule", score=v, mass=1.0)


def apply_rule(spec: RuleSpec, metric: str, answer: str, context: Any = None) -> Judgment:
    if spec.callable is not None:
        fn = resolve_callable(spec.callable)
        return _verdict(metric, fn(answer, context), f"rule callable {spec.callable} (metric {metric!r})")
    if spec.regex is not None:
        hit = re.search(spec.regex, answer, re.IGNORECASE if spec.ignore_case else 0) is not None
    else:
        a, e = answer.strip(), str(spec.exact).strip()
        hit = a.casefold() == e.casefold() if spec.ignore_case else a == e
    return _verdict(metric, spec.match if hit else spec.no_match, f"rule for metric {metric!r}")


class RuleJudge:
    """Scores `JudgeItem`s that carry a `RuleSpec`; no model, no cache (a rule costs nothing to rerun)."""

    kind: ClassVar[str] = "rule"
    needs_model: ClassVar[bool] = False

    def __init__(self, engine: Any = None) -> None:
        del engine  # rules need no model

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgment]:
        out = []
        for it in items:
            if it.rule is None:
                raise ValueError(f"rule item for metric {it.metric!r} has no rule")
            out.append(apply_rule(it.rule, it.metric, it.answer, it.context))
        return out

    def identity(self) -> JudgeIdentity:
        return JudgeIdentity(kind=self.kind, method_version=RULE_METHOD_VERSION)
