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

app = typer.Typer(
    name="emsweep",
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


def main() -> None:
    """Entry point: bad input prints one clear message (file, line, key) instead of a traceback."""
    try:
        app()
    except InputError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
