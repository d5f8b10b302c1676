"""CLI command of the analysis stage: `emsweep report` (`emsweep demo` lives in launch/demo.py)."""

from __future__ import annotations

from pathlib import Path

import typer


def report_cmd(
    root: Path = typer.Argument(
        ...,
        help="Any run folder: one `emsweep train` run, a sweep output folder (<output_root>/<sweep>), or a "
        "folder above several sweeps.",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report folder (default: ROOT/report)."),
    domain_tolerance: float = typer.Option(
        0.05, help="Threshold: domain accuracy within this of the reference (fine-tune, base) counts as recovered."
    ),
    misalignment_tolerance: float = typer.Option(
        0.05, help="Threshold: misaligned rate within this of the reference (fine-tune, base) counts as recovered."
    ),
    early_stop_tolerance: float = typer.Option(
        0.05, help="Early stopping: misaligned rate allowed above the base model's (step 0)."
    ),
    tolerance: float | None = typer.Option(
        None, help="Threshold tolerance for both metrics (overrides --domain-/--misalignment-tolerance)."
    ),
    n_boot: int = typer.Option(
        1000, help="Cluster-bootstrap replicates (questions x seeds) for curve and threshold intervals."
    ),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    domain_metric: str = typer.Option(
        "auto",
        help="Domain performance: exact (answer checker, e.g. arithmetic), judge, or auto (exact if any).",
    ),
) -> None:
    """Gather every metrics.json under ROOT into results.csv/.parquet and write report/index.html with plots."""
    from emsweep.analysis.report import build_report

    index = build_report(
        root,
        out,
        domain_tolerance=domain_tolerance,
        misalignment_tolerance=misalignment_tolerance,
        early_stop_tolerance=early_stop_tolerance,
        n_boot=n_boot,
        seed=seed,
        domain_metric=domain_metric,
        tolerance=tolerance,
    )
    typer.echo(f"results: {index.parent / 'results.csv'}")
    typer.echo(f"report:  {index}")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app` (imports of heavy libraries stay inside the commands)."""
    app.command("report")(report_cmd)
