"""YAML configs validated by pydantic, with errors that name the file, the key and (where known) the line.

Every config class derives from `StrictModel`, so an unknown key is an error, not a silent no-op.
`--set a.b=value` overrides are applied to the raw YAML tree before validation, so they are checked too.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from emsweep.io import InputError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line, to point errors at the right line."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = (*path, str(key_node.value))
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                key = (*path, str(i))
                lines[key] = item.start_mark.line + 1
                walk(item, key)

    walk(root, ())
    return lines


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: plain YAML keeps the last one silently, so `lr: 1e-5` written
    twice in a recipe would run with whichever came last. Merge keys (`<<: *base`) may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first on line {first}); YAML would keep only the last value: "
                        "remove one of them",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file (anchors and aliases resolved); a syntax error or a duplicate key names file and line."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, expected a YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"{p}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as YAML, so `1e-5`, `true`, `[1,2]` get their types)."""
    if "=" not in item:
        raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. --set sft.learning_rate=2e-5")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise InputError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        # YAML 1.1 reads 1e-5 as a string; users mean a float.
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value for c in "eE.") and value.strip() else value
    return key.split("."), value


def set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def get_path(tree: Any, keys: list[str]) -> Any:
    node = tree
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            raise KeyError(".".join(keys))
        node = node[k]
    return node


def apply_overrides(tree: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    tree = copy.deepcopy(tree)
    for item in overrides or []:
        keys, value = parse_override(item)
        set_path(tree, keys, value)
    return tree


def override_sources(overrides: list[str] | None) -> dict[tuple[str, ...], str]:
    """Key path -> `--set KEY=VALUE`, so an error in a value that came from the command line blames it."""
    out: dict[tuple[str, ...], str] = {}
    for item in overrides or []:
        keys, _ = parse_override(item)
        out[tuple(keys)] = f"--set {item}"
    return out


def blame(
    loc: tuple[str, ...],
    source: str,
    lines: dict[tuple[str, ...], int] | None = None,
    overrides: dict[tuple[str, ...], str] | None = None,
) -> str:
    """Where the value at key path `loc` came from: a `--set`, else `file:line` (nearest key above it), else file."""
    for keys, text in (overrides or {}).items():
        n = min(len(keys), len(loc))
        if n and keys[:n] == loc[:n]:  # one is a prefix of the other
            return text
    if lines:
        for n in range(len(loc), 0, -1):
            if loc[:n] in lines:
                return f"{source}:{lines[loc[:n]]}"
    return source


def format_problems(
    problems: list[tuple[tuple[str, ...], str]],
    source: str,
    lines: dict[tuple[str, ...], int] | None = None,
    overrides: dict[tuple[str, ...], str] | None = None,
) -> str:
    """One line per problem: `file:line: key.path: message` (or `--set K=V: key.path: message`)."""
    out = []
    for loc, msg in problems:
        out.append(f"{blame(loc, source, lines, overrides)}: {'.'.join(loc) or '<root>'}: {msg}")
    return "\n".join(dict.fromkeys(out))


def validation_problems(exc: ValidationError) -> list[tuple[tuple[str, ...], str]]:
    out = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check spelling; see the recipe reference in README)"
        out.append((loc, msg))
    return out


def format_validation_error(
    exc: ValidationError,
    source: str,
    lines: dict[tuple[str, ...], int] | None = None,
    overrides: dict[tuple[str, ...], str] | None = None,
) -> str:
    """One line per problem: `file:line: key.path: message`."""
    return format_problems(validation_problems(exc), source, lines, overrides)


def validate(
    model: type[M],
    data: Any,
    source: str,
    lines: dict[tuple[str, ...], int] | None = None,
    overrides: dict[tuple[str, ...], str] | None = None,
) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc, source, lines, overrides)) from None


def load_config(
    path: str | os.PathLike[str],
    model: type[M],
    overrides: list[str] | None = None,
    check: Callable[[M], list[tuple[tuple[str, ...], str]]] | None = None,
) -> M:
    """Load YAML `path`, apply `--set` overrides, validate against `model`; errors name file, line and key.

    `check(obj)` returns further problems `(key path, message)` (e.g. the passthrough sections), blamed the same
    way: on the `--set` that gave the value, else on the file and line.
    """
    p = Path(path)
    data = load_yaml(p)
    if data is None:
        raise InputError(f"{p}: file is empty")
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    data = apply_overrides(data, overrides)
    lines = _key_lines(p.read_text(encoding="utf-8"))
    sources = override_sources(overrides)
    obj = validate(model, data, str(p), lines, sources)
    if check is not None:
        problems = check(obj)
        if problems:
            raise InputError(format_problems(problems, str(p), lines, sources))
    return obj


def check_passthrough_keys(section: dict[str, Any], allowed: set[str], where: str, target: str) -> None:
    """Recipe sections that go straight to a library class (SFTConfig, LoraConfig, SamplingParams) are checked
    against that class's fields here, so a typo fails at load time with the key named, not deep in a run."""
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)} for {target}")
