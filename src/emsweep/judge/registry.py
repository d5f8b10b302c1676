"""Judge kinds by name (lazy "module:Class" entries, as lm-evaluation-harness registers models), construction from
a typed `JudgeSpec`, and the `JudgePanel` that hands each item to its kind.

Adding a kind is one module with a class implementing `emsweep.judge.base.Judge` plus one line in `JUDGE_KINDS`;
a suite question picks it with `judge_kind: <name>` (docs/judge.md).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emsweep.generate.registry import LOCAL_BACKENDS
from emsweep.io import InputError
from emsweep.judge.base import Judge, JudgeItem, Judgment
from emsweep.judge.identity import JudgeIdentity, model_identity, prompts_sha256
from emsweep.registry import load_entry

if TYPE_CHECKING:
    from emsweep.judge.judge import LogprobJudge
    from emsweep.judge.spec import JudgeSpec

log = logging.getLogger(__name__)

JUDGE_KINDS: dict[str, str] = {
    "logprob": "emsweep.judge.kinds:LogprobKind",
    "categorical": "emsweep.judge.kinds:CategoricalKind",
    "rule": "emsweep.judge.rules:RuleJudge",
}
KIND_ORDER = ("logprob", "categorical", "rule")  # which kind names a mixed suite's judge_identity.kind


def judge_kind_class(name: str) -> type:
    """The class registered under `name`; a clear error for an unknown name or a broken entry."""
    return load_entry(JUDGE_KINDS, "judge kind", name)


def _predicted_identity(spec: JudgeSpec) -> JudgeIdentity:
    """The identity the model judge of `spec` will have, without loading it (only its files are read)."""
    from emsweep.generate.factory import backend_class
    from emsweep.judge.judge import METHOD_VERSION, decoding_params

    local = None if spec.backend in LOCAL_BACKENDS else False
    key, fp = model_identity(spec.model, local=local)
    exact = bool(getattr(backend_class(spec.backend), "supports_token_ids", True))
    return JudgeIdentity(
        kind=spec.kind,
        model=spec.model,
        model_key=key,
        fingerprint=fp,
        decoding=decoding_params(
            exact=exact,
            top_k=spec.top_k,
            min_number_mass=spec.min_number_mass,
            max_pruned_mass=spec.max_pruned_mass,
        ),
        method_version=METHOD_VERSION,
    )


class JudgePanel:
    """Judges `JudgeItem`s of any registered kind: model kinds share one (lazily built) `LogprobJudge` engine,
    rule kinds need none. `identity` is the panel's (the model's, or the rule judge's when there is no model)."""

    def __init__(
        self,
        engine: LogprobJudge | Any | None = None,
        *,
        engine_factory: Callable[[], Any] | None = None,
        identity: JudgeIdentity | None = None,
        display: str | None = None,
    ) -> None:
        self._engine = engine
        self._factory = engine_factory
        self._kinds: dict[str, Judge] = {}
        if identity is None and engine is not None:
            identity = getattr(engine, "identity", None)
            if not isinstance(identity, JudgeIdentity):
                mid = str(getattr(engine, "model_id", None) or type(engine).__name__)
                identity = JudgeIdentity(kind="logprob", model=mid, model_key=mid)
        if identity is None:
            from emsweep.judge.rules import RULE_METHOD_VERSION

            identity = JudgeIdentity(kind="rule", method_version=RULE_METHOD_VERSION)
        self.identity = identity
        self.display = display or identity.model or "rule"


    @property
    def engine(self) -> Any:
        """The model judge, built on first use (a suite of rule questions never loads it)."""
        if self._engine is None:
            if self._factory is None:
                raise InputError(
                    "this suite has questions judged by a model, but no judge model was given: pass --judge MODEL "
                    "(or set eval.judge.model in the recipe)"
                )
            self._engine = self._factory()
        return self._engine

    def kind(self, name: str) -> Judge:
        if name not in self._kinds:
            cls = judge_kind_class(name)
            engine = self.engine if getattr(cls, "needs_model", True) else None
            self._kinds[name] = cls(engine)
        return self._kinds[name]

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgment]:
        """Judgments in the order of `items`, each kind called once per batch."""
        out: list[Judgment | None] = [None] * len(items)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            groups[it.kind].append(i)
        for name, idxs in groups.items():
            res = self.kind(name).judge([items[i] for i in idxs])
            if len(res) != len(idxs):
                raise RuntimeError(f"judge kind {name!r} returned {len(res)} judgments for {len(idxs)} items")
            for i, r in zip(idxs, res, strict=True):
                out[i] = r
        return [o for o in out if o is not None]

    def identity_for(self, kinds: Sequence[str], prompts: Sequence[str]) -> JudgeIdentity:
        """The `judge_identity` of a suite judged by this panel: its kinds and the hash of its judge prompts."""
        used = sorted(set(kinds), key=lambda k: (KIND_ORDER.index(k) if k in KIND_ORDER else 99, k))
        main = used[0] if used else self.identity.kind
        return replace(self.identity, kind=main, kinds=tuple(used), prompt_sha256=prompts_sha256(list(prompts)))

    def cache_counts(self) -> tuple[int, int]:
        cache = getattr(self._engine, "cache", None) if self._engine is not None else None
        if cache is None:
            return 0, 0
        return int(getattr(cache, "hits", 0)), int(getattr(cache, "misses", 0))

    def close(self) -> None:
        if self._engine is not None:
            close = getattr(self._engine, "close", None)
            if callable(close):
                close()
            else:
                backend = getattr(self._engine, "backend", None)
                if backend is not None:
                    backend.close()


def as_panel(judge: Any) -> JudgePanel:
    """A ready judge object (a JudgePanel, a LogprobJudge, or anything with `score_numeric`) as a panel."""
    return judge if isinstance(judge, JudgePanel) else JudgePanel(judge)


def build_engine(
    spec: JudgeSpec,
    *,
    cache_path: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    identity: JudgeIdentity | None = None,
    chunk_size: int | None = None,
) -> LogprobJudge:
    """The model judge of `spec` on a fresh backend, with a persistent cache at `cache_path`."""
    from emsweep.generate.factory import make_backend
    from emsweep.judge.cache import JudgeCache
    from emsweep.judge.judge import LogprobJudge

    backend = make_backend(
        spec.backend,
        spec.model,
        base_url=spec.base_url,
        engine=dict(spec.engine) or None,
        batch_size=batch_size or spec.batch_size,
    )
    cache = JudgeCache(cache_path) if cache_path is not None else None
    try:
        return LogprobJudge(
            backend,
            cache=cache,
            progress=progress,
            top_k=spec.top_k,
            min_number_mass=spec.min_number_mass,
            max_pruned_mass=spec.max_pruned_mass,
            identity=identity,
            **({"chunk_size": chunk_size} if chunk_size else {}),
        )
    except BaseException:
        backend.close()
        raise


def build_judge(
    spec: JudgeSpec | None,
    *,
    cache_path: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    chunk_size: int | None = None,
) -> JudgePanel:
    """A JudgePanel for `spec` (None: rules only). The model is identified now (its files are fingerprinted,
    an unreadable file is an InputError) and loaded only when a model-judged item arrives."""
    if spec is None or not spec.model:
        return JudgePanel()
    ident = _predicted_identity(spec)
    if ident.fingerprint is None and spec.backend in LOCAL_BACKENDS and not Path(spec.model).exists():
        log.warning(
            "judge %s: not a local folder nor in the local Hugging Face cache; it is identified by its name only",
            spec.model,
        )

    def factory() -> LogprobJudge:
        return build_engine(
            spec,
            cache_path=cache_path,
            batch_size=batch_size,
            progress=progress,
            identity=ident,
            chunk_size=chunk_size,
        )

    return JudgePanel(engine_factory=factory, identity=ident, display=spec.model)
