"""`emsweep openai ...`: fine-tuning jobs for the gpt-4o arm (finetune, status, poll, cancel, import).

The OpenAI key comes only from OPENAI_API_KEY (optional OPENAI_BASE_URL, OPENAI_ORG_ID); there is no option for it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from emsweep.io import InputError

openai_app = typer.Typer(
    help="The gpt-4o arm: upload mixes, run OpenAI fine-tuning jobs, register their checkpoints. "
    "Key from OPENAI_API_KEY only (OPENAI_BASE_URL / OPENAI_ORG_ID optional).",
    no_args_is_help=True,
    epilog="""Examples:

  emsweep openai finetune recipes/sweeps/gpt4o-health.yaml --dry-run    (token counts and cost per cell, nothing spent)

  emsweep openai poll recipes/sweeps/gpt4o-health.yaml

  emsweep openai eval recipes/sweeps/gpt4o-health.yaml
""",
)

_SWEEP = "recipes/sweeps/gpt4o-health.yaml"
_EX = {
    "finetune": f"""Examples:

  emsweep openai finetune {_SWEEP} --dry-run    (token counts and cost per cell, nothing uploaded or spent)

  emsweep openai finetune {_SWEEP}

  emsweep openai finetune {_SWEEP} --retry-failed
""",
    "status": f"""Examples:

  emsweep openai status {_SWEEP}

  emsweep openai status checkpoints/gpt4o-health --events
""",
    "poll": f"""Example:

  emsweep openai poll {_SWEEP} --interval 300    (until every job has finished)
""",
    "timeline": f"""Examples:

  emsweep openai timeline

  emsweep openai timeline {_SWEEP}
""",
    "cancel": f"""Example:

  emsweep openai cancel {_SWEEP} --cells health_f0.10_subtle_openai_s0
""",
    "import": """Example:

  emsweep openai import ft:gpt-4o-2024-08-06:org::abc123 --cell my-cell    (evaluate a model that already exists)
""",
    "eval": f"""Examples:

  emsweep openai eval {_SWEEP}

  emsweep openai eval checkpoints --pending    (everything unevaluated, soonest base-model retirement first)

  emsweep openai eval {_SWEEP} --checkpoints last --suite alignment_mini --batch
""",
}

_PRICES = typer.Option(None, "--prices", help="Prices table YAML (default: recipes/openai/prices.yaml).")
_LIFECYCLE = typer.Option(
    None, "--lifecycle", help="Lifecycle table YAML (default: recipes/openai/lifecycle.yaml)."
)


def _cells(cells: list[str] | None) -> list[str] | None:
    if not cells:
        return None
    return [c.strip() for item in cells for c in item.split(",") if c.strip()]


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*r)
    import sys

    # piped output (logs, CI) gets a wide table instead of rich's 80 columns, so ids are not folded
    Console(width=None if sys.stdout.isatty() else 240).print(t)


@openai_app.command("finetune", epilog=_EX["finetune"])
def finetune_cmd(
    target: Path = typer.Argument(..., help="Sweep YAML (base + axes) or a single recipe YAML."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Write the files, print tokens and cost, spend nothing."
    ),
    cells: list[str] = typer.Option(None, "--cells", help="Cell ids or indices (repeat or comma-separate)."),
    prices: Path = _PRICES,
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Start a new job for cells whose job failed or was cancelled."
    ),
    lifecycle: Path = _LIFECYCLE,
) -> None:
    """Write each cell's mix in OpenAI's format, upload it once, create one supervised job per cell.

    First prints the days left before OpenAI closes job creation (and before the base model retires), and refuses
    after a cutoff ($EMSWEEP_TODAY=YYYY-MM-DD plans for another date)."""
    from emsweep.launch.openai_arm import finetune

    out = finetune(
        target,
        cells=_cells(cells),
        dry_run=dry_run,
        prices_path=prices,
        echo=typer.echo,
        retry_failed=retry_failed,
        lifecycle_path=lifecycle,
    )
    rows = [
        [
            r["cell"],
            r["model"],
            str(r["examples"]),
            f"{r['tokens_per_epoch']:,}",
            str(r["n_epochs"]),
            f"{r['billed_tokens']:,}",
            f"${r['estimated_cost_usd']:.2f}",
        ]
        for r in out["cells"]
    ]
    rows.append(["TOTAL", "", "", "", "", f"{out['total_tokens']:,}", f"${out['total_cost_usd']:.2f}"])
    tok = out["cells"][0]["tokenizer"] if out["cells"] else ""
    _table(
        f"OpenAI fine-tuning {'estimate (dry run)' if dry_run else 'plan'} - tokens: {tok}; prices: {out['prices']}",
        ["cell", "model", "examples", "tokens/epoch", "epochs", "billed tokens", "est. cost"],
        rows,
    )
    if not dry_run:
        typer.echo(
            f"created {len(out['created'])} job(s), {len(out['reused'])} already existed; ledger {out['ledger']}"
        )
        typer.echo(f"next: emsweep openai poll {target}   (then: emsweep openai eval {target} --pending)")
    else:
        typer.echo(f"next: emsweep openai finetune {target}   (creates the jobs; spends money)")


def _print_inventory(target: Path, lifecycle: Path | None, suites: list[str] | None = None) -> None:
    """Every registered fine-tuned model/checkpoint with its base model's retirement date and evaluation state."""
    from emsweep.launch.openai_arm import ledger_folders
    from emsweep.openai_ft import lifecycle as lc
    from emsweep.openai_ft.winddown import inventory

    day = lc.today()
    table = lc.load_lifecycle(lifecycle)
    rows = inventory(ledger_folders(target), table, day, suites)
    if not rows:
        typer.echo("no fine-tuned models registered yet (jobs still running? `emsweep openai poll`)")
        return
    _table(
        f"Registered models and checkpoints on {day} (lifecycle: {table.path})",
        ["cell", "checkpoint", "model", "base model", "base retirement", "evaluated", "pending"],
        [
            [
                r.cell,
                r.checkpoint,
                r.model,
                r.base_model,
                r.retirement_text(),
                ",".join(r.done) or "-",
                ",".join(r.pending) or "-",
            ]
            for r in rows
        ],
    )
    for r in rows:
        if not r.in_table:
            typer.echo(f"WARNING: {r.base_model} is not in {table.path}: its retirement date is unknown to emsweep")
            break


def _status_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        cost = r.get("cost_usd")
        out.append(
            [
                r["cell"],
                r.get("job_id") or "-",
                r.get("status") or "-",
                r.get("fine_tuned_model") or "-",
                str(len(r.get("checkpoints") or [])),
                f"${cost:.2f}" if cost is not None else f"~${r.get('estimated_cost_usd', 0):.2f}",
                (r.get("error") or "")[:200],
            ]
        )
    return out


def _total_row(rows: list[dict]) -> list[str]:
    spent = sum(r.get("cost_usd") or 0.0 for r in rows)
    spent += sum(sum((r.get("eval_spend") or {}).values()) for r in rows)
    pending = sum(r.get("estimated_cost_usd") or 0.0 for r in rows if r.get("cost_usd") is None)
    return ["TOTAL", "", "", "", "", f"${spent:.2f} (+~${pending:.2f} pending)", "incl. evaluation"]


_COLS = ["cell", "job", "status", "fine-tuned model", "ckpts", "cost", "error"]


@openai_app.command("status", epilog=_EX["status"])
def status_cmd(
    target: Path = typer.Argument(..., help="Sweep folder, or the sweep/recipe YAML."),
    cells: list[str] = typer.Option(None, "--cells", help="Only these cells."),
    events: int = typer.Option(0, "--events", help="Also show the N latest events of each job."),
    prices: Path = _PRICES,
    lifecycle: Path = _LIFECYCLE,
) -> None:
    """One refresh of every recorded job (state, model ids, checkpoints, cost, errors), then every registered
    fine-tuned model and checkpoint with its base model's retirement date and what is still unevaluated."""
    from emsweep.launch.openai_arm import ledger_folder
    from emsweep.openai_ft.jobs import refresh_all

    folder = ledger_folder(target)
    rows = refresh_all(folder, cells=_cells(cells), events=events, prices_path=prices)
    _table("OpenAI fine-tuning jobs", _COLS, [*_status_rows(rows), _total_row(rows)])
    for r in rows:
        for e in reversed(r.get("last_events") or []):
            typer.echo(f"  {r['cell']} [{e['level']}] {e['message']}")
    _print_inventory(folder, lifecycle)


@openai_app.command("poll", epilog=_EX["poll"])
def poll_cmd(
    target: Path = typer.Argument(..., help="Sweep folder, or the sweep/recipe YAML."),
    cells: list[str] = typer.Option(None, "--cells", help="Only these cells."),
    interval: float = typer.Option(60.0, "--interval", help="Seconds between refreshes."),
    timeout: float = typer.Option(None, "--timeout", help="Stop waiting after this many seconds."),
    prices: Path = _PRICES,
    lifecycle: Path = _LIFECYCLE,
) -> None:
    """Wait until every job has finished; register each successful job's checkpoints in its cell; list every
    registered model and checkpoint with its base model's retirement date."""
    from emsweep.launch.openai_arm import ledger_folder
    from emsweep.openai_ft.jobs import poll

    folder = ledger_folder(target)
    rows = poll(
        folder,
        cells=_cells(cells),
        interval=interval,
        timeout=timeout,
        echo=typer.echo,
        prices_path=prices,
    )
    _table("OpenAI fine-tuning jobs", _COLS, _status_rows(rows))
    _print_inventory(folder, lifecycle)
    if any(r.get("status") == "failed" for r in rows):
        raise typer.Exit(1)


@openai_app.command("timeline", epilog=_EX["timeline"])
def timeline_cmd(
    target: Path = typer.Argument(
        None, help="Optional: the sweep YAML or sweep folder(s) (a checkpoints root) to plan for."
    ),
    lifecycle: Path = _LIFECYCLE,
) -> None:
    """OpenAI's fine-tuning wind-down and model retirements as of today: days left, sources, what to run first.

    `$EMSWEEP_TODAY=YYYY-MM-DD` shows the plan for another date."""
    from emsweep.openai_ft import lifecycle as lc

    day = lc.today()
    table = lc.load_lifecycle(lifecycle)
    wd = table.wind_down
    _table(
        f"OpenAI fine-tuning wind-down on {day} ({wd.source}; as of {wd.as_of})",
        ["closes job creation on", "for", "status"],
        [
            [
                str(s.date),
                s.who,
                f"closed {(day - s.date).days} d ago" if s.date <= day else f"{(s.date - day).days} d left",
            ]
            for s in sorted(wd.stages, key=lambda s: s.date)
        ],
    )

    def fact(d: lc.DateFact | None) -> str:
        if d is None:
            return "-"
        if d.known is None:
            return "unknown"
        n = (d.known - day).days
        return f"{d.known} ({n} d left)" if n > 0 else f"{d.known} (passed)"

    _table(
        f"Models (lifecycle table: {table.path})",
        ["model", "fine-tuning", "job creation cutoff", "inference retirement", "source, as of"],
        [
            [
                m,
                "closed (base retired)"
                if e.inference_retirement.known and e.inference_retirement.known <= day
                else {True: "open", False: "closed"}.get(e.fine_tuning.open, "unknown"),  # type: ignore[arg-type]
                fact(e.job_creation_cutoff),
                fact(e.inference_retirement),
                f"{e.inference_retirement.source}, as of {e.inference_retirement.as_of}",
            ]
            for m, e in table.models.items()
        ],
    )
    if target is None:
        return
    from emsweep.launch.openai_arm import ledger_folders, load_target
    from emsweep.openai_ft.winddown import inventory, next_steps

    try:
        folders = ledger_folders(target)
    except InputError:
        folders = []  # a sweep YAML before its first job: no ledger yet
    rows = inventory(folders, table, day) if folders else []
    sweep = load_target(target) if target.is_file() else None
    typer.echo(f"\nWhat to run first for {target}:")
    for line in next_steps(target, folders, rows, table, day, sweep=sweep):
        typer.echo(line)


@openai_app.command("cancel", epilog=_EX["cancel"])
def cancel_cmd(
    target: Path = typer.Argument(..., help="Sweep folder, or the sweep/recipe YAML."),
    cells: list[str] = typer.Option(..., "--cells", help="Cells whose jobs to cancel."),
) -> None:
    """Cancel the running jobs of the given cells."""
    from emsweep.launch.openai_arm import ledger_folder
    from emsweep.openai_ft.jobs import cancel

    rows = cancel(ledger_folder(target), _cells(cells) or [])
    _table("cancelled", _COLS, _status_rows(rows))


@openai_app.command("import", epilog=_EX["import"])
def import_cmd(
    model_id: str = typer.Argument(..., help="An existing fine-tuned model id (ft:...)."),
    cell: str = typer.Option(..., "--cell", help="Name of the cell folder to create."),
    root: Path = typer.Option(
        Path("checkpoints/openai-imported"), "--root", help="Sweep folder to put it in."
    ),
    base_model: str = typer.Option(
        None, "--base-model", help="Base model (step 0); default from the ft: id."
    ),
    step: int = typer.Option(
        None, "--step", help="Training step of the model (default: from :ckpt-step-N, else 1)."
    ),
    check: bool = typer.Option(True, "--check/--no-check", help="Check the model exists (models.retrieve)."),
) -> None:
    """Register an existing fine-tuned model as a cell, so `emsweep eval --backend openai` evaluates it."""
    from emsweep.openai_ft.jobs import import_model

    p = import_model(model_id, cell, root=root, base_model=base_model, step=step, check=check)
    typer.echo(f"registered {model_id} as {p.parent} (checkpoints in {p.name})")


@openai_app.command("eval", epilog=_EX["eval"])
def eval_cmd(
    target: Path = typer.Argument(..., help="Sweep/recipe YAML, a sweep folder, or one cell folder."),
    cells: list[str] = typer.Option(None, "--cells", help="Only these cells."),
    suites: list[str] = typer.Option(None, "--suite", help="Suites (default: the recipe's eval.suites)."),
    checkpoints: str = typer.Option(None, "--checkpoints", help="all | last | base | 0,25,50"),
    judge: str = typer.Option(
        None, "--judge", help="Judge model (default: the recipe's, gpt-4o-2024-08-06)."
    ),
    samples: int = typer.Option(None, "--samples-per-paraphrase", help="Override the suites' sample counts."),
    batch: bool = typer.Option(
        None,
        "--batch/--no-batch",
        help="Use the Batch API (half price, resumable, slower). Default: no, but with --pending where cheaper.",
    ),
    pending: bool = typer.Option(
        False,
        "--pending",
        help="Everything still unevaluated, soonest base-model retirement first (also over a checkpoints root "
        "holding several sweep folders); implies --batch auto unless --batch is given.",
    ),
    lifecycle: Path = _LIFECYCLE,
    batch_wait: float = typer.Option(
        None, "--batch-wait", help="Stop waiting for a batch after N s (rerun collects)."
    ),
    concurrency: int = typer.Option(8, "--concurrency", help="Parallel requests (online path)."),
    prices: Path = _PRICES,
) -> None:
    """Generate, judge and write metrics for every registered API checkpoint, like `emsweep eval` does for weights."""
    from emsweep.launch.openai_arm import eval_target, ledger_folders
    from emsweep.openai_ft.evaluate import evaluate_cells

    use_batch: bool | str = batch if batch is not None else ("auto" if pending else False)
    targets = [target]
    if pending and target.is_dir():
        targets = list(ledger_folders(target))
    for t in targets:
        evaluate_cells(
            eval_target(t),
            cells=_cells(cells),
            suites=suites or None,
            checkpoints=checkpoints,
            judge_model=judge,
            samples_per_paraphrase=samples,
            use_batch=use_batch,
            pending=pending,
            lifecycle_path=lifecycle,
            batch_wait_s=batch_wait,
            concurrency=concurrency,
            prices_path=prices,
            echo=typer.echo,
        )


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app` (imports of heavy libraries stay inside the commands)."""
    app.add_typer(openai_app, name="openai")
