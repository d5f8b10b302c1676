"""CLI commands of the launch stage: `emsweep sweep plan|run|cell|status`."""

from __future__ import annotations

from pathlib import Path

import typer

sweep_app = typer.Typer(
    help="Sweeps: a base recipe crossed over axes; plan, run (local or SLURM), run one cell, status.",
    no_args_is_help=True,
    epilog="""Examples:

  emsweep sweep plan recipes/sweeps/qwen2.5-7b-health.yaml

  emsweep sweep run recipes/sweeps/qwen2.5-7b-health.yaml --executor slurm --dry-run

  emsweep sweep status recipes/sweeps/qwen2.5-7b-health.yaml
""",
)

_EX_PLAN = """Example:

  emsweep sweep plan emsweep-demo/demo-sweep.yaml    (the cells, their axis values and what each has left to do)
"""

_EX_RUN = """Examples:

  emsweep sweep run emsweep-demo/demo-sweep.yaml -j 2    (locally, two cells at once, then the report)

  emsweep sweep run recipes/sweeps/qwen2.5-7b-health.yaml --executor slurm --dry-run    (print the sbatch scripts)

  emsweep sweep run recipes/sweeps/qwen2.5-7b-health.yaml --executor slurm --stages mix,train
"""

_EX_CELL = """Examples:

  emsweep sweep cell emsweep-demo/demo-sweep.yaml --index 0

  emsweep sweep cell emsweep-demo/demo-sweep.yaml --index 0 --stages eval --force    (re-evaluate one cell)
"""

_EX_STATUS = """Examples:

  emsweep sweep status emsweep-demo/demo-sweep.yaml

  emsweep sweep status recipes/sweeps/qwen2.5-7b-health.yaml --executor slurm    (with the queue's job states)
"""

SWEEP_ARG = typer.Argument(..., exists=False, help="Sweep YAML (e.g. emsweep-demo/demo-sweep.yaml).")
CREATE_OPENAI_JOBS = typer.Option(
    False,
    "--create-openai-jobs",
    help="`method: openai` cells without a fine-tuning job may create one (spends money; see `emsweep openai "
    "finetune SWEEP --dry-run` for the cost). Without it such cells stop the run; cells with a job are polled once.",
)


def _stage_table(sweep, title: str):
    from rich.table import Table

    from emsweep.launch.sweep import STAGES

    table = Table(title=title, show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("cell id", no_wrap=True)
    for k in sweep.cells[0].values if sweep.cells else []:
        table.add_column(k.split(".")[-1])
    table.add_column("left to do", no_wrap=True)
    for c in sweep.cells:
        left = c.stages_left(STAGES)
        todo = "[green]done[/green]" if not left else ", ".join(left)
        table.add_row(str(c.index), c.id, *[str(v) for v in c.values.values()], todo)
    return table


@sweep_app.command("plan", epilog=_EX_PLAN)
def plan(sweep_file: Path = SWEEP_ARG) -> None:
    """Print the cells of a sweep and what each has left to do (from its done-markers)."""
    from rich.console import Console

    from emsweep.launch.sweep import check_sweep_folder, load_sweep

    sweep = load_sweep(sweep_file)
    check_sweep_folder(sweep)
    console = Console()
    console.print(_stage_table(sweep, f"sweep {sweep.name}: {len(sweep.cells)} cells in {sweep.root}"))
    console.print(f"spec hash {sweep.spec_hash[:12]}")
    from emsweep.launch.sweep import cell_inputs, check_inputs

    for c in sweep.cells:  # each cell's resolved input files (what its remaining stages read)
        for key, path, problem in cell_inputs(c):
            console.print(f"  {c.id}  {key}: {path}" + (f"  [red]{problem}[/red]" if problem else ""), highlight=False)
    check_inputs(sweep)


@sweep_app.command("run", epilog=_EX_RUN)
def run(
    sweep_file: Path = SWEEP_ARG,
    executor: str = typer.Option("local", "--executor", "-e", help="local | slurm"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would run / be submitted; run nothing."),
    max_parallel: int | None = typer.Option(
        None, "--max-parallel", "-j", help="Cells at once (local: subprocesses; slurm: array %K)."
    ),
    stages: str = typer.Option(
        "mix,train,eval", "--stages", help="Comma-separated subset of mix,train,eval."
    ),
    report: bool = typer.Option(
        True, "--report/--no-report", help="Build the report when every cell is done."
    ),
    create_openai_jobs: bool = CREATE_OPENAI_JOBS,
) -> None:
    """Run every cell of the sweep (skipping finished stages), then build the report.

    `method: openai` cells train on OpenAI: their train stage polls the cell's job once (registering its checkpoints
    when it has succeeded) and otherwise waits; the command then exits 75 and a rerun continues."""
    from rich.console import Console

    from emsweep.io import InputError
    from emsweep.launch.runner import parse_stages, run_sweep_local
    from emsweep.launch.sweep import load_sweep

    sweep = load_sweep(sweep_file)
    st = parse_stages(stages)
    console = Console()
    from emsweep.launch.sweep import check_inputs

    check_inputs(sweep, tuple(st))  # a missing input fails here, before anything runs or is submitted
    if executor == "slurm":
        from emsweep.launch.slurm import run_sweep_slurm

        if create_openai_jobs:
            raise InputError("--create-openai-jobs works with --executor local (OpenAI jobs need no GPU node)")
        from emsweep.launch.openai_arm import check_not_on_slurm

        check_not_on_slurm(sweep, st)
        run_sweep_slurm(sweep, dry_run=dry_run, max_parallel=max_parallel, stages=st, report=report)
        return
    if executor != "local":
        raise InputError(f"--executor {executor!r}: choose local or slurm")
    if dry_run:
        console.print(_stage_table(sweep, f"dry run: sweep {sweep.name} would run these stages"))
        return
    from emsweep.launch.runner import EXIT_PENDING, pending_cells

    try:
        results = run_sweep_local(
            sweep, st, max_parallel=max_parallel or 1, create_openai_jobs=create_openai_jobs
        )
    except RuntimeError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    waiting = pending_cells(results)
    if waiting:
        typer.secho(
            f"{len(waiting)} cell(s) wait for their OpenAI fine-tuning jobs ({', '.join(waiting)}); the other cells "
            f"are done. Rerun `emsweep sweep run {sweep_file}` to continue (status: `emsweep openai status "
            f"{sweep_file}`)",
            fg=typer.colors.YELLOW,
            err=True,
        )
        raise typer.Exit(EXIT_PENDING)
    if report and all(not c.stages_left() for c in sweep.cells):
        from emsweep.analysis.report import build_report

        out = build_report(sweep.root)
        console.print(f"report: {out}")


@sweep_app.command("cell", epilog=_EX_CELL)
def cell(
    sweep_file: Path = SWEEP_ARG,
    index: int | None = typer.Option(
        None, "--index", "-i", help="Cell index (default: $SLURM_ARRAY_TASK_ID)."
    ),
    cell_id: str | None = typer.Option(None, "--cell", "-c", help="Cell id (see `sweep plan`)."),
    stages: str = typer.Option(
        "mix,train,eval", "--stages", help="Comma-separated subset of mix,train,eval."
    ),
    force: bool = typer.Option(False, "--force", help="Rerun the stages even if their done-marker exists."),
    create_openai_jobs: bool = CREATE_OPENAI_JOBS,
) -> None:
    """Run one cell's stages (what each SLURM array task calls). Finished stages are skipped.

    Exits 75 when the cell waits for its OpenAI fine-tuning job (rerun later)."""
    from emsweep.io import InputError
    from emsweep.launch.runner import env_cell_index, parse_stages, run_cell
    from emsweep.launch.sweep import load_sweep

    sweep = load_sweep(sweep_file)
    if index is not None and cell_id is not None:
        raise InputError("give --index or --cell, not both")
    if index is None and cell_id is None:
        index = env_cell_index()
        if index is None:
            raise InputError("give --index I or --cell ID (or run inside a SLURM array task)")
    c = sweep.cell(cell_id if cell_id is not None else int(index))  # type: ignore[arg-type]

    def on_stage(cell, stage: str, event: str) -> None:
        typer.echo(f"[{cell.id}] {stage}: {event}")

    from emsweep.launch.runner import EXIT_PENDING, CellBusy

    try:
        res = run_cell(
            sweep, c, parse_stages(stages), force=force, on_stage=on_stage, create_openai_jobs=create_openai_jobs
        )
    except CellBusy as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"[{c.id}] " + ", ".join(f"{k}={v}" for k, v in res.items()))
    if "pending" in res.values():
        raise typer.Exit(EXIT_PENDING)


@sweep_app.command("status", epilog=_EX_STATUS)
def status(
    sweep_file: Path = SWEEP_ARG,
    executor: str = typer.Option(
        "auto", "--executor", "-e", help="auto | local | slurm (auto: slurm if the sweep was submitted)."
    ),
) -> None:
    """Each cell's stages (done-markers) and, for SLURM sweeps, job states."""
    from rich.console import Console

    from emsweep.launch.sweep import load_sweep

    sweep = load_sweep(sweep_file)
    use_slurm = executor == "slurm" or (executor == "auto" and (sweep.root / "slurm").exists())
    if use_slurm:
        from emsweep.launch.slurm import slurm_status

        out = slurm_status(sweep)
        if out is not None and not isinstance(out, (dict, list)):
            Console().print(out)
        return
    Console().print(_stage_table(sweep, f"sweep {sweep.name} ({sweep.root})"))


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app` (imports of heavy libraries stay inside the commands)."""
    app.add_typer(sweep_app, name="sweep")
    from emsweep.launch.demo import demo_cmd

    app.command("demo")(demo_cmd)
