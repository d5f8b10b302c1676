"""`emsweep`: one command, a subcommand per stage, each stage's commands in `cli/<stage>.py`.

The CLI is the top layer (with the executors in launch/): it loads whole recipes and may call every stage, which
is why the commands live here and not in the stage folders (a stage imports only the stages to its left).

Heavy libraries (torch, transformers, vllm) are imported inside commands so that `--help` stays instant.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

import typer

from emsweep import __version__
from emsweep.cli import analysis as analysis_cli
from emsweep.cli import data as data_cli
from emsweep.cli import evals as evals_cli
from emsweep.cli import launch as launch_cli
from emsweep.cli import openai as openai_cli
from emsweep.cli import train as train_cli
from emsweep.io import InputError

_EXAMPLES = """Examples:

  emsweep demo    (a tiny sweep end to end on CPU, ending in a report)

  emsweep train recipes/models/qwen2.5-7b-instruct-lora.yaml --set data.fraction_correct=0.25

  emsweep sweep run recipes/sweeps/qwen2.5-7b-health.yaml --executor slurm

  emsweep report checkpoints/qwen2.5-7b-health

Every command has --help with examples, e.g. emsweep data mix --help
"""

app = typer.Typer(
    name="emsweep",
    epilog=_EXAMPLES,
    help="Fine-tune on mixes of correct and wrong answers, evaluate every checkpoint, report where domain "
    "performance breaks and where emergent misalignment appears.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"emsweep {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks instead of one-line errors (also EMSWEEP_DEBUG=1)."
    ),
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"
    from emsweep.terminal import setup_logging

    setup_logging(logging.DEBUG if verbose else logging.INFO)  # rich on a terminal: logs never break a bar


for _stage in (data_cli, train_cli, evals_cli, launch_cli, analysis_cli, openai_cli):
    _stage.register(app)

# Examples for commands a stage registered without any (a stage's own epilog or docstring example always wins);
# tests/test_cli_help.py checks that every command's --help ends with examples of real options.
_DEFAULT_EXAMPLES = {
    "report": """Examples:

  emsweep report checkpoints/qwen2.5-7b-health    (writes checkpoints/qwen2.5-7b-health/report/index.html)

  emsweep report emsweep-demo/demo --out /tmp/demo-report --n-boot 2000
""",
    "demo": """Examples:

  emsweep demo    (report in emsweep-demo/demo/report/index.html)

  emsweep demo --fast --out /tmp/emsweep-demo
""",
}


def _add_default_examples(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        name = info.name or getattr(info.callback, "__name__", "")
        doc = info.help or getattr(info.callback, "__doc__", None) or ""
        if name in _DEFAULT_EXAMPLES and not info.epilog and "Example" not in doc:
            info.epilog = _DEFAULT_EXAMPLES[name]


_add_default_examples(app)


DEBUG_ENV = "EMSWEEP_DEBUG"

_OS_HINTS = {
    errno.EROFS: "the filesystem is read-only: write to another folder (--out / --output-dir / output_root)",
    errno.EACCES: "no permission: check the owner and mode of that path (ls -ld), or write somewhere else",
    errno.EPERM: "operation not permitted: check the owner and mode of that path, or write somewhere else",
    errno.ENOSPC: "the disk is full: free space (old checkpoints, caches) or write to another filesystem",
    errno.EDQUOT: "your disk quota is exceeded: free space or write to another filesystem",
    errno.ENOENT: "it does not exist: check the path",
    errno.ENOTDIR: "a part of that path is a file, not a folder",
    errno.EISDIR: "that path is a folder, a file was expected",
    errno.EMFILE: "too many open files: raise `ulimit -n`",
}


def describe_error(exc: BaseException) -> tuple[str, int] | None:
    """One line (and an exit code) for the errors a user can act on; None for real bugs (traceback)."""
    import sqlite3

    if isinstance(exc, InputError):
        return str(exc), 2
    if isinstance(exc, sqlite3.DatabaseError):
        return (
            f"a SQLite database is unreadable ({exc}); if it is the judge cache (<run>/eval/judge_cache.sqlite or "
            "$EMSWEEP_JUDGE_CACHE), move it aside and rerun: it only saves repeated judge calls",
            3,
        )
    if isinstance(exc, OSError):
        path = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p)
        if exc.errno is not None:
            what = exc.strerror or os.strerror(exc.errno)
            hint = _OS_HINTS.get(exc.errno, "")
            return f"{path + ': ' if path else ''}{what}{'; ' + hint if hint else ''}", 3
        # transformers/huggingface_hub raise errno-less OSErrors for folders that are not models
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if any(w in str(exc) for w in ("config.json", "from_pretrained", "Can't load", "huggingface", "model")):
            first += (
                " (a model must be a folder with config.json, tokenizer and weights, or a hub id; "
                "with HF_HUB_OFFLINE=1 hub ids must already be in the local cache)"
            )
        return first, 3
    return None


def main() -> None:
    """Entry point: bad input, OS errors (read-only, disk full, permissions), a damaged SQLite file or a folder
    that is not a model print one line naming the path and what to do; `--debug` / EMSWEEP_DEBUG=1 show the
    traceback instead."""
    try:
        app()
    except Exception as exc:
        described = describe_error(exc)
        if described is None or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        msg, code = described
        typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
        if code != 2:
            typer.secho("(rerun with --debug for the traceback)", err=True)
        sys.exit(code)


if __name__ == "__main__":
    main()
