"""`--help` of every emsweep command and command group ends with examples, and every example names a real command
with options that command has (so an example cannot go stale silently)."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import typer
import typer.rich_utils
from typer.testing import CliRunner

from emsweep.cli import app

ROOT = typer.main.get_command(app)


def _walk(cmd: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    out = [(path, cmd)]
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        out += _walk(sub, (*path, name))
    return out


COMMANDS = _walk(ROOT, ())


def _resolve(tokens: list[str]) -> tuple[Any, list[str]]:
    """The command an example line names, and the tokens left for its options and arguments."""
    cmd = ROOT
    while tokens and tokens[0] in getattr(cmd, "commands", {}):
        cmd, tokens = cmd.commands[tokens[0]], tokens[1:]
    return cmd, tokens


def _help(path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 400)  # one example per line, no wrapping
    res = CliRunner().invoke(app, [*path, "--help"])
    assert res.exit_code == 0, res.output
    return res.output


def test_the_walk_finds_every_stage() -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"train", "data mix", "model init", "sweep run", "openai finetune", "report", "demo", "eval"} <= names
    assert len(COMMANDS) >= 25


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "emsweep")
def test_help_ends_with_examples_of_real_commands(path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    text = _help(path, monkeypatch)
    heads = [m.end() for m in re.finditer(r"(?m)^\s*Examples?:\s*$", text)]
    assert heads, f"`emsweep {' '.join(path)} --help` has no 'Example:' section"
    tail = text[heads[-1] :]
    assert not re.search(r"[╭╰│]|^\s*--?\w", tail, re.M), "the examples must be the last section of the help"
    examples = [ln.strip() for ln in tail.splitlines() if re.match(r"\s*(\w+=\S+\s+)*emsweep\b", ln)]
    prefix = " ".join(("emsweep", *path))
    assert any(re.sub(r"^(\w+=\S+\s+)*", "", e).startswith(prefix) for e in examples), (
        f"no example of `{prefix}` in:\n{tail}"
    )
    for line in examples:
        cmd_line = re.sub(r"^(\w+=\S+\s+)*", "", line).split("  (")[0].split(" #")[0]
        tokens = shlex.split(cmd_line)[1:]
        cmd, rest = _resolve(tokens)
        assert not getattr(cmd, "commands", None), f"{line!r} stops at a group"
        known = {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", []))}
        for tok in rest:
            opt = tok.split("=", 1)[0]
            if opt.startswith("-"):
                assert opt in known, f"{line!r}: {opt} is not an option of `emsweep {cmd.name}`"


def test_the_checker_would_catch_a_stale_example() -> None:
    cmd, rest = _resolve(shlex.split("data mix --bogus 1 --n 5"))
    known = {o for p in cmd.params for o in p.opts}
    assert cmd.name == "mix" and rest == ["--bogus", "1", "--n", "5"]
    assert "--n" in known and "--bogus" not in known
    group, _ = _resolve(["sweep"])
    assert getattr(group, "commands", None)  # an example that stops at a group is caught above
