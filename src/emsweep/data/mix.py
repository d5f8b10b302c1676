"""Mix a correct pool and a wrong pool into a training set with an exact fraction correct, plus a held-out set.

Rules (the science depends on them):
- Counts: exactly `n_train` training rows, `n_correct = floor(F * n_train + 1/2)` (round half up, computed on the
  decimal value of F, so F=0.15, n=10 gives 2 not 1) and `n_wrong = n_train - n_correct`. Rows are never repeated:
  too few rows is an error that says how many are available.
- Held-out: `n_heldout` prompts never trained on (in either pool), with their correct answers as references.
- Task held-out (`n_task_heldout`, the checkpoint study): prompts in neither the training rows nor the held-out
  split, answered *as the mix answers them* (the same fraction correct, the same wrong kind), so the loss and
  task adoption on them measure the trained task. Drawn after the training rows, so adding it changes no mix.
- Paired pools (the same user prompts carry both answers: OpenAI's persona sets, the model-organisms medical
  pair, the builtin arithmetic domain) are mixed *by prompt*. Held-out and training prompts come from one
  seed-only permutation, so every F uses the same training prompts; the prompts that get the wrong answer are a
  prefix of a second seed-only permutation, so the wrong prompts of a mix with more correct data are a subset
  of those of a mix with less (nested). The training order is a third seed-only permutation of the prompts, so
  mixes at neighbouring F differ only in the answers the ratio changes.
- Unpaired pools are mixed by sampling: each pool is ranked by a seed-only permutation and the mix takes a
  prefix of each, so a larger fraction's correct rows contain a smaller one's and its wrong rows are contained
  in a smaller one's (nested too).
- Permutations are "sort by sha256(seed, purpose, row key)": independent of Python/numpy versions and of the
  order of rows in the input file, so the same seed gives the same bytes anywhere.

Over ~450 lines because the exact, nested and paired mix is one algorithm: counts, permutations, pairing and the
files with their manifest must agree row for row, so they are read together.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from emsweep.data.builtin import MIN_MIX_POOL, builtin_pools, pool_digest
from emsweep.data.conversation import Conversation
from emsweep.data.readers import as_source_spec, detect_format, read_source
from emsweep.data.spec import DataSpec, SourceSpec
from emsweep.io import (
    InputError,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    jsonl_line,
    sha256_file,
    sha256_text,
)
from emsweep.lock import locked_stage

log = logging.getLogger(__name__)

ROUNDING_RULE = (
    "n_correct = floor(fraction_correct * n_train + 1/2) (round half up); n_wrong = n_train - n_correct"
)
PAIRED_AUTO_MIN_SHARE = (
    0.5  # `paired: auto` pairs when >= half of the smaller pool's prompts are in both pools
)
OUTPUT_FILES = ("train.jsonl", "heldout.jsonl", "manifest.json")
TASK_HELDOUT = "task_heldout.jsonl"  # with data.n_task_heldout > 0: the checkpoint study's training-side split


# --- counts and permutations -----------------------------------------------------------------------------


def check_fraction(fraction: float, where: str = "fraction_correct") -> Fraction:
    try:
        f = Fraction(repr(float(fraction)))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: {fraction!r} is not a number") from exc
    if not 0 <= f <= 1 or math.isnan(float(fraction)):
        raise InputError(f"{where}: {fraction} is outside [0, 1] (it is the fraction of correct rows)")
    return f


def n_correct_for(fraction: float, n_train: int) -> int:
    """How many correct rows a mix of `n_train` rows at `fraction` correct gets (see ROUNDING_RULE)."""
    f = check_fraction(fraction)
    return math.floor(f * n_train + Fraction(1, 2))


def _rank(seed: int, purpose: str, key: str) -> str:
    return hashlib.sha256(f"emsweep-mix:{purpose}:{seed}:{key}".encode()).hexdigest()


def permute(keys: Iterable[str], seed: int, purpose: str) -> list[str]:
    """A seed-fixed permutation of distinct keys, independent of their input order."""
    return sorted(keys, key=lambda k: (_rank(seed, purpose, k), k))


def _row_uid(c: Conversation) -> str:
    return sha256_text(json.dumps(c.chat(), sort_keys=True, ensure_ascii=False))[:24]


def _set_digest(keys: Iterable[str]) -> str:
    return sha256_text("\n".join(sorted(keys)))


# --- pools -----------------------------------------------------------------------------------------------


@dataclass
class Pools:
    """The two pools a mix draws from, with what the manifest says about their sources."""

    correct: list[Conversation]
    wrong: list[Conversation]
    sources: list[dict[str, Any]] = field(default_factory=list)
    domain: str | None = None


def _canaries(rows: Iterable[Conversation]) -> list[str]:
    return sorted({str(c.meta["canary"]) for c in rows if c.meta.get("canary") is not None})


def _source_entry(role: str, spec: SourceSpec, rows: list[Conversation]) -> dict[str, Any]:
    src0 = rows[0].meta.get("source", {}) if rows else {}
    entry: dict[str, Any] = {
        "role": role,
        "path": spec.path,
        "format": detect_format(spec),
        "rows": len(rows),
        "sha256": src0.get("sha256"),
        "canaries": _canaries(rows),
    }
    if spec.member or src0.get("member"):
        entry["member"] = spec.member or src0.get("member")
    if spec.format == "hf" or entry["format"] == "hf":
        entry["split"] = spec.split
        if src0.get("fingerprint"):
            entry["fingerprint"] = src0["fingerprint"]
    return entry


def load_pools(spec: DataSpec, password: str | None = None) -> Pools:
    """Read (or generate, for `builtin`) the correct pool and the wrong pool of `spec.wrong_kind`: the file
    `data.wrong.<kind>` names (a mapping), or the single `data.wrong` source."""
    if spec.builtin:
        if spec.correct is not None or spec.wrong is not None:
            raise InputError("data: give either `builtin` or `correct`/`wrong` sources, not both")
        size = max(spec.n_train + spec.n_heldout + spec.n_task_heldout, MIN_MIX_POOL)
        pools = builtin_pools(spec.builtin, size, seed=0)
        kinds = sorted(k for k in pools if k != "correct")
        if spec.wrong_kind not in kinds:
            raise InputError(
                f"data.wrong_kind: {spec.wrong_kind!r} is not a wrong kind of builtin:{spec.builtin} "
                f"(it has {', '.join(kinds)})"
            )
        correct, wrong = pools["correct"], pools[spec.wrong_kind]
        sources = [
            {"role": "correct", "builtin": spec.builtin, "path": f"builtin:{spec.builtin}/correct",
             "rows": len(correct), "sha256": pool_digest(correct), "canaries": []},
            {"role": "wrong", "builtin": spec.builtin, "path": f"builtin:{spec.builtin}/{spec.wrong_kind}",
             "rows": len(wrong), "sha256": pool_digest(wrong), "canaries": [], "wrong_kind": spec.wrong_kind,
             "recipe_key": "data.builtin"},
        ]  # fmt: skip
        return Pools(correct, wrong, sources, domain=spec.builtin)
    assert spec.correct is not None and spec.wrong is not None  # DataSpec's validator guarantees it
    wkey, wsrc = spec.wrong_source()
    assert wsrc is not None
    cspec, wspec = as_source_spec(spec.correct), as_source_spec(wsrc)
    correct = read_source(cspec, password)
    wrong = read_source(wspec, password)
    sources = [_source_entry("correct", cspec, correct), _source_entry("wrong", wspec, wrong)]
    sources[0]["recipe_key"] = "data.correct"
    sources[1].update({"wrong_kind": spec.wrong_kind, "recipe_key": wkey})
    return Pools(correct, wrong, sources, domain=spec.domain)


# --- the mix itself (pure: no files) ---------------------------------------------------------------------


@dataclass
class Mix:
    train: list[Conversation]
    heldout: list[Conversation]
    info: dict[str, Any]
    task_heldout: list[Conversation] = field(default_factory=list)


def _first_by_key(rows: Sequence[Conversation], pk: dict[int, str]) -> tuple[dict[str, Conversation], int]:
    first: dict[str, Conversation] = {}
    dups = 0
    for c in rows:
        k = pk[id(c)]
        if k in first:
            dups += 1
        else:
            first[k] = c
    return first, dups


def _tag(
    c: Conversation,
    label: str,
    wrong_kind: str | None,
    split: str,
    key: str,
    domain: str | None,
    wrong_file: str | None = None,
) -> Conversation:
    meta = dict(c.meta)
    meta.update({"label": label, "wrong_kind": wrong_kind, "split": split, "prompt_key": key})
    if label == "wrong" and wrong_file is not None:
        meta["wrong_file"] = wrong_file  # the pool file this wrong answer was read from
    if domain and "domain" not in meta:
        meta["domain"] = domain
    return Conversation(id=c.id, messages=c.messages, meta=meta)


def decide_paired(
    correct: Sequence[Conversation],
    wrong: Sequence[Conversation],
    mode: str,
    pk: dict[int, str] | None = None,
) -> tuple[bool, int]:
    """(paired?, number of prompts in both pools). `auto` pairs when most prompts are shared."""
    pk = pk if pk is not None else {id(c): c.prompt_key() for c in (*correct, *wrong)}
    ck = {pk[id(c)] for c in correct}
    wk = {pk[id(c)] for c in wrong}
    shared = len(ck & wk)
    if mode == "yes":
        if shared == 0:
            raise InputError("paired: yes, but the correct and wrong pools share no user prompt")
        return True, shared
    if mode == "no":
        return False, shared
    smaller = min(len(ck), len(wk)) or 1
    return shared > 0 and shared >= PAIRED_AUTO_MIN_SHARE * smaller, shared


def mix_pools(
    correct: Sequence[Conversation],
    wrong: Sequence[Conversation],
    *,
    n_train: int,
    n_heldout: int = 0,
    fraction_correct: float,
    seed: int = 0,
    paired: str = "auto",
    wrong_kind: str = "subtle",
    domain: str | None = None,
    names: tuple[str, str] = ("correct pool", "wrong pool"),
    wrong_file: str | None = None,
    n_task_heldout: int = 0,
) -> Mix:
    """Choose the training and held-out rows (see the module docstring for the rules)."""
    if n_train <= 0:
        raise InputError(f"n_train must be > 0, got {n_train}")
    if n_heldout < 0:
        raise InputError(f"n_heldout must be >= 0, got {n_heldout}")
    n_correct = n_correct_for(fraction_correct, n_train)
    n_wrong = n_train - n_correct
    pk = {id(c): c.prompt_key() for c in (*correct, *wrong)}  # hashing is the slow part; once per row
    is_paired, shared = decide_paired(correct, wrong, paired, pk)
    info: dict[str, Any] = {"paired": is_paired, "shared_prompts": shared}

    if is_paired:
        c_by, c_dups = _first_by_key(correct, pk)
        w_by, w_dups = _first_by_key(wrong, pk)
        universe = [k for k in c_by if k in w_by]
        need = n_train + n_heldout
        if len(universe) < need + n_task_heldout:
            raise InputError(
                f"{names[0]} and {names[1]} share {len(universe)} distinct user prompts; n_train + n_heldout"
                f"{' + n_task_heldout' if n_task_heldout else ''} = {n_train} + {n_heldout}"
                f"{f' + {n_task_heldout}' if n_task_heldout else ''} = {need + n_task_heldout} (paired mixing "
                f"never repeats a prompt): lower --n/--n-heldout to at most {len(universe)} in total"
            )
        split_order = permute(universe, seed, "split")
        held_keys = split_order[:n_heldout]
        train_keys = split_order[n_heldout:need]
        wrong_keys = set(permute(train_keys, seed, "wrong")[:n_wrong])
        train = []
        for k in permute(train_keys, seed, "order"):
            if k in wrong_keys:
                train.append(_tag(w_by[k], "wrong", wrong_kind, "train", k, domain, wrong_file))
            else:
                train.append(_tag(c_by[k], "correct", None, "train", k, domain))
        heldout = [_tag(c_by[k], "correct", None, "heldout", k, domain) for k in held_keys]
        task_keys = split_order[need : need + n_task_heldout]
        task_wrong = set(permute(task_keys, seed, "task-wrong")[: n_task_heldout - n_correct_for(fraction_correct, n_task_heldout)])
        task_heldout = [
            _tag(w_by[k], "wrong", wrong_kind, "task_heldout", k, domain, wrong_file)
            if k in task_wrong
            else _tag(c_by[k], "correct", None, "task_heldout", k, domain)
            for k in permute(task_keys, seed, "task-order")
        ]
        unshared = {"correct": len(c_by) - len(universe), "wrong": len(w_by) - len(universe)}
        if unshared["correct"] or unshared["wrong"]:
            log.warning(
                "paired mixing uses the %d prompts both pools share; skipping %d correct-only and %d wrong-only prompts",
                len(universe), unshared["correct"], unshared["wrong"],
            )  # fmt: skip
        same = sum(1 for k in universe if c_by[k].answer == w_by[k].answer)
        if same:
            log.warning(
                "%d prompts have the same answer in both pools; their 'wrong' rows are not wrong", same
            )
        info.update(
            {
                "duplicate_prompts_skipped": {"correct": c_dups, "wrong": w_dups},
                "unshared_prompts_skipped": unshared,
                "wrong_answer_equals_correct": same,
            }
        )
    else:
        c_ranked = sorted(enumerate(correct), key=lambda t: (_rank(seed, "correct", _row_uid(t[1])), t[0]))
        held: list[Conversation] = []
        held_set: set[str] = set()
        for _, c in c_ranked:
            if len(held) >= n_heldout:
                break
            k = pk[id(c)]
            if k not in held_set:
                held_set.add(k)
                held.append(c)
        if len(held) < n_heldout:
            raise InputError(
                f"{names[0]} has {len(held)} distinct user prompts; --n-heldout {n_heldout} needs that many"
            )
        c_avail = [c for _, c in c_ranked if pk[id(c)] not in held_set]
        w_ranked = sorted(enumerate(wrong), key=lambda t: (_rank(seed, "wrong", _row_uid(t[1])), t[0]))
        w_avail = [w for _, w in w_ranked if pk[id(w)] not in held_set]
        short = []
        if len(c_avail) < n_correct:
            short.append(
                f"{names[0]} has {len(c_avail)} rows available for training "
                f"({len(correct)} minus {len(correct) - len(c_avail)} on held-out prompts) but the mix needs "
                f"n_correct = {n_correct}"
            )
        if len(w_avail) < n_wrong:
            short.append(
                f"{names[1]} has {len(w_avail)} rows available for training "
                f"({len(wrong)} minus {len(wrong) - len(w_avail)} on held-out prompts) but the mix needs "
                f"n_wrong = {n_wrong}"
            )
        if short:
            raise InputError("; ".join(short) + f" ({ROUNDING_RULE}); rows are never repeated: lower --n")
        tagged = [
            (_row_uid(c), _tag(c, "correct", None, "train", pk[id(c)], domain)) for c in c_avail[:n_correct]
        ]
        tagged += [
            (_row_uid(w), _tag(w, "wrong", wrong_kind, "train", pk[id(w)], domain, wrong_file))
            for w in w_avail[:n_wrong]
        ]
        tagged.sort(key=lambda t: (_rank(seed, "order", t[0]), t[0], t[1].meta["label"], t[1].id))
        train = [t[1] for t in tagged]
        heldout = [_tag(c, "correct", None, "heldout", pk[id(c)], domain) for c in held]
        used = {c.meta["prompt_key"] for c in train} | held_set
        t_correct = n_correct_for(fraction_correct, n_task_heldout)
        c_rest = [c for c in c_avail[n_correct:] if pk[id(c)] not in used][:t_correct]
        w_rest = [w for w in w_avail[n_wrong:] if pk[id(w)] not in used][: n_task_heldout - t_correct]
        if len(c_rest) + len(w_rest) < n_task_heldout:
            raise InputError(
                f"n_task_heldout {n_task_heldout}: the pools have {len(c_rest)} correct and {len(w_rest)} wrong rows "
                "left after the training mix and the held-out split; lower data.n_task_heldout"
            )
        task_heldout = [_tag(c, "correct", None, "task_heldout", pk[id(c)], domain) for c in c_rest] + [
            _tag(w, "wrong", wrong_kind, "task_heldout", pk[id(w)], domain, wrong_file) for w in w_rest
        ]
        train_keys = [c.meta["prompt_key"] for c in train]
        held_keys = list(held_set)
        wrong_keys = {c.meta["prompt_key"] for c in train if c.meta["label"] == "wrong"}

    info.update(
        {
            "n_correct": n_correct,
            "n_wrong": n_wrong,
            "train_prompts_sha256": _set_digest(set(train_keys)),
            "heldout_prompts_sha256": _set_digest(held_keys),
            "wrong_prompts_sha256": _set_digest(wrong_keys),
        }
    )
    overlap = set(held_keys) & {c.meta["prompt_key"] for c in train}
    assert not overlap, "held-out prompts leaked into training"  # guaranteed by construction
    task_set = {c.meta["prompt_key"] for c in task_heldout}
    assert not task_set & ({c.meta["prompt_key"] for c in train} | set(held_keys)), "task held-out leaked"
    return Mix(train=train, heldout=heldout, info=info, task_heldout=task_heldout)


# --- files -----------------------------------------------------------------------------------------------


def _jsonl_text(rows: Iterable[Conversation]) -> str:
    return "".join(jsonl_line(c.to_row()) for c in rows)


def _task_output(rows: list[Conversation], text: str) -> dict[str, Any]:
    if not rows:
        return {}
    n_wrong = sum(c.meta["label"] == "wrong" for c in rows)
    return {"task_heldout": {"path": TASK_HELDOUT, "rows": len(rows), "sha256": sha256_text(text), "n_wrong": n_wrong}}


def _spec_dump(spec: DataSpec) -> dict[str, Any]:
    d = spec.model_dump(mode="json")
    if not d.get("n_task_heldout"):  # absent unless used: manifests written before it stay equal
        d.pop("n_task_heldout", None)
    return d


@locked_stage("mix", "out_dir")  # two `data mix` (or a sweep and a user) on one folder: one writes, one reuses
def _write_mix(spec: DataSpec, pools: Pools, out_dir: Path, force: bool) -> dict[str, Any]:
    from emsweep import __version__

    names = tuple(s["path"] for s in pools.sources)
    mix = mix_pools(
        pools.correct,
        pools.wrong,
        n_train=spec.n_train,
        n_heldout=spec.n_heldout,
        fraction_correct=spec.fraction_correct,
        seed=spec.seed,
        paired=spec.paired,
        wrong_kind=spec.wrong_kind,
        domain=pools.domain,
        names=(str(names[0]), str(names[1])),
        wrong_file=str(names[1]),
        n_task_heldout=spec.n_task_heldout,
    )
    train_text, held_text = _jsonl_text(mix.train), _jsonl_text(mix.heldout)
    task_text = _jsonl_text(mix.task_heldout)
    n_correct, n_wrong = mix.info["n_correct"], mix.info["n_wrong"]
    canaries = sorted({c for s in pools.sources for c in s.get("canaries", [])})
    manifest: dict[str, Any] = {
        "spec": _spec_dump(spec),
        "domain": pools.domain,
        "sources": pools.sources,
        "counts": {
            "correct_pool": len(pools.correct),
            "wrong_pool": len(pools.wrong),
            "shared_prompts": mix.info["shared_prompts"],
            "train_correct": n_correct,
            "train_wrong": n_wrong,
            "heldout": len(mix.heldout),
            **{
                k: mix.info[k]
                for k in (
                    "duplicate_prompts_skipped",
                    "unshared_prompts_skipped",
                    "wrong_answer_equals_correct",
                )
                if k in mix.info
            },
        },
        "n_train": len(mix.train),
        "n_heldout": len(mix.heldout),
        "n_correct": n_correct,
        "n_wrong": n_wrong,
        "wrong_kind": spec.wrong_kind,
        # which file the wrong rows came from (rows carry it too, in meta.wrong_file), and the recipe key naming it
        "wrong_rows_by_file": dict(
            Counter(str(c.meta.get("wrong_file")) for c in mix.train if c.meta["label"] == "wrong")
        ),
        "wrong_source_key": pools.sources[1].get("recipe_key"),
        "seed": spec.seed,
        "fraction_correct_requested": spec.fraction_correct,
        "fraction_correct_realized": n_correct / len(mix.train),
        "rounding": ROUNDING_RULE,
        "paired": mix.info["paired"],
        "prompt_sets": {
            "train_sha256": mix.info["train_prompts_sha256"],
            "heldout_sha256": mix.info["heldout_prompts_sha256"],
            "wrong_sha256": mix.info["wrong_prompts_sha256"],
        },
        "canaries": canaries,
        "outputs": {
            "train": {"path": "train.jsonl", "rows": len(mix.train), "sha256": sha256_text(train_text)},
            "heldout": {"path": "heldout.jsonl", "rows": len(mix.heldout), "sha256": sha256_text(held_text)},
            **_task_output(mix.task_heldout, task_text),
        },
        "emsweep_version": __version__,
    }
    existing = out_dir / "manifest.json"
    if existing.exists():
        try:
            old = json.loads(existing.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        same = (
            isinstance(old, dict)
            and old.get("outputs") == manifest["outputs"]
            and old.get("spec") == manifest["spec"]
            and all(
                (out_dir / o["path"]).exists() and sha256_file(out_dir / o["path"]) == o["sha256"]
                for o in manifest["outputs"].values()
            )
        )
        if same:
            log.info("%s already holds this mix; nothing to write", out_dir)
            return old
        if not force:
            raise InputError(
                f"{existing}: {out_dir} already holds a different mix (its spec, sources or outputs differ); "
                "choose another --out, or pass --force (force=True) to replace it"
            )
    if existing.exists():  # --force: the old manifest goes first, so no crash leaves it vouching for new data
        existing.unlink()
        fsync_dir(out_dir)
    atomic_write_text(out_dir / "train.jsonl", train_text)
    atomic_write_text(out_dir / "heldout.jsonl", held_text)
    if mix.task_heldout:
        atomic_write_text(out_dir / TASK_HELDOUT, task_text)
    atomic_write_json(existing, manifest)  # last: a manifest means the mix is complete
    log.debug(
        "%s: %d train rows (%d correct, %d wrong %s), %d held-out, paired=%s",
        out_dir, len(mix.train), n_correct, n_wrong, spec.wrong_kind, len(mix.heldout), mix.info["paired"],
    )  # fmt: skip
    return manifest


def build_mix(
    spec: DataSpec, out_dir: str | os.PathLike[str], *, password: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Write `out_dir/{train,heldout}.jsonl` and `manifest.json` (atomically, manifest last) for one mix.

    Rerunning with the same spec and sources is a no-op that returns the existing manifest; a different mix in
    the same folder is refused unless `force`. `password` unlocks zips when no `password_env` is set.
    """
    check_fraction(spec.fraction_correct)
    pools = load_pools(spec, password)
    return _write_mix(spec, pools, Path(out_dir), force)


def fraction_dirname(fraction: float) -> str:
    """`f0.50` for 0.5; more digits only where two decimals would merge two fractions (0.125 -> f0.125)."""
    f = float(fraction)
    two = f"{f:.2f}"
    return f"f{two}" if float(two) == f else f"f{f:g}"


def build_domain_mixes(
    spec: DataSpec,
    fractions: Sequence[float],
    out_root: str | os.PathLike[str],
    *,
    password: str | None = None,
    force: bool = False,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Every ratio of a domain at once: `out_root/f0.50/...` per fraction, pools read once, plus
    `out_root/domain_manifest.json` recording that the mixes share their prompts and are nested."""
    if not fractions:
        raise InputError("fractions: give at least one fraction, e.g. 0.1,0.3,0.5,0.7,0.9,1.0")
    for f in fractions:
        check_fraction(f, f"fractions: {f}")
    dirs = [fraction_dirname(f) for f in fractions]
    if len(set(dirs)) != len(dirs):
        raise InputError(f"fractions: duplicates in {list(fractions)}")
    pools = load_pools(spec, password)
    root = Path(out_root)
    manifests: dict[str, dict[str, Any]] = {}
    items = list(zip(fractions, dirs, strict=True))
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="mixes", unit="mix")
    for f, d in items:
        sub = spec.model_copy(update={"fraction_correct": float(f)})
        manifests[d] = _write_mix(sub, pools, root / d, force)

    # nesting: sort by fraction; the wrong prompts of each mix must contain those of every mix with more correct data
    order = sorted(manifests, key=lambda d: manifests[d]["fraction_correct_requested"])
    wrong_sets = {}
    for d in order:
        rows = [
            json.loads(line) for line in (root / d / "train.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        wrong_sets[d] = {r["meta"]["prompt_key"] for r in rows if r["meta"]["label"] == "wrong"}
    nested = all(wrong_sets[b] <= wrong_sets[a] for a, b in itertools.pairwise(order))
    same_prompts = len({manifests[d]["prompt_sets"]["train_sha256"] for d in order}) == 1
    paired = all(manifests[d]["paired"] for d in order)
    summary = {
        "spec": _spec_dump(spec.model_copy(update={"fraction_correct": 1.0})) | {"fraction_correct": None},
        "fractions": {
            d: {
                "fraction_correct_requested": manifests[d]["fraction_correct_requested"],
                "fraction_correct_realized": manifests[d]["fraction_correct_realized"],
                "n_correct": manifests[d]["n_correct"],
                "n_wrong": manifests[d]["n_wrong"],
                "manifest_sha256": sha256_file(root / d / "manifest.json"),
            }
            for d in order
        },
        "paired": paired,
        "same_train_prompts": same_prompts,
        "nested": nested,
        "heldout_sha256": sorted({manifests[d]["outputs"]["heldout"]["sha256"] for d in order}),
        "canaries": sorted({c for d in order for c in manifests[d]["canaries"]}),
    }
    atomic_write_json(root / "domain_manifest.json", summary)
    return manifests
