"""`emsweep`: one command, a subcommand per stage. Each stage owns its commands in `<stage>/cli.py`.

Heavy libraries (torch, transformers, vllm) are imported inside commands so that `--help` stays instant.
"""

from __future__ import annotations

import logging
import sys

import typer

from emsweep import __version__
from emsweep.analysis import cli as analysis_cli
from emsweep.data import cli as data_cli
from emsweep.evals import cli as evals_cli
from emsweep.io import InputError
from emsweep.launch import cli as launch_cli
from emsweep.openai_ft import cli as openai_cli
from emsweep.train import cli as train_cli

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
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


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


def main() -> None:
    """Entry point: bad input prints one clear message (file, line, key) instead of a traceback."""
    try:
        app()
    except InputError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
