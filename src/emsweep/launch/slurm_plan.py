"""Planning a SLURM submission: which cells need which jobs, grouped by resources, and each job's script.

Per resource group (cells whose `slurm:` section and accelerate config agree) there is one training array over
the cells that still need training, one evaluation array over the same cells that starts task by task
(`--dependency=aftercorr`), one evaluation array for cells trained earlier, and one report job after all
evaluation (`afterany`). Cells with nothing left, or with a job already queued or running, are not submitted.
Planning writes nothing: `slurm_submit` writes the scripts and submits them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emsweep.io import InputError, dumps_json, is_done
from emsweep.launch.slurm_ledger import SNAPSHOT, slurm_root
from emsweep.launch.slurm_render import (
    check_time,
    common_values,
    eval_gpus,
    q,
    recipe_yaml,
    render,
    sbatch_header,
    train_launch,
)
from emsweep.launch.sweep import STAGES, Cell, Sweep

TRAIN_STAGES = ("mix", "train")
EVAL_STAGES = ("eval",)


@dataclass
class JobPlan:
    """One sbatch submission: its script, its cells (array index = position), and what it waits for."""

    key: str  # unique in the submission: train, eval, eval-trained, report (+ -2, -3 per resource group)
    kind: str  # train | eval | report
    script: Path
    text: str
    cells: list[str]
    depends: list[tuple[str, str]] = field(default_factory=list)  # (type, key of an earlier job)
    files: dict[Path, str] = field(default_factory=dict)  # other files the script reads (per-cell recipes)

    @property
    def var(self) -> str:
        return self.key.upper().replace("-", "_")

    def dependency(self, job_ids: dict[str, str]) -> str | None:
        if not self.depends:
            return None
        by_type: dict[str, list[str]] = {}
        for kind, key in self.depends:
            by_type.setdefault(kind, []).append(job_ids[key])
        return ",".join(f"{k}:{':'.join(ids)}" for k, ids in by_type.items())

    def argv(self, job_ids: dict[str, str]) -> list[str]:
        dep = self.dependency(job_ids)
        return ["sbatch", "--parsable", *([f"--dependency={dep}"] if dep else []), str(self.script)]


@dataclass
class SubmissionPlan:
    sweep: Sweep
    number: int
    dir: Path
    jobs: list[JobPlan]
    todo: list[str]  # cells submitted
    done: list[str]  # cells with nothing left
    active: list[str]  # cells skipped because a job of theirs is queued or running

    def shell_lines(self) -> list[str]:
        """The submission as shell commands (what `submit.sh` holds and `--dry-run` prints)."""
        fake = {j.key: f"${j.var}" for j in self.jobs}
        lines = []
        for j in self.jobs:
            argv = " ".join(q(a) if not a.startswith("--dependency=") else a for a in j.argv(fake))
            lines.append(f"{j.var}=$({argv})")
            lines.append(f'echo "{j.key}: job ${j.var}"')
        return lines


def _group_key(cell: Cell) -> str:
    r = cell.recipe
    return dumps_json(
        {"slurm": r.slurm.model_dump(mode="json"), "acc": r.accelerate_config, "eg": eval_gpus(cell)}
    )


def _array(n: int, k: int | None) -> str:
    spec = f"0-{n - 1}" if n > 1 else "0"
    return f"{spec}%{k}" if k and k < n else spec


def plan_submission(
    sweep: Sweep,
    *,
    max_parallel: int | None = None,
    stages: Sequence[str] = STAGES,
    report: bool = True,
    active_cells: set[str] | None = None,
    number: int = 1,
    sweep_file: Path | None = None,
) -> SubmissionPlan:
    """Decide what to submit and render every script (in memory; `run_sweep_slurm` writes them)."""
    if max_parallel is not None and max_parallel < 1:
        raise InputError(f"--max-parallel {max_parallel}: give 1 or more")
    stages = tuple(s for s in STAGES if s in stages)
    active_cells = active_cells or set()
    sroot = slurm_root(sweep)
    sub_dir = sroot / f"submit-{number:03d}"
    logs = sroot / "logs"
    sweep_file = sweep_file or sroot / SNAPSHOT
    submit_script = sub_dir / "submit.sh"
    chdir = str(Path.cwd())

    done, active, todo = [], [], []
    groups: dict[str, list[Cell]] = {}
    for c in sweep.cells:
        left = [s for s in stages if not is_done(c.root, s)]
        if not left:
            done.append(c.id)
        elif c.id in active_cells:
            active.append(c.id)
        else:
            todo.append(c.id)
            groups.setdefault(_group_key(c), []).append(c)

    jobs: list[JobPlan] = []
    eval_keys: list[str] = []
    for gi, cells in enumerate(groups.values(), start=1):
        first = cells[0]
        spec = first.recipe.slurm
        sfx = "" if len(groups) == 1 else f"-{gi}"
        k = max_parallel or spec.max_parallel
        where = f"{sweep.source}: cell {first.id}: slurm"
        time_train = check_time(spec.time, f"{where}.time")
        time_eval = check_time(spec.eval_time or spec.time, f"{where}.eval_time")
        if spec.nodes > 1 and spec.gpus_per_node < 1:
            raise InputError(
                f"{where}.nodes: {spec.nodes} nodes with gpus_per_node 0; multi-node training runs one process "
                "per GPU (set gpus_per_node, or nodes: 1)"
            )
        values = common_values(sweep, spec, sweep_file, submit_script)
        need_train = [c for c in cells if any(s in stages and not is_done(c.root, s) for s in TRAIN_STAGES)]
        need_eval = [c for c in cells if "eval" in stages and not is_done(c.root, "eval")]
        train_ids = {c.id for c in need_train}

        def array_job(kind: str, key: str, members: list[Cell], depends: list[tuple[str, str]]) -> JobPlan:
            is_train = kind == "train"
            header = sbatch_header(
                spec,  # noqa: B023 (used at once)
                job_name=f"{sweep.name}-{kind}{sfx}",  # noqa: B023
                output=str(logs / f"{kind}-%A_%a.out"),
                chdir=chdir,
                nodes=spec.nodes if is_train else 1,  # noqa: B023
                gpus=spec.gpus_per_node if is_train else eval_gpus(first),  # noqa: B023
                cpus=spec.cpus_per_task,  # noqa: B023
                mem=spec.mem,  # noqa: B023
                time=time_train if is_train else time_eval,  # noqa: B023
                array=_array(len(members), k),  # noqa: B023
                after_dependency=bool(depends),
            )
            n = len(members)
            vals = {
                **values,  # noqa: B023
                "header": header,
                "n_cells": str(n),
                "array_note": f"at most {k} at once" if k and k < n else "all at once if resources allow",  # noqa: B023
                "cell_lines": "\n".join(f"    {c.id}  # {i}" for i, c in enumerate(members)),
            }
            files = {}
            if is_train:
                vals["train_launch"] = train_launch(members[0], spec, sub_dir / "recipes")  # noqa: B023
                if "accelerate.commands.launch" in vals["train_launch"]:
                    files = {sub_dir / "recipes" / f"{c.id}.yaml": recipe_yaml(c) for c in members}
            text = render("train.sbatch" if is_train else "eval.sbatch", vals)
            script = sub_dir / f"{key}.sbatch"
            return JobPlan(key, kind, script, text, [c.id for c in members], depends, files)

        if need_train:
            jobs.append(array_job("train", f"train{sfx}", need_train, []))
        after_train = [c for c in need_eval if c.id in train_ids]
        trained = [c for c in need_eval if c.id not in train_ids]
        if after_train:
            # aftercorr: eval task i starts when train task i has finished successfully (same cell order).
            assert [c.id for c in after_train] == [c.id for c in need_train]
            jobs.append(array_job("eval", f"eval{sfx}", after_train, [("aftercorr", f"train{sfx}")]))
            eval_keys.append(f"eval{sfx}")
        if trained:
            jobs.append(array_job("eval", f"eval-trained{sfx}", trained, []))
            eval_keys.append(f"eval-trained{sfx}")

    if report and eval_keys:
        spec = sweep.cells[0].recipe.slurm
        values = common_values(sweep, spec, sweep_file, submit_script)
        header = sbatch_header(
            spec,
            job_name=f"{sweep.name}-report",
            output=str(logs / "report-%j.out"),
            chdir=chdir,
            nodes=1,
            gpus=0,
            cpus=min(spec.cpus_per_task, 4),
            mem="16G" if spec.mem else None,
            time="01:00:00",
            partition=spec.report_partition,
            preemptible=False,
            after_dependency=True,
        )
        text = render("report.sbatch", {**values, "header": header})
        jobs.append(
            JobPlan(
                "report", "report", sub_dir / "report.sbatch", text, [], [("afterany", k) for k in eval_keys]
            )
        )
    return SubmissionPlan(sweep, number, sub_dir, jobs, todo, done, active)
