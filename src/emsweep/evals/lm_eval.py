"""`lm_eval:<task>[,<task>...]` suites: EleutherAI's lm-evaluation-harness on every checkpoint of a run.

The harness does the work it exists for (task YAMLs, prompts, few-shot, log-likelihoods, metrics); this module
picks the checkpoints, reuses one loaded model across them, and writes one folder per checkpoint x task:

```
eval/<checkpoint>/lm_eval/<task>/metrics.json        CheckpointMetrics (suite "lm_eval/<task>", suite_kind
                                                      "lm_eval"); the harness's numbers in extra["lm_eval"]
eval/<checkpoint>/lm_eval/<task>/samples_<task>.jsonl the harness's per-document samples (log_samples)
eval/<checkpoint>/lm_eval/.done/task.<name>.json     done-marker per requested name (fingerprint of the options)
```
A group (e.g. `mmlu`) gets one folder with its aggregate and its subtasks' numbers in `extra.lm_eval.subtasks`;
a tag (e.g. `truthfulqa`) expands to one folder per member task.

Model loading (HF backend): the base model is loaded once, by the harness (`HFLM(pretrained=base,
peft=<first adapter>)`); every further LoRA checkpoint is `PeftModel.load_adapter` + `set_adapter` on that same
model, and step 0 runs inside `disable_adapter()`. Full checkpoints are loaded by path, one at a time (each
`HFLM(pretrained=checkpoint-<step>)` frees the previous one). vLLM backend: one engine with LoRA enabled; each LoRA
checkpoint is a `LoRARequest` swapped into the harness's `VLLM.lora_request` (None for step 0); full checkpoints
get an engine each (vLLM has no in-place weight swap).

Offline: tasks in emsweep's own folder (`resources/lm_eval/`) and in `eval.lm_eval.include_path` are indexed
without the harness's ~15 000 builtin YAMLs when they name every requested task (seconds instead of a minute).

Over ~450 lines because it is one adapter to the harness: task lookup, checkpoint -> model (HF or vLLM, LoRA
swapped in place) and results -> emsweep's files share the harness's objects and must change together.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from emsweep.io import InputError, atomic_write_json, atomic_write_text, mark_done, read_marker
from emsweep.layout import CellPaths, CheckpointRef

log = logging.getLogger(__name__)

PREFIX = "lm_eval:"
SUITE_DIR = "lm_eval"  # eval/<checkpoint>/lm_eval/<task>/
SUITE_KIND = "lm_eval"
METHOD_VERSION = 1  # bump when what a marker fingerprints changes meaning
BUILTIN_TASKS = Path(__file__).resolve().parent.parent / "resources" / "lm_eval"
_SKIP_KEYS = {"alias", "name", "sample_len", "sample_count", "samples"}


# --- suite specs and options ------------------------------------------------------------------------------------


def is_lm_eval_suite(spec: object) -> bool:
    """Whether a `--suite` value names lm-evaluation-harness tasks (`lm_eval:<task>[,<task>...]`)."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_suite(spec: str) -> list[str]:
    """`lm_eval:a,b` -> ["a", "b"]; an empty list is an InputError."""
    names = [t.strip() for t in spec[len(PREFIX) :].split(",") if t.strip()]
    if not names:
        raise InputError(f"--suite {spec!r}: name at least one task, e.g. lm_eval:truthfulqa_mc2")
    for n in names:
        if "/" in n or n.startswith("."):
            raise InputError(
                f"--suite {spec!r}: {n!r} is not a task name (put local task YAMLs in a folder and set "
                "eval.lm_eval.include_path)"
            )
    return list(dict.fromkeys(names))


def _require_harness() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise InputError(
            "lm_eval suites need EleutherAI's lm-evaluation-harness: pip install 'emsweep[lmeval]' "
            "(or pip install lm-eval)"
        ) from None
    return lm_eval


def _spec_of(ev: Any) -> Any:
    """The `eval.lm_eval` options of a run's `eval:` section (EvalSpec), or the defaults without one."""
    from emsweep.evals.spec import LmEvalSpec

    return ev.lm_eval if ev is not None else LmEvalSpec()


# --- tasks ------------------------------------------------------------------------------------------------------


_BUILTIN_DIR: Path | None = None
_TASK_MANAGERS: dict[tuple[tuple[str, ...], bool], Any] = {}


def builtin_task_dir() -> Path:
    """emsweep's task YAMLs with `dataset_kwargs.data_files` made absolute (the harness reads them against the
    working directory; ours sit next to their YAML), rendered once per process into a temporary folder."""
    import atexit
    import shutil

    import yaml

    global _BUILTIN_DIR
    if _BUILTIN_DIR is None or not _BUILTIN_DIR.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix="emsweep-lm-eval-"))
        atexit.register(shutil.rmtree, tmp, True)
        for src in sorted(BUILTIN_TASKS.glob("*.yaml")):
            cfg = yaml.safe_load(src.read_text(encoding="utf-8"))
            files = (cfg.get("dataset_kwargs") or {}).get("data_files")
            if isinstance(files, dict):
                cfg["dataset_kwargs"]["data_files"] = {
                    k: v if Path(v).is_absolute() else str((BUILTIN_TASKS / v).resolve())
                    for k, v in files.items()
                }
            atomic_write_text(tmp / src.name, yaml.safe_dump(cfg, sort_keys=False))
        _BUILTIN_DIR = tmp
    return _BUILTIN_DIR


def _include_paths(spec: Any) -> list[Path]:
    raw = spec.include_path
    paths = [raw] if isinstance(raw, str) else list(raw or [])
    out = []
    for p in paths:
        path = Path(os.path.expanduser(p))
        if not path.exists():
            raise InputError(f"eval.lm_eval.include_path: {p!r} does not exist (a folder of task YAMLs)")
        out.append(path.resolve())
    return out


def task_manager(tasks: Sequence[str], include: Sequence[Path]) -> Any:
    """A TaskManager that knows every name in `tasks`: the local folders alone when they suffice (fast), else
    with the harness's own tasks. An unknown name is an InputError with the harness's message and near names."""
    _require_harness()
    from lm_eval.tasks import TaskManager

    def manager(defaults: bool) -> Any:  # indexing the harness's own tasks takes a while: once per process
        key = (tuple(str(p) for p in include), defaults)
        if key not in _TASK_MANAGERS:
            _TASK_MANAGERS[key] = TaskManager(include_path=list(key[0]), include_defaults=defaults)
        return _TASK_MANAGERS[key]

    tm = manager(False)
    if any(t not in tm.all_tasks for t in tasks):
        tm = manager(True)
    for t in tasks:
        if t not in tm.all_tasks:
            try:
                tm.load([t])
                continue  # a spec the index does not list but the harness accepts
            except KeyError as exc:
                msg = str(exc.args[0]) if exc.args else str(exc)
            near = difflib.get_close_matches(t, tm.all_tasks, n=5)
            raise InputError(
                f"lm_eval task {t!r}: lm-evaluation-harness says: {msg}"
                + (f"; did you mean {', '.join(near)}?" if near else "")
                + " (`lm_eval ls tasks` lists the harness's tasks; local YAMLs go in eval.lm_eval.include_path)"
            )
    return tm


def _dataset_of(tm: Any, task: str, message: str) -> str:
    m = re.search(r"(?:reach|find|load) (?:dataset )?'([^']+)'", message)
    if m:
        return m.group(1)
    entry = tm.task_index.get(task)
    cfg = getattr(entry, "cfg", None) or {}
    return str(cfg.get("dataset_path") or "its dataset")


def check_tasks(tm: Any, tasks: Sequence[str]) -> None:
    """Load each task once before any model is loaded, so a dataset that is not available (offline, not cached)
    fails fast with a message naming it and the switch that allows the download."""
    for t in tasks:
        try:
            tm.load([t])
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            offline = any(
                k in text
                for k in ("Offline", "offline", "Couldn't reach", "ConnectionError", "LocalEntryNotFound")
            )
            if offline or isinstance(exc, (ConnectionError, OSError)):
                ds = _dataset_of(tm, t, text)
                raise InputError(
                    f"lm_eval task {t!r} needs the dataset {ds!r}, which is not available offline ({text.strip()}). "
                    "Allow the download with HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0 in the environment (emsweep "
                    "never downloads a dataset by itself), or run once where the hub is reachable so the "
                    "datasets cache holds it."
                ) from None
            raise InputError(f"lm_eval task {t!r}: the harness cannot load it: {text}") from None


# --- checkpoints -> models --------------------------------------------------------------------------------------


def _checkpoint_kind(ref: CheckpointRef) -> str:
    if ref.kind == "api":
        raise InputError(
            f"checkpoint {ref.key} is an API model ({ref.model}): lm_eval suites run local weights (hf or vllm); "
            "API cells get no log-likelihoods to score multiple choice"
        )
    if ref.kind == "base":
        return "base"
    from emsweep.generate.hf import detect_checkpoint_kind

    if ref.path is None:
        raise InputError(f"checkpoint {ref.key} (kind {ref.kind}) has no folder")
    return detect_checkpoint_kind(ref.path)


def _load_error(what: str, exc: BaseException) -> InputError:
    return InputError(f"lm_eval ({what}): the backend cannot load it: {type(exc).__name__}: {exc}")


class _HFModels:
    """One HFLM over the base model for step 0 and every LoRA checkpoint (adapters swapped on that one model);
    a fresh HFLM per full checkpoint."""

    def __init__(self, base_model: str, lora_paths: list[Path], batch_size: Any, model_args: dict[str, Any]):
        self.base_model = base_model
        self.lora_paths = lora_paths
        self.batch_size = batch_size
        self.args = {"device": "cuda" if _cuda() else "cpu", **model_args}
        self._lm: Any = None
        self._adapters: dict[str, str] = {}
        self._full: tuple[str, Any] | None = None

    def _hflm(self, pretrained: str, **extra: Any) -> Any:
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=pretrained, batch_size=self.batch_size, **self.args, **extra)

    def _shared(self) -> Any:
        if self._lm is None:
            first = self.lora_paths[0] if self.lora_paths else None
            try:
                self._lm = self._hflm(self.base_model, **({"peft": str(first)} if first else {}))
            except Exception as exc:
                what = f"base model {self.base_model!r}" + (f" with the adapter in {first}" if first else "")
                raise _load_error(what, exc) from exc
            if first is not None:
                self._adapters[str(first)] = "default"  # PeftModel.from_pretrained's adapter name
        return self._lm

    @contextlib.contextmanager
    def model(self, ref: CheckpointRef, kind: str) -> Iterator[Any]:
        if kind == "full":
            key = str(Path(ref.path).resolve())  # type: ignore[arg-type]
            if self._full is None or self._full[0] != key:
                self._full = None
                import gc

                gc.collect()
                try:
                    self._full = (key, self._hflm(key))
                except Exception as exc:
                    raise _load_error(f"full checkpoint {key}", exc) from exc
            yield self._full[1]
            return
        lm = self._shared()
        peft = self._adapters and hasattr(lm.model, "disable_adapter")
        if kind == "base":
            with lm.model.disable_adapter() if peft else contextlib.nullcontext():
                yield lm
            return
        key = str(Path(ref.path).resolve())  # type: ignore[arg-type]
        if key not in self._adapters:
            name = f"a{len(self._adapters)}"  # PEFT adapter names become module keys: no dots or slashes
            try:
                lm.model.load_adapter(key, adapter_name=name, is_trainable=False)
            except Exception as exc:
                raise _load_error(f"LoRA adapter {key} on {self.base_model!r}", exc) from exc
            self._adapters[key] = name
        lm.model.set_adapter(self._adapters[key])
        yield lm

    def close(self) -> None:
        self._lm = None
        self._full = None


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _lora_rank(paths: list[Path]) -> int:
    ranks = [16]
    for p in paths:
        with contextlib.suppress(OSError, ValueError, TypeError):
            cfg = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
            ranks.append(int(cfg.get("r") or 0))
            ranks.extend(int(v) for v in (cfg.get("rank_pattern") or {}).values())
    return max(ranks)


def make_vllm_lm(pretrained: str, **kwargs: Any) -> Any:
    """The harness's VLLM model class (a seam: tests replace it with a fake)."""
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM(pretrained=pretrained, **kwargs)


def make_lora_request(name: str, lora_id: int, path: str) -> Any:
    """vLLM's LoRARequest (a seam, like make_vllm_lm)."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, lora_id, path)


class _VLLMModels:
    """One vLLM engine with LoRA enabled for step 0 and every LoRA checkpoint (a LoRARequest each); an engine per
    full checkpoint."""

    def __init__(self, base_model: str, lora_paths: list[Path], batch_size: Any, model_args: dict[str, Any]):
        self.base_model = base_model
        self.lora_paths = lora_paths
        self.args = {"batch_size": batch_size if batch_size is not None else "auto", **model_args}
        self._lm: Any = None
        # the harness names the adapter it is built with LoRARequest("finetuned", 1, path): keep id 1 for it
        self._ids: dict[str, int] = {str(lora_paths[0].resolve()): 1} if lora_paths else {}
        self._full: tuple[str, Any] | None = None

    def _shared(self) -> Any:
        if self._lm is None:
            extra: dict[str, Any] = {}
            if self.lora_paths:  # the harness enables LoRA when given an adapter; ranks sized to the largest
                extra = {
                    "lora_local_path": str(self.lora_paths[0]),
                    "max_lora_rank": _lora_rank(self.lora_paths),
                }
            try:
                self._lm = make_vllm_lm(self.base_model, **{**extra, **self.args})
            except Exception as exc:
                raise _load_error(f"base model {self.base_model!r} (vLLM)", exc) from exc
        return self._lm

    @contextlib.contextmanager
    def model(self, ref: CheckpointRef, kind: str) -> Iterator[Any]:
        if kind == "full":
            key = str(Path(ref.path).resolve())  # type: ignore[arg-type]
            if self._full is None or self._full[0] != key:
                self._full = None
                try:
                    self._full = (key, make_vllm_lm(key, **self.args))
                except Exception as exc:
                    raise _load_error(f"full checkpoint {key} (vLLM)", exc) from exc
            yield self._full[1]
            return
        lm = self._shared()
        if kind == "base":
            lm.lora_request = None
        else:
            key = str(Path(ref.path).resolve())  # type: ignore[arg-type]
            self._ids.setdefault(key, len(self._ids) + 1)  # vLLM caches adapters by id: one id per folder
            lm.lora_request = make_lora_request(ref.name, self._ids[key], key)
        yield lm

    def close(self) -> None:
        self._lm = None
        self._full = None


# --- results -> files -------------------------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _metrics_of(res: dict[str, Any]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """The harness's `{"acc,none": .5, "acc_stderr,none": .1, "alias": ...}` -> ({"acc,none": .5},
    {"acc,none": .1}); keys stay in the harness's `metric,filter` form."""
    values: dict[str, float | None] = {}
    stderr: dict[str, float | None] = {}
    for k, v in res.items():
        if k in _SKIP_KEYS:
            continue
        metric, _, filt = k.partition(",")
        if metric.endswith("_stderr"):
            stderr[f"{metric[: -len('_stderr')]},{filt or 'none'}"] = _num(v)
        elif _num(v) is not None or v is None:
            values[f"{metric},{filt or 'none'}"] = _num(v)
    return values, stderr


def _primary(task: str, values: dict[str, Any], configs: dict[str, Any]) -> str | None:
    """The task's headline metric: its first `metric_list` entry under its first filter, else the first one."""
    cfg = configs.get(task) or {}
    metrics = [m.get("metric") for m in cfg.get("metric_list") or [] if isinstance(m, dict)]
    filters = [f.get("name") for f in cfg.get("filter_list") or [] if isinstance(f, dict)] or ["none"]
    for m in metrics:
        for f in filters:
            if f"{m},{f}" in values:
                return f"{m},{f}"
    return next(iter(values), None)


def _subtasks(group_subtasks: dict[str, list[str]], name: str) -> list[str]:
    out: list[str] = []
    for child in group_subtasks.get(name, []):
        out.append(child)
        out.extend(_subtasks(group_subtasks, child))
    return out


def _folders(requested: list[str], results: dict[str, Any]) -> dict[str, list[str]]:
    """Requested name -> the result names it owns folders for: itself if the harness reports it (task or group),
    else (a tag) its member tasks."""
    reported = results.get("results") or {}
    gs = results.get("group_subtasks") or {}
    owned: set[str] = set()
    out: dict[str, list[str]] = {}
    for name in requested:
        if name in reported:
            out[name] = [name]
            owned.add(name)
            owned.update(_subtasks(gs, name))
    for name in requested:
        if name not in out:
            members = [t for t in reported if t not in owned and t not in gs]
            out[name] = members
            owned.update(members)
    return out


def _write_task(
    folder: Path,
    name: str,
    results: dict[str, Any],
    ref: CheckpointRef,
    cell: str,
    backend: str,
    options: dict[str, Any],
) -> Path:
    from emsweep.evals.schema import CheckpointMetrics

    _require_harness()
    from lm_eval.utils import handle_non_serializable

    res = (results.get("results") or {}).get(name) or {}
    configs = results.get("configs") or {}
    values, stderr = _metrics_of(res)
    primary = _primary(name, values, configs)
    gs = results.get("group_subtasks") or {}
    subs = [t for t in _subtasks(gs, name) if t not in gs]
    n_samples = results.get("n-samples") or {}
    leaves = subs or [name]
    n = sum(int((n_samples.get(t) or {}).get("effective") or 0) for t in leaves)
    n_orig = sum(int((n_samples.get(t) or {}).get("original") or 0) for t in leaves)
    hib = (results.get("higher_is_better") or {}).get(name) or {}
    folder.mkdir(parents=True, exist_ok=True)
    samples_files = []
    for t in leaves:
        rows = (results.get("samples") or {}).get(t)
        if rows:
            path = folder / f"samples_{t}.jsonl"
            text = "".join(
                json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n" for r in rows
            )
            atomic_write_text(path, text)
            samples_files.append(path.name)
    info = {
        "task": name,
        "kind": "group" if name in gs else "task",
        "primary_metric": primary,
        "value": values.get(primary) if primary else None,
        "stderr": stderr.get(primary) if primary else None,
        "metrics": values,
        "stderrs": stderr,
        "higher_is_better": hib,
        "n_docs": n,
        "n_docs_original": n_orig,
        "n_shot": (results.get("n-shot") or {}).get(name),
        "version": (results.get("versions") or {}).get(name),
        "subtasks": {t: _metrics_of((results.get("results") or {}).get(t) or {})[0] for t in subs},
        "task_config": configs.get(name),
        "options": options,
        "harness_version": _harness_version(),
        "samples_files": samples_files,
        "model": ref.key if ref.kind != "base" else f"{ref.key} (base {ref.base_model})",
    }
    m = CheckpointMetrics(
        cell=cell,
        checkpoint=ref.name,
        step=ref.step,
        suite=f"{SUITE_DIR}/{name}",
        suite_kind=SUITE_KIND,
        n=n,
        n_samples=n,
        backend=f"lm_eval-{backend}",
        params={k: options.get(k) for k in ("limit", "num_fewshot", "apply_chat_template")},
        extra={"lm_eval": json.loads(json.dumps(info, default=handle_non_serializable))},
    )
    path = folder / "metrics.json"
    atomic_write_json(path, m.model_dump(mode="json"))
    return path


def _harness_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("lm_eval")
    except Exception:
        return None


# --- the stage --------------------------------------------------------------------------------------------------


def _task_options(spec: Any, task: str) -> dict[str, Any]:
    per = spec.tasks.get(task)
    return {
        "limit": per.limit if per is not None and per.limit is not None else spec.limit,
        "num_fewshot": per.num_fewshot
        if per is not None and per.num_fewshot is not None
        else spec.num_fewshot,
        "apply_chat_template": spec.apply_chat_template,
        "fewshot_as_multiturn": spec.fewshot_as_multiturn,
        "gen_kwargs": spec.gen_kwargs,
        "bootstrap_iters": spec.bootstrap_iters,
        "seed": spec.seed,
    }


def _yaml_digest(paths: Sequence[Path]) -> str:
    """What the local task folders hold (YAMLs and their small data files), so editing a task reruns it."""
    h = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            if f.suffix in (".yaml", ".yml", ".py", ".jsonl", ".json") and f.stat().st_size < 50_000_000:
                h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def _fingerprint(
    task: str, ref: CheckpointRef, backend: str, opts: dict[str, Any], spec: Any, local: str
) -> dict:
    return {
        "method_version": METHOD_VERSION,
        "task": task,
        "checkpoint": str(ref.path) if ref.kind != "base" else ref.base_model,
        "backend": backend,
        "batch_size": str(spec.batch_size),
        "model_args": spec.model_args,
        "options": opts,
        "local_tasks_sha256": local,
        "harness": _harness_version(),
    }


def run_lm_eval(
    run_dir: str | os.PathLike[str],
    suites: Sequence[str],
    refs: Sequence[CheckpointRef],
    *,
    spec: Any = None,
    backend: str | None = None,
    batch_size: int | str | None = None,
    cell: str | None = None,
) -> dict[str, str]:
    """Run the tasks of `suites` (`lm_eval:...` specs) on every checkpoint in `refs`; returns
    `<checkpoint>/lm_eval/<task>` -> metrics.json path (done folders included). Skips what is done."""
    from emsweep.evals.spec import LmEvalSpec

    lm_eval = _require_harness()
    spec = spec if spec is not None else LmEvalSpec()
    backend = backend or spec.backend or "hf"
    if backend not in ("hf", "vllm"):
        raise InputError(
            f"lm_eval suites run through the harness's hf or vllm backend, not {backend!r} "
            "(set eval.lm_eval.backend, or --backend hf|vllm)"
        )
    batch = spec.batch_size if spec.batch_size is not None else (batch_size or 1)
    run = CellPaths.of(run_dir)
    cell = cell or run.name
    tasks = list(dict.fromkeys(t for s in suites for t in parse_suite(s)))
    kinds = {r.name: _checkpoint_kind(r) for r in refs}  # unloadable folders fail before any model loads
    include = _include_paths(spec)
    local = _yaml_digest([BUILTIN_TASKS, *include])
    out: dict[str, str] = {}

    # what is left to do, per checkpoint
    todo: dict[str, list[str]] = {}
    for r in refs:
        root = run.eval_dir(r.name, SUITE_DIR)
        for t in tasks:
            info = read_marker(root, f"task.{t}")
            fp = _fingerprint(t, r, backend, _task_options(spec, t), spec, local)
            if info is not None and info.get("fingerprint") == fp:
                for folder in info.get("folders", []):
                    out[f"{r.name}/{SUITE_DIR}/{folder}"] = str(root / folder / "metrics.json")
            else:
                todo.setdefault(r.name, []).append(t)
    if not todo:
        return out

    tm = task_manager(tasks, [builtin_task_dir(), *include])
    check_tasks(tm, [t for ts in todo.values() for t in dict.fromkeys(ts)])
    pending = [r for r in refs if r.name in todo]
    base_models = {r.base_model for r in pending}
    if len(base_models) > 1:
        raise InputError(f"checkpoints sit on different base models {sorted(base_models)}; one run at a time")
    base_model = next(iter(base_models))
    loras = [Path(r.path) for r in pending if kinds[r.name] == "lora"]  # type: ignore[arg-type]
    cls = _HFModels if backend == "hf" else _VLLMModels
    models = cls(base_model, loras, batch, dict(spec.model_args))
    # base and LoRA checkpoints on the shared model first, then the full checkpoints one by one
    order = sorted(pending, key=lambda r: (kinds[r.name] == "full", r.step))
    try:
        for r in order:
            root = run.eval_dir(r.name, SUITE_DIR)
            groups: dict[str, list[str]] = {}
            for t in todo[r.name]:
                o = _task_options(spec, t)
                groups.setdefault(json.dumps([o["limit"], o["num_fewshot"]]), []).append(t)
            with models.model(r, kinds[r.name]) as lm:
                for key, ts in groups.items():
                    limit, shots = json.loads(key)
                    log.info("lm_eval %s on %s (%s)", ",".join(ts), r.key, kinds[r.name])
                    results = lm_eval.simple_evaluate(
                        model=lm,
                        tasks=list(ts),
                        task_manager=tm,
                        limit=limit,
                        num_fewshot=shots,
                        bootstrap_iters=spec.bootstrap_iters,
                        log_samples=spec.log_samples,
                        apply_chat_template=spec.apply_chat_template,
                        fewshot_as_multiturn=spec.fewshot_as_multiturn,
                        gen_kwargs=dict(spec.gen_kwargs) if spec.gen_kwargs else None,
                        random_seed=spec.seed,
                        numpy_random_seed=spec.seed,
                        torch_random_seed=spec.seed,
                        fewshot_random_seed=spec.seed,
                    )
                    if results is None:  # a non-zero rank of a distributed launch
                        continue
                    for t, folders in _folders(list(ts), results).items():
                        for folder in folders:
                            opts = _task_options(spec, t)
                            path = _write_task(root / folder, folder, results, r, cell, backend, opts)
                            out[f"{r.name}/{SUITE_DIR}/{folder}"] = str(path)
                        fp = _fingerprint(t, r, backend, _task_options(spec, t), spec, local)
                        mark_done(root, f"task.{t}", {"fingerprint": fp, "folders": folders})
    finally:
        models.close()
    return out


def evaluate_with_lm_eval(
    run_dir: str | os.PathLike[str],
    suites: Sequence[Any],
    options: Any,
    *,
    rest: Any,
    recipe: Any = None,
    **kwargs: Any,
) -> Any:
    """`evaluate_run` for a suite list holding `lm_eval:` specs: the harness runs those; `rest` (the unlocked
    evaluate_run) runs the others; one EvalResult comes back with every metrics file."""
    from emsweep.evals.run import eval_settings, resolve_base_model
    from emsweep.evals.units import EvalResult, select_checkpoints
    from emsweep.train.checkpoints import list_checkpoints

    run_dir = Path(run_dir)
    run = CellPaths.of(run_dir)
    ev, model_path = eval_settings(run_dir, recipe)
    lm_suites = [s for s in suites if is_lm_eval_suite(s)]
    others = [s for s in suites if not is_lm_eval_suite(s)]
    cell = options.cell or run.name
    spec = _spec_of(ev)
    checkpoints = (
        options.checkpoints if options.checkpoints is not None else (ev.checkpoints if ev else "all")
    )
    if (
        checkpoints
        and not isinstance(checkpoints, str)
        and all(isinstance(c, CheckpointRef) for c in checkpoints)
    ):
        refs = list(checkpoints)
    else:
        found = list_checkpoints(
            run_dir, base_model=resolve_base_model(run, options.base_model, model_path), cell=cell
        )
        refs = select_checkpoints(found, checkpoints)
    if not refs:
        raise InputError(f"{run_dir}: no checkpoints to evaluate")
    for r in refs:
        if r.kind != "api" and not r.base_model:
            raise InputError(
                f"{run_dir}: the base model of {r.name} is unknown (no cell.json with base_model); pass --base-model"
            )
    backend = (
        options.backend_kind or spec.backend or (ev.backend if ev and ev.backend in ("hf", "vllm") else "hf")
    )
    batch = options.batch_size or (ev.batch_size if ev else None)
    paths = run_lm_eval(run_dir, lm_suites, refs, spec=spec, backend=backend, batch_size=batch, cell=cell)
    result = rest(run_dir, others, options, recipe=recipe, **kwargs) if others else EvalResult(cell=cell)
    result.metrics.update(paths)
    return result
