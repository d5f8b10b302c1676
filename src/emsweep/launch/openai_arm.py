"""The launcher's side of the gpt-4o arm: sweep and recipe YAMLs as sweeps, and the train stage of `method: openai`.

Why here: `openai_ft/` works on loaded sweeps and never imports `launch/` (it sits below it); loading a YAML into a
sweep, and running a cell's `mix` stage, are the launcher's. `emsweep sweep run`, `emsweep sweep cell` and
`emsweep train` send a `method: openai` cell's train stage to `openai_ft.cell.train_cell` through `stage_train`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from emsweep.io import InputError, is_done
from emsweep.launch.sweep import Cell, Sweep, SweepSpec, build_sweep, load_sweep
from emsweep.openai_ft.ledger import Ledger

log = logging.getLogger(__name__)


def recipe_sweep(recipe: Any, path: Path | None, output_dir: str | Path | None = None) -> Sweep:
    """A single recipe as a one-cell sweep: `<output_dir's parent>/<recipe name>/<cell id>/`, the layout `emsweep
    openai finetune RECIPE` has always used; an explicit `output_dir` (`emsweep train --output-dir D`) is the sweep
    folder itself (`D/<cell id>/`)."""
    if output_dir is not None:
        out = Path(output_dir)
        spec = SweepSpec(name=out.name, output_root=str(out.parent), base=recipe.model_dump(mode="json"))
    else:
        out = recipe.resolved_output_dir()
        spec = SweepSpec(name=recipe.name, output_root=str(out.parent), base=recipe.model_dump(mode="json"))
    return build_sweep(spec, path=path)


def load_target(path: str | Path) -> Sweep:
    """A sweep (YAML with `base`/`axes`) or a single recipe wrapped as a one-cell sweep; every cell must be
    `method: openai`."""
    from emsweep.config import load_yaml

    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: give the sweep or recipe YAML (a folder works for status/poll/cancel)")
    data = load_yaml(p)
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping at the top level")
    if "base" in data or "axes" in data:
        sweep, where = load_sweep(p), "`base:`"
    else:
        from emsweep.recipe import load_recipe

        sweep, where = recipe_sweep(load_recipe(p), p), "the recipe"  # validates with file:line errors
    # The method is part of every cell id and of the report's groups: an API cell must say it is one, so that
    # `emsweep sweep run --stages eval` finds the same cells and the report does not call gpt-4o "lora".
    other = sorted({c.recipe.method for c in sweep.cells} - {"openai"})
    if other:
        raise InputError(
            f"{p}: the OpenAI fine-tuning API trains `method: openai` cells, not method {', '.join(other)}; "
            f"add `method: openai` to {where}"
        )
    return sweep


def ledger_folder(path: str | Path) -> Path:
    """The folder whose ledger `status`/`poll`/`cancel` read: a sweep folder, or the folder of a sweep YAML."""
    p = Path(path)
    return p if p.is_dir() else load_target(p).root


def ledger_folders(target: str | Path) -> list[Path]:
    """`openai_ft.winddown.ledger_folders`, plus a sweep or recipe YAML (its sweep folder, ledger or not)."""
    from emsweep.openai_ft.winddown import ledger_folders as folders

    p = Path(target)
    return [load_target(p).root] if p.is_file() else folders(p)


def eval_target(target: str | Path) -> Sweep | Path:
    """What `openai_ft.evaluate.evaluate_cells` takes: a YAML loaded as a sweep, a folder as it is."""
    p = Path(target)
    return load_target(p) if p.is_file() else p


def mix_stage(sweep: Sweep) -> Callable[[Cell], None]:
    """The cell's local `mix` stage (skipped when done), for `openai_ft.jobs.plan`."""
    from emsweep.launch.runner import run_cell

    def mix(cell: Cell) -> None:
        run_cell(sweep, cell, ["mix"])

    return mix


def finetune(target: str | Path, **kwargs: Any) -> dict[str, Any]:
    """`emsweep openai finetune TARGET`: `openai_ft.jobs.finetune` on the loaded sweep, mixes written here."""
    from emsweep.openai_ft.jobs import finetune as run

    sweep = load_target(target)
    return run(sweep, mix=mix_stage(sweep), **kwargs)


def untrained_openai_cells(cells: Sequence[Cell]) -> list[Cell]:
    """`method: openai` cells whose train stage is not done yet."""
    return [c for c in cells if c.recipe.method == "openai" and not is_done(c.root, "train")]


def cells_without_job(sweep: Sweep, cells: Sequence[Cell]) -> list[str]:
    """`method: openai` cells whose train stage would have to create a job (nothing trained, none recorded)."""
    api = untrained_openai_cells(cells)
    if not api:
        return []
    ledger = Ledger(sweep.root).read()["cells"]
    return [c.id for c in api if not (ledger.get(c.id) or {}).get("job_id")]


def check_not_on_slurm(sweep: Sweep, stages: Sequence[str]) -> None:
    """Before a SLURM submission: OpenAI trains `method: openai` cells, so a cluster task would only wait on the API
    (and show as failed while it waits); such cells run with the local executor instead."""
    api = [c.id for c in untrained_openai_cells(sweep.cells)] if "train" in stages else []
    if api:
        shown = ", ".join(api[:3]) + (f" (+{len(api) - 3} more)" if len(api) > 3 else "")
        raise InputError(
            f"{sweep.source}: {len(api)} cell(s) are `method: openai` and not trained yet ({shown}): OpenAI trains "
            "them, not a GPU node, so a SLURM task would only wait on the API. Run them with the local executor: "
            f"`emsweep sweep run {sweep.source} --create-openai-jobs`, then rerun until it exits 0 "
            '(docs/openai.md, "Through the executor")'
        )


def check_consent(sweep: Sweep, cells: Sequence[Cell], stages: Sequence[str], create_jobs: bool) -> None:
    """Before a local run: OpenAI cells that would need a new (paid) job stop the run unless the user consented."""
    from emsweep.openai_ft.cell import CREATE_FLAG, JobCreationNotAllowed

    if create_jobs or "train" not in stages:
        return
    missing = cells_without_job(sweep, cells)
    if missing:
        raise JobCreationNotAllowed(
            f"{sweep.source}: {len(missing)} `method: openai` cell(s) have no OpenAI fine-tuning job yet "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}), and creating one spends money. "
            f"See the cost with `emsweep openai finetune {sweep.source} --dry-run`, then rerun with {CREATE_FLAG} "
            f"(or create the jobs with `emsweep openai finetune {sweep.source}`)"
        )


def train_openai_cell(sweep: Sweep, cell: Cell, *, create_jobs: bool = False) -> dict[str, Any]:
    """The train stage of a `method: openai` cell: done when its job succeeded (checkpoints registered);
    `StagePending` while the job runs; a new job only with `create_jobs`."""
    from emsweep.launch.runner import StagePending
    from emsweep.openai_ft.cell import train_cell

    res = train_cell(sweep, cell, create_jobs=create_jobs, echo=log.info)
    if not res.done:
        raise StagePending(f"cell {cell.id}: {res.waiting()}")
    return {"openai": {"job_id": res.job_id, "fine_tuned_model": res.fine_tuned_model}}
