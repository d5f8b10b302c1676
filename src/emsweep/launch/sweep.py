"""Sweeps: a base recipe crossed over axes of recipe keys -> cells with stable, readable ids.

A sweep YAML looks like::

    name: health-qwen7b
    output_root: checkpoints          # cells live in <output_root>/<name>/<cell id>/
    base: ../models/qwen2.5-7b-instruct-lora.yaml   # a recipe file (relative to this file) or an inline mapping
    overrides:                        # optional: merged into the base recipe, section by section
      eval: {samples_per_paraphrase: 50}
    axes:                             # crossed (cartesian product), in this order
      data.fraction_correct: [0.1, 0.5, 0.9, 1.0]
      data.wrong_kind: [obvious, subtle]   # needs data.wrong: {obvious: file, subtle: file} in the base
      method: [lora, full]
    zip:                              # optional: groups of keys that move together (each group is one axis)
      - data.seed: [0, 1]
        sft.seed: [0, 1]
    set: {sft.num_train_epochs: 1}    # optional: dotted keys set in every cell

Every cell's recipe is validated through `Recipe`, so an axis that names an unknown key fails at plan time with
the sweep file and the key named. The sweep folder records the spec hash (`sweep.json`), so a folder written by a
different spec is refused instead of silently mixed.

Over ~450 lines because a sweep is one schema and its expansion: axes, cell ids, input checks and the spec-hash
record must agree, so they are read together.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from emsweep.config import (
    StrictModel,
    _key_lines,
    blame,
    get_path,
    load_config,
    load_yaml,
    set_path,
    validation_problems,
)
from emsweep.io import InputError, atomic_write_json, dumps_json, is_done
from emsweep.layout import CellPaths
from emsweep.passthrough import recipe_problems
from emsweep.recipe import Recipe

STAGES: tuple[str, ...] = ("mix", "train", "eval")
SWEEP_RECORD = "sweep.json"
JUDGE_OPTIONS = {"min_number_mass", "max_pruned_mass", "top_k"}


class SweepSpec(StrictModel):
    name: str
    output_root: str = "checkpoints"
    base: str | dict[str, Any]
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    zip: list[dict[str, list[Any]]] = Field(default_factory=list)
    set: dict[str, Any] = Field(default_factory=dict)
    # merged into the base recipe: a mapping merges key by key, anything else (lists included) replaces; so a
    # sweep names a shipped model recipe and changes only what differs, instead of carrying a copy that drifts
    overrides: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None
    # keyword settings of the logprob judge that recipes do not carry (min_number_mass, max_pruned_mass, top_k):
    # e.g. the demo's tiny random judge, whose number mass is spread over the whole vocabulary
    judge_options: dict[str, float | int] = Field(default_factory=dict)

    @field_validator("judge_options")
    @classmethod
    def _judge_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(set(v) - JUDGE_OPTIONS)
        if bad:
            raise ValueError(f"unknown judge option(s) {bad}; known: {sorted(JUDGE_OPTIONS)}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("use letters, digits, '.', '_' or '-' (it becomes a folder name)")
        return v


@dataclass
class Cell:
    """One grid point: its id, its axis values (dotted key -> value) and its validated recipe."""

    index: int
    id: str
    values: dict[str, Any]
    recipe: Recipe
    root: Path

    @property
    def paths(self) -> CellPaths:
        return CellPaths.of(self.root)

    def axes_record(self) -> dict[str, Any]:
        """What the report groups by: the axis values plus the fields every study compares."""
        r = self.recipe
        rec = {
            "domain": r.data.domain if r.data.domain != "custom" else (r.data.builtin or "custom"),
            "fraction_correct": r.data.fraction_correct,
            "wrong_kind": r.data.wrong_kind,
            "method": r.method,
            "seed": r.data.seed,
            "model": r.model.path,
        }
        rec.update(self.values)
        return rec

    def stages_left(self, stages: tuple[str, ...] = STAGES) -> list[str]:
        return [s for s in stages if not is_done(self.root, s)]


@dataclass
class Sweep:
    spec: SweepSpec
    path: Path | None  # the YAML it came from (None for an in-memory spec)
    base: dict[str, Any]  # the resolved base recipe tree
    cells: list[Cell] = field(default_factory=list)
    spec_hash: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def root(self) -> Path:
        return Path(self.spec.output_root) / self.spec.name

    @property
    def source(self) -> str:
        return str(self.path) if self.path else f"<sweep {self.spec.name}>"

    def cell(self, key: int | str) -> Cell:
        """A cell by index or id; a clear error otherwise."""
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            i = int(key)
            if not 0 <= i < len(self.cells):
                raise InputError(f"{self.source}: cell index {i} out of range (0..{len(self.cells) - 1})")
            return self.cells[i]
        for c in self.cells:
            if c.id == key:
                return c
        raise InputError(
            f"{self.source}: no cell with id {key!r}; ids: {', '.join(c.id for c in self.cells[:20])}"
        )

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec_hash": self.spec_hash,
            "spec": self.resolved_spec(),
            "source": self.source,
            "cells": [{"index": c.index, "id": c.id, "values": c.values} for c in self.cells],
        }

    def resolved_spec(self) -> dict[str, Any]:
        """The spec with the base recipe inlined and the overrides merged into it (what the hash covers)."""
        d = self.spec.model_dump()
        d.pop("overrides")  # merged into `base`; sweeps without overrides keep the hash they always had
        d["base"] = self.base
        return d

    def write_record(self) -> Path:
        """Write `<root>/sweep.json`; refuse a folder that holds a different spec's record."""
        check_sweep_folder(self)
        p = self.root / SWEEP_RECORD
        atomic_write_json(p, self.record())
        return p


def check_sweep_folder(sweep: Sweep) -> None:
    """Raise if `sweep.root` was written by a sweep spec with another hash (cells would mix silently)."""
    p = sweep.root / SWEEP_RECORD
    if not p.exists():
        return
    try:
        old = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: unreadable sweep record ({exc.msg}); move it aside to start over") from exc
    check_spec_hash(sweep, old.get("spec_hash"), p, "this folder was written by")


def check_spec_hash(sweep: Sweep, recorded: Any, path: Path, what: str) -> None:
    """The one spec-hash check (sweep.json, the SLURM ledger): a file recorded for another spec of this sweep is
    refused, so cells or jobs of two specs never mix silently."""
    if recorded != sweep.spec_hash:
        raise InputError(
            f"{path}: {what} another sweep spec (hash {str(recorded)[:12]}, now {sweep.spec_hash[:12]} from "
            f"{sweep.source}). Give the sweep a new `name` or `output_root`, or remove the folder."
        )


# --- cell ids ------------------------------------------------------------------------------------------------

_SHORT = {
    "data.fraction_correct": "f",
    "data.seed": "s",
    "sft.seed": "sftseed",
    "sft.learning_rate": "lr",
    "sft.num_train_epochs": "ep",
    "sft.max_steps": "steps",
    "lora.r": "r",
    "data.n_train": "n",
}
_BARE = {"data.domain", "data.wrong_kind", "method", "data.builtin"}


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if 0 <= v <= 1 and round(v, 2) == v:
            return f"{v:.2f}"
        return f"{v:g}"
    if isinstance(v, str):
        v = v.rstrip("/").split("/")[-1] or v  # model paths: the last component
    return str(v)


def _part(key: str, value: Any) -> str:
    if key in _BARE:
        s = _fmt(value)
    elif key in _SHORT:
        s = f"{_SHORT[key]}{_fmt(value)}"
    elif key == "model.path":
        s = _fmt(value)
    else:
        s = f"{key.split('.')[-1]}{_fmt(value)}"
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", s).strip("-") or "x"


def _short_domain(d: str) -> str:
    return {"arithmetic": "arith"}.get(d, d)


def cell_id(recipe: Recipe, values: dict[str, Any]) -> str:
    """Readable id: domain, fraction, wrong kind, method, seed, then any other axis, e.g.
    `arith_f0.50_subtle_lora_s0_lr2e-05`. Derived only from values, so it is stable across runs."""
    d = recipe.data
    domain = _short_domain(d.domain if d.domain != "custom" or not d.builtin else d.builtin)
    parts = [
        _part("data.domain", domain),
        _part("data.fraction_correct", d.fraction_correct),
        _part("data.wrong_kind", d.wrong_kind),
        _part("method", recipe.method),
        _part("data.seed", d.seed),
    ]
    covered = {
        "data.domain",
        "data.fraction_correct",
        "data.wrong_kind",
        "method",
        "data.seed",
        "data.builtin",
    }
    parts += [_part(k, v) for k, v in values.items() if k not in covered]
    return "_".join(parts)


# --- loading and expansion ------------------------------------------------------------------------------------


def _hash(obj: Any) -> str:
    return hashlib.sha256(dumps_json(obj).encode()).hexdigest()


def load_sweep(path: str | os.PathLike[str]) -> Sweep:
    """Load a sweep YAML (through the recipes' loader), resolve its base recipe, expand and validate every
    cell."""
    p = Path(path)
    spec = load_config(p, SweepSpec)
    return build_sweep(spec, path=p, lines=_key_lines(p.read_text(encoding="utf-8")))


def build_sweep(
    spec: SweepSpec, path: Path | None = None, lines: dict[tuple[str, ...], int] | None = None
) -> Sweep:
    source = str(path) if path else f"<sweep {spec.name}>"
    lines = lines or {}

    def where(*keys: str) -> str:
        ln = lines.get(tuple(keys))
        return f"{source}:{ln}" if ln else source

    # base recipe
    if isinstance(spec.base, str):
        # relative to the sweep file (as given, from the working directory, if only that exists)
        bp = Path(spec.base)
        if not bp.is_absolute() and path is not None and (path.parent / bp).exists():
            bp = path.parent / bp
        if not bp.exists():
            raise InputError(
                f"{where('base')}: base recipe {spec.base} not found"
                + (f" (looked in {path.parent} and the working directory)" if path is not None else "")
            )
        base = load_yaml(bp)
        if not isinstance(base, dict):
            raise InputError(f"{where('base')}: base recipe {bp} is not a mapping")
        base_src: tuple[str, dict[tuple[str, ...], int], tuple[str, ...]] = (
            str(bp),
            _key_lines(bp.read_text(encoding="utf-8")),
            (),
        )
    else:
        base = copy.deepcopy(spec.base)
        base_src = (source, lines, ("base",))
    base = _merge(base, spec.overrides)
    base.setdefault("name", spec.name)

    # axes: each plain axis is a group of one key; each zip entry is one group of several keys
    groups: list[tuple[list[str], list[tuple[Any, ...]]]] = []
    for key, values in spec.axes.items():
        if not values:
            raise InputError(
                f"{where('axes', key)}: axes.{key}: empty list of values (the grid would be empty)"
            )
        groups.append(([key], [(v,) for v in values]))
    for zi, group in enumerate(spec.zip):
        if not group:
            raise InputError(f"{where('zip', str(zi))}: zip[{zi}]: empty group")
        lens = {k: len(v) for k, v in group.items()}
        if len(set(lens.values())) != 1:
            raise InputError(
                f"{where('zip', str(zi))}: zip[{zi}]: zipped keys need lists of the same length, got {lens}"
            )
        n = next(iter(lens.values()))
        if n == 0:
            raise InputError(f"{where('zip', str(zi))}: zip[{zi}]: empty lists (the grid would be empty)")
        keys = list(group)
        groups.append((keys, [tuple(group[k][i] for k in keys) for i in range(n)]))
    all_keys = [k for ks, _ in groups for k in ks]
    dup = {k for k in all_keys if all_keys.count(k) > 1}
    if dup:
        raise InputError(
            f"{source}: key(s) {', '.join(sorted(dup))} appear in more than one axis / zip group"
        )

    sweep = Sweep(spec=spec, path=path, base=base)
    sweep.spec_hash = _hash(sweep.resolved_spec())
    root = sweep.root

    combos = list(itertools.product(*[vals for _, vals in groups])) if groups else [()]
    cells: list[Cell] = []
    for index, combo in enumerate(combos):
        values: dict[str, Any] = {}
        for (keys, _), vals in zip(groups, combo, strict=True):
            values.update(dict(zip(keys, vals, strict=True)))
        tree = copy.deepcopy(base)
        for k, v in spec.set.items():
            set_path(tree, k.split("."), v)
        for k, v in values.items():
            ks = k.split(".")
            parent = ks[:-1]
            if parent:
                try:
                    node = get_path(tree, parent)
                except KeyError:
                    node = {}
                if node is not None and not isinstance(node, dict):
                    raise InputError(f"{where('axes', k)}: axes.{k}: {'.'.join(parent)} is not a section")
            set_path(tree, ks, v)
        try:
            recipe = Recipe.model_validate(tree)
            # passthrough sections (sft/lora/quantization/sampling) too: a bad axis value fails here, not at
            # train time after the mix (each distinct section is checked once, so big grids stay quick)
            problems = recipe_problems(recipe)
        except ValidationError as exc:
            problems = validation_problems(exc)
        if problems:
            raise InputError(_blame_cell(problems, values, spec, where, source, base_src)) from None
        cid = cell_id(recipe, values)
        recipe = recipe.model_copy(update={"output_dir": str(root / cid), "name": f"{spec.name}-{cid}"})
        cells.append(Cell(index=index, id=cid, values=values, recipe=recipe, root=root / cid))

    if not cells:
        raise InputError(f"{source}: the grid is empty")
    _check_wrong_kind_axis(cells, groups, where)
    # duplicate ids: identical axis values are an error; readable ids that collide after formatting get a hash
    seen: dict[str, list[Cell]] = {}
    for c in cells:
        seen.setdefault(c.id, []).append(c)
    for cid, group in seen.items():
        if len(group) < 2:
            continue
        canon = [dumps_json(c.values) for c in group]
        if len(set(canon)) < len(canon):
            raise InputError(
                f"{source}: two cells have the same id {cid!r} and the same axis values {group[0].values}: "
                "remove the repeated value from the axes"
            )
        for c in group:
            h = _hash(c.values)[:6]
            c.id = f"{cid}_{h}"
            c.root = root / c.id
            c.recipe = c.recipe.model_copy(update={"output_dir": str(c.root), "name": f"{spec.name}-{c.id}"})
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise InputError(f"{source}: duplicate cell ids after disambiguation: {ids}")
    sweep.cells = cells
    return sweep


def _check_wrong_kind_axis(cells: list[Cell], groups: list[tuple[list[str], Any]], where: Any) -> None:
    """An axis over `data.wrong_kind` must change the file too: with a single `data.wrong` source every kind
    would train on that one file under a different label. Allowed: `data.wrong` as a mapping kind -> file,
    a builtin domain (its pools have every kind), or `data.wrong` zipped with `data.wrong_kind`."""
    group = next((keys for keys, _ in groups if "data.wrong_kind" in keys), None)
    if group is None or "data.wrong" in group:
        return
    for c in cells:
        d = c.recipe.data
        if d.builtin is None and not d.wrong_is_mapping:
            raise InputError(
                f"{where('axes', 'data.wrong_kind')}: axes.data.wrong_kind varies the wrong kind, but data.wrong "
                f"is one file ({d.wrong_source()[1]!r}): every kind would train on it. Give data.wrong as a "
                "mapping kind -> file (data.wrong: {obvious: path, subtle: path}), or zip data.wrong with "
                "data.wrong_kind"
            )


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` merged into a copy of `base`: mappings key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _override_key(overrides: dict[str, Any], loc: tuple[str, ...]) -> tuple[str, ...] | None:
    """The key path in `overrides` that set the value at `loc` (or the value holding it), if any."""
    node: Any = overrides
    for i, k in enumerate(loc):
        if not isinstance(node, dict):
            return loc[:i]  # a list or scalar override replaced what holds `loc`
        if k not in node:
            return None
        node = node[k]
    return loc


def _blame_cell(
    problems: list[tuple[tuple[str, ...], str]],
    values: dict[str, Any],
    spec: SweepSpec,
    where: Any,
    source: str,
    base_src: tuple[str, dict[tuple[str, ...], int], tuple[str, ...]],
) -> str:
    """One line per problem, blamed on the axis (or `set:` entry) that gave the value, else the base recipe line."""
    msgs = []
    for loc, msg in problems:
        key = ".".join(loc)
        if msg.startswith("unknown key (check spelling"):  # pydantic's, for recipe keys
            msg = "unknown recipe key (check spelling against the Recipe reference)"
        axis = next((k for k in values if key == k or key.startswith(k + ".") or k.startswith(key + ".")), None)
        setk = next((k for k in spec.set if key == k or key.startswith(k + ".") or k.startswith(key + ".")), None)
        over = _override_key(spec.overrides, tuple(loc))
        if axis:
            msgs.append(f"{where('axes', axis)}: axes.{axis}={values[axis]!r}: {key}: {msg}")
        elif setk:
            msgs.append(f"{where('set', setk)}: set.{setk}={spec.set[setk]!r}: {key}: {msg}")
        elif over:
            msgs.append(f"{where('overrides', *over)}: overrides.{'.'.join(over)}: {key}: {msg}")
        else:
            bsource, blines, prefix = base_src
            msgs.append(f"{blame((*prefix, *loc), bsource, blines)}: base recipe: {key}: {msg}")
    return "\n".join(dict.fromkeys(msgs))


def cell_inputs(cell: Cell, stages: tuple[str, ...] = STAGES) -> list[tuple[str, str, str | None]]:
    """(recipe key, path, problem or None) of every input file a cell's remaining stages read: the data files
    of its mix (each wrong kind's own file), their password variables, and suite files named `NAME=PATH`."""
    from emsweep.data.readers import ZIP_MEMBER_SEP

    out: list[tuple[str, str, str | None]] = []
    d = cell.recipe.data
    left = cell.stages_left(stages)
    if "mix" in left and d.builtin is None:
        for key, src in (("data.correct", d.correct), d.wrong_source()):
            if src is None:
                continue
            path = src if isinstance(src, str) else src.path
            if not isinstance(src, str) and src.format == "hf":
                out.append((key, path, None))  # a hub dataset: nothing on disk to check
                continue
            file = path.split(ZIP_MEMBER_SEP, 1)[0]
            problem = None if Path(file).exists() else "file not found"
            env = None if isinstance(src, str) else src.password_env
            if problem is None and env and not os.environ.get(env):
                problem = f"password variable ${env} ({key}.password_env) is not set"
            out.append((key, file, problem))
    if "eval" in left:
        for i, spec in enumerate(cell.recipe.eval.suites):
            name, _, path = str(spec).partition("=")
            if path and not path.endswith((".jsonl", ".jsonl.gz")):
                out.append((f"eval.suites[{i}] ({name})", path, None if Path(path).exists() else "file not found"))
    return out


def check_inputs(sweep: Sweep, stages: tuple[str, ...] = STAGES) -> None:
    """Refuse a sweep (before anything is submitted) when a cell's input file is missing, naming the cell, the
    recipe key and the file; the domain's `source` says how to get it."""
    missing: dict[tuple[str, str, str], list[str]] = {}
    for c in sweep.cells:
        for key, path, problem in cell_inputs(c, stages):
            if problem:
                missing.setdefault((key.split(" ")[0] if key.startswith("eval") else key, path, problem), []).append(c.id)
    if not missing:
        return
    lines = []
    for (key, path, problem), ids in list(missing.items())[:12]:
        hint = ""
        d = next(c for c in sweep.cells if c.id == ids[0]).recipe.data
        if key.startswith("data.") and d.domain != "custom":
            from emsweep.data.domain import find_domain, load_domain

            if find_domain(d.domain) is not None:
                hint = f"; domain {d.domain}: {load_domain(d.domain).source.how()}"
        more = f" (+{len(ids) - 1} more cells)" if len(ids) > 1 else ""
        lines.append(f"  {path}: {problem} - {key} of cell {ids[0]}{more}{hint}")
    extra = f"\n  ... and {len(missing) - 12} more" if len(missing) > 12 else ""
    raise InputError(f"{sweep.source}: {len(missing)} missing input(s); nothing was run or submitted:\n"
                     + "\n".join(lines) + extra)  # fmt: skip
