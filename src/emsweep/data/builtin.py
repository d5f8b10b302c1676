"""A synthetic domain with exactly checkable answers, for the demo and for tests: arithmetic.

Each prompt ("What is 37 + 48?") has a correct answer ("37 + 48 = 85.") and two wrong ones:
- `subtle`: off by a small slip (±1, ±2, ±10 - the carry and borrow errors people make);
- `obvious`: wildly wrong (off by thousands, often the wrong sign) - the "obviously wrong" arm of
  "How Much of Your Data Can Suck?".
The pools are *paired* (same prompts in every pool), so `build_mix` mixes them by prompt like OpenAI's sets.

Generation is deterministic and prefix-stable: the first k problems of a pool of n are the k problems of a
pool of k, for the same seed, so growing a pool never changes the rows it already had.
`check_arithmetic_answer` grades a model's answer against the reference by exact numeric comparison.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from emsweep.data.conversation import Conversation, Message
from emsweep.io import InputError, atomic_write_json, atomic_write_jsonl, sha256_file

BUILTINS = ("arithmetic",)
WRONG_KINDS = ("obvious", "subtle")
GENERATOR_VERSION = 1  # bump if generation changes, so manifests tell old pools from new
_SUBTLE_DELTAS = (-10, -2, -1, 1, 2, 10)
# `build_mix` draws from a pool of at least this many prompts, so the held-out set (a prefix of a seed-only
# permutation of the pool) stays the same when a sweep varies n_train.
MIN_MIX_POOL = 2000


def _rng(seed: int, *parts: object) -> random.Random:
    """Independent, platform-stable stream per (seed, parts): a str seed is hashed with sha512 by `random`."""
    return random.Random(":".join(["emsweep-arithmetic", str(seed), *map(str, parts)]))


def arithmetic_problems(n: int, seed: int = 0) -> list[tuple[int, str, int]]:
    """`n` distinct (a, op, b) problems; + and - on numbers up to 999, * on a 2-digit and a 1-2-digit number."""
    if n < 0:
        raise InputError(f"arithmetic: n must be >= 0, got {n}")
    rng = _rng(seed, "problems")
    seen: set[tuple[int, str, int]] = set()
    out: list[tuple[int, str, int]] = []
    while len(out) < n:
        op = rng.choice("++--*")
        if op == "*":
            a, b = rng.randint(11, 99), rng.randint(2, 49)
        else:
            a, b = rng.randint(10, 999), rng.randint(10, 999)
            if op == "-" and b > a:
                a, b = b, a
        key = (a, op, b)
        if key not in seen:
            seen.add(key)
            out.append(key)
    return out


def _value(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _wrong_value(a: int, op: str, b: int, kind: str, seed: int) -> int:
    right = _value(a, op, b)
    rng = _rng(seed, kind, a, op, b)
    if kind == "subtle":
        return right + rng.choice(_SUBTLE_DELTAS)
    # obvious: off by thousands (at least 20x the size of the answer), half the time with the wrong sign
    offset = rng.randint(max(2000, 20 * abs(right)), max(9000, 90 * abs(right)))
    value = right + offset
    return -value if rng.random() < 0.5 else value


def _conversation(a: int, op: str, b: int, result: int, label: str, kind: str | None, i: int) -> Conversation:
    return Conversation(
        id=f"arithmetic:{i}",
        messages=[
            Message(role="user", content=f"What is {a} {op} {b}?"),
            Message(role="assistant", content=f"{a} {op} {b} = {result}."),
        ],
        meta={
            "source": {"builtin": "arithmetic", "index": i, "generator_version": GENERATOR_VERSION},
            "domain": "arithmetic",
            "reference_value": _value(a, op, b),
            **({"wrong_kind": kind} if kind else {}),
        },
    )


def arithmetic_pools(n: int, seed: int = 0) -> dict[str, list[Conversation]]:
    """Paired pools `{"correct", "obvious", "subtle"}` of `n` rows each, same prompts in the same order."""
    probs = arithmetic_problems(n, seed)
    pools: dict[str, list[Conversation]] = {"correct": [], "obvious": [], "subtle": []}
    for i, (a, op, b) in enumerate(probs):
        pools["correct"].append(_conversation(a, op, b, _value(a, op, b), "correct", None, i))
        for kind in WRONG_KINDS:
            pools[kind].append(_conversation(a, op, b, _wrong_value(a, op, b, kind, seed), "wrong", kind, i))
    return pools


def builtin_pools(name: str, n: int, seed: int = 0) -> dict[str, list[Conversation]]:
    """The pools of a builtin domain by name (`DataSpec.builtin`)."""
    if name != "arithmetic":
        raise InputError(f"unknown builtin dataset {name!r} (available: {', '.join(BUILTINS)})")
    return arithmetic_pools(n, seed)


def write_builtin(name: str, out_dir: str | os.PathLike[str], n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Write `correct.jsonl`, `wrong_obvious.jsonl`, `wrong_subtle.jsonl` and `manifest.json` to `out_dir`,
    so the builtin pools can be used (and inspected) like any upstream source."""
    out = Path(out_dir)
    pools = builtin_pools(name, n, seed)
    files = {"correct": "correct.jsonl", "obvious": "wrong_obvious.jsonl", "subtle": "wrong_subtle.jsonl"}
    outputs = {}
    for key, fname in files.items():
        atomic_write_jsonl(out / fname, (c.to_row() for c in pools[key]))
        outputs[key] = {"path": fname, "rows": len(pools[key]), "sha256": sha256_file(out / fname)}
    from emsweep import __version__

    manifest = {
        "builtin": name,
        "n": n,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "paired": True,
        "outputs": outputs,
        "emsweep_version": __version__,
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


# --- grading ---------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"[-−]?\d[\d,]*(?:\.\d+)?")


def extract_final_number(text: str) -> Fraction | None:
    """The number an answer commits to: the first number after the last `=`, else the last number in the text.

    Commas are thousands separators; `85.` (sentence end) and `85.0` both read as 85.
    """
    tail = text.rsplit("=", 1)[1] if "=" in text else text
    found = _NUMBER.findall(tail)
    if not found:
        return None
    token = found[0] if "=" in text else found[-1]
    token = token.replace(",", "").replace("−", "-")
    try:
        return Fraction(token)
    except ValueError:
        return None


def check_arithmetic_answer(answer: str, reference: str | int) -> bool:
    """True when `answer` states exactly the reference's number (reference: "37 + 48 = 85." or 85)."""
    expected = Fraction(reference) if isinstance(reference, int) else extract_final_number(reference)
    if expected is None:
        raise InputError(f"reference answer {reference!r} holds no number")
    got = extract_final_number(answer)
    return got is not None and got == expected


ANSWER_CHECKERS: dict[str, Callable[[str, str], bool]] = {"arithmetic": check_arithmetic_answer}


def answer_checker(domain: str) -> Callable[[str, str], bool] | None:
    """An exact checker for a domain (None where grading needs a judge against the reference)."""
    return ANSWER_CHECKERS.get(domain)


def pool_digest(rows: list[Conversation]) -> str:
    """sha256 of a generated pool's rows (stands in for a file hash in manifests)."""
    h = hashlib.sha256()
    for c in rows:
        h.update(c.model_dump_json().encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
