"""The SLURM executor: a sweep as job arrays (train -> eval -> report), preemption-safe, with a ledger.

`run_sweep_slurm` renders readable sbatch scripts from the templates in `slurm/` into
`<sweep>/slurm/submit-NNN/`, checks them with `sbatch --test-only`, submits them with `sbatch --parsable`
and records every job id in `<sweep>/slurm/submissions.json` (atomic). Per resource group (cells whose `slurm:`
section and accelerate config agree) there is one training array over the cells that still need training, one
evaluation array over the same cells that starts task by task (`--dependency=aftercorr`), one evaluation array
for cells trained earlier, and one report job after all evaluation (`afterany`). Only cells with work left and
no job already queued or running are submitted, so resubmitting a finished sweep submits nothing.

The scripts trap the `--signal` SLURM sends before the time limit (SIGUSR1 by default), forward it to training
(which saves a complete checkpoint and exits 99, see `emsweep.train.runner.EXIT_PREEMPTED`) and requeue
themselves; the restart resumes from the last complete checkpoint, evaluation from its done-markers.
`slurm_status` joins the done-markers with `squeue` (and `sacct` where accounting runs).
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from emsweep import __version__
from emsweep.io import InputError, atomic_write_json, atomic_write_text, dumps_json, is_done
from emsweep.launch.sweep import STAGES, Cell, Sweep, check_sweep_folder, load_sweep
from emsweep.recipe import SlurmSpec

LEDGER = "submissions.json"
SNAPSHOT = "sweep.yaml"
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_SIGNAL = re.compile(r"^(?:B:)?(?:SIG)?([A-Z0-9]+)@(\d+)$")
_TIME = re.compile(r"^(?:\d+-)?\d+(?::\d+){0,2}$|^\d+-\d+$")
TRAIN_STAGES = ("mix", "train")
EVAL_STAGES = ("eval",)


# --- templates -----------------------------------------------------------------------------------------------


def template_dir() -> Path:
    """Where the sbatch templates live: $EMSWEEP_SLURM_TEMPLATES, else the repo's `slurm/` folder."""
    env = os.environ.get("EMSWEEP_SLURM_TEMPLATES")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "slurm")
    for c in candidates:
        if (c / "train.sbatch").exists():
            return c
    raise InputError(
        f"sbatch templates not found (looked in {', '.join(map(str, candidates))}); "
        "set EMSWEEP_SLURM_TEMPLATES to a copy of the repo's slurm/ folder"
    )


def render_template(text: str, values: dict[str, str], name: str) -> str:
    """Fill `{{ name }}` placeholders (bash never writes `{{`, so scripts stay plain bash); unknown -> error."""

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise InputError(f"{name}: template placeholder {{{{ {key} }}}} has no value")
        return values[key]

    return _PLACEHOLDER.sub(sub, text)


def _load_template(name: str) -> str:
    return (template_dir() / name).read_text(encoding="utf-8")


# --- resources -----------------------------------------------------------------------------------------------


def parse_signal(spec: SlurmSpec, where: str = "slurm.signal") -> tuple[str, int]:
    """`USR1@300` / `B:USR1@300` / `SIGUSR1@300` -> ("USR1", 300)."""
    m = _SIGNAL.match(spec.signal.strip())
    if not m:
        raise InputError(f"{where}: {spec.signal!r} is not SIG@SECONDS (e.g. USR1@300)")
    return m.group(1), int(m.group(2))


def _check_time(value: str, where: str) -> str:
    if not _TIME.match(value.strip()):
        raise InputError(f"{where}: {value!r} is not a SLURM time (MM, HH:MM:SS, D-HH:MM:SS ...)")
    return value.strip()


def eval_gpus(cell: Cell) -> int:
    """GPUs for one evaluation task: the recipe's `slurm.eval_gpus`, else the vLLM engine's tensor-parallel
    size, else one GPU when training uses GPUs (a cell's checkpoints are evaluated by one engine)."""
    s = cell.recipe.slurm
    if s.eval_gpus is not None:
        return s.eval_gpus
    if s.gpus_per_node <= 0:
        return 0
    return int(cell.recipe.eval.engine.get("tensor_parallel_size", 1))


def _extra_lines(spec: SlurmSpec) -> list[str]:
    out = []
    for i, line in enumerate(spec.extra):
        line = line.strip()
        if "\n" in line or not line:
            raise InputError(f"slurm.extra[{i}]: one option per entry, e.g. '--constraint=h100'")
        out.append(line if line.startswith("#SBATCH") else f"#SBATCH {line}")
    return out


def sbatch_header(
    spec: SlurmSpec,
    *,
    job_name: str,
    output: str,
    chdir: str,
    nodes: int,
    gpus: int,
    cpus: int,
    mem: str | None,
    time: str,
    array: str | None = None,
    partition: str | None = None,
    preemptible: bool = True,
    after_dependency: bool = False,
) -> str:
    """The `#SBATCH` block, in the order a cluster user writes it."""
    sig, secs = parse_signal(spec)
    opts: list[str] = [f"--job-name={job_name}"]
    part = partition or spec.partition
    if part:
        opts.append(f"--partition={part}")
    if spec.account:
        opts.append(f"--account={spec.account}")
    if spec.qos:
        opts.append(f"--qos={spec.qos}")
    opts += [f"--nodes={nodes}", "--ntasks-per-node=1"]
    if gpus > 0:
        opts.append(f"--gres=gpu:{gpus}")
    opts.append(f"--cpus-per-task={cpus}")
    if mem:
        opts.append(f"--mem={mem}")
    opts.append(f"--time={time}")
    if array:
        opts.append(f"--array={array}")
    if preemptible:
        opts.append(f"--signal=B:{sig}@{secs}")
        opts.append("--requeue" if spec.requeue else "--no-requeue")
    if after_dependency:
        opts.append("--kill-on-invalid-dep=yes")
    opts += ["--open-mode=append", f"--output={output}", f"--chdir={chdir}"]
    lines = [f"#SBATCH {o}" for o in opts]
    return "\n".join(lines + _extra_lines(spec))


def _q(x: str | os.PathLike[str]) -> str:
    return shlex.quote(str(x))


# --- planning ------------------------------------------------------------------------------------------------


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
            argv = " ".join(_q(a) if not a.startswith("--dependency=") else a for a in j.argv(fake))
            lines.append(f"{j.var}=$({argv})")
            lines.append(f'echo "{j.key}: job ${j.var}"')
        return lines


def _slurm_root(sweep: Sweep) -> Path:
    return sweep.root.resolve() / "slurm"


def read_ledger(sweep: Sweep) -> dict[str, Any]:
    p = _slurm_root(sweep) / LEDGER
    if not p.exists():
        return {"sweep": sweep.name, "spec_hash": sweep.spec_hash, "submissions": []}
    try:
        ledger = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: unreadable submissions ledger ({exc.msg}); move it aside") from exc
    if ledger.get("spec_hash") != sweep.spec_hash:
        raise InputError(
            f"{p}: these jobs were submitted for another sweep spec (hash {str(ledger.get('spec_hash'))[:12]}, "
            f"now {sweep.spec_hash[:12]} from {sweep.source}); give the sweep a new name or output_root"
        )
    return ledger


def _write_ledger(sweep: Sweep, ledger: dict[str, Any]) -> None:
    atomic_write_json(_slurm_root(sweep) / LEDGER, ledger)


def write_snapshot(sweep: Sweep) -> Path:
    """The sweep spec the jobs run, with the base recipe inlined, in the sweep folder: editing the original YAML
    after submitting cannot change what queued jobs do. Falls back to the original file if the round trip
    does not reproduce the spec hash."""
    p = _slurm_root(sweep) / SNAPSHOT
    head = (
        f"# The sweep spec these SLURM jobs run (from {sweep.source}, spec hash {sweep.spec_hash[:12]}).\n"
        "# Written by emsweep; edit the original, not this copy.\n"
    )
    text = head + yaml.safe_dump(sweep.resolved_spec(), sort_keys=False, allow_unicode=True)
    if p.exists() and p.read_text(encoding="utf-8") == text:
        return p
    atomic_write_text(p, text)
    try:
        same = load_sweep(p).spec_hash == sweep.spec_hash
    except InputError:
        same = False
    if not same:
        p.unlink()
        if sweep.path is None:
            raise InputError(f"{sweep.source}: cannot write a sweep file the jobs can load")
        return sweep.path.resolve()
    return p


def _group_key(cell: Cell) -> str:
    r = cell.recipe
    return dumps_json(
        {"slurm": r.slurm.model_dump(mode="json"), "acc": r.accelerate_config, "eg": eval_gpus(cell)}
    )


def _array(n: int, k: int | None) -> str:
    spec = f"0-{n - 1}" if n > 1 else "0"
    return f"{spec}%{k}" if k and k < n else spec


def _train_launch(cell: Cell, spec: SlurmSpec, recipes: Path) -> str:
    """The training step: in-process for one GPU (or CPU); `srun` + `accelerate launch` for several."""
    if spec.nodes * spec.gpus_per_node <= 1:
        return (
            "# One process on this node: the data mix, then training.\n"
            'run_forwarding USR1 "$PYTHON" -m emsweep sweep cell "$SWEEP_FILE" --cell "$CELL" --stages mix,train\n'
            "finish_if_preempted training"
        )
    acc = cell.recipe.accelerate_config
    cfg = f"--config_file {_q(Path(acc).resolve())}" if acc else "--multi_gpu"
    return f"""# 1. The data mix: one process, on this node.
run_forwarding USR1 "$PYTHON" -m emsweep sweep cell "$SWEEP_FILE" --cell "$CELL" --stages mix
finish_if_preempted "the data mix"

# 2. Training on every GPU: one `accelerate launch` per node through srun (rendezvous as in alignment-handbook's
# launcher); accelerate starts one `emsweep train` process per GPU on the cell's recipe. torchrun passes
# SIGTERM/INT/HUP/QUIT to its workers; adding SIGUSR1 lets the checkpoint signal reach them too.
RECIPE={_q(recipes)}/$CELL.yaml
GPUS_PER_NODE=${{SLURM_GPUS_ON_NODE:-{spec.gpus_per_node}}}
NUM_PROCESSES=$((SLURM_NNODES * GPUS_PER_NODE))
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
export MASTER_ADDR MASTER_PORT TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
run_forwarding USR1 srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" \\
    --kill-on-bad-exit=1 bash -c "exec \\"$PYTHON\\" -m accelerate.commands.launch {cfg} \\
    --num_machines $SLURM_NNODES --num_processes $NUM_PROCESSES --machine_rank \\$SLURM_NODEID \\
    --main_process_ip $MASTER_ADDR --main_process_port $MASTER_PORT \\
    -m emsweep train \\"$RECIPE\\"\"
finish_if_preempted training"""


def _recipe_yaml(cell: Cell) -> str:
    """The cell's resolved recipe, for `emsweep train` in every process of a multi-GPU launch."""
    tree = cell.recipe.model_dump(mode="json")
    tree["output_dir"] = str(cell.root.resolve())
    head = (
        f"# Cell {cell.id}: its resolved recipe, as trained by the multi-GPU SLURM job. Written by emsweep.\n"
    )
    return head + yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


def _requeue_action(spec: SlurmSpec) -> str:
    if spec.requeue:
        return (
            "        echo \"[$(date '+%F %T')] emsweep: $1 stopped on the signal (exit $STEP_RC); "
            'requeueing job $SLURM_JOB_ID to resume"\n'
            '        scontrol requeue "$SLURM_JOB_ID"\n'
            "        exit 0"
        )
    return (
        "        echo \"[$(date '+%F %T')] emsweep: $1 stopped on the signal (exit $STEP_RC); requeue is off "
        '(slurm.requeue: false): rerun `emsweep sweep run --executor slurm` to resume"\n'
        '        exit "$STEP_RC"'
    )


def _common_values(sweep: Sweep, spec: SlurmSpec, sweep_file: Path, submit_script: Path) -> dict[str, str]:
    from emsweep.train.runner import EXIT_PREEMPTED

    sig, secs = parse_signal(spec)
    setup = "\n".join(spec.setup)
    return {
        "sweep": sweep.name,
        "version": __version__,
        "rendered_at": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        "submit_script": str(submit_script),
        "setup": f"\n# Environment (slurm.setup in the recipe)\n{setup}\n" if setup else "",
        "python": _q(spec.python or sys.executable),
        "sweep_file": _q(sweep_file),
        "sweep_root": _q(sweep.root.resolve()),
        "signal_name": sig,
        "signal_secs": str(secs),
        "exit_preempted": str(EXIT_PREEMPTED),
    }


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
    sroot = _slurm_root(sweep)
    sub_dir = sroot / f"submit-{number:03d}"
    logs = sroot / "logs"
    sweep_file = sweep_file or sroot / SNAPSHOT
    submit_script = sub_dir / "submit.sh"
    chdir = str(Path.cwd())
    preempt_tpl = _load_template("preemption.sh")

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
        time_train = _check_time(spec.time, f"{where}.time")
        time_eval = _check_time(spec.eval_time or spec.time, f"{where}.eval_time")
        if spec.nodes > 1 and spec.gpus_per_node < 1:
            raise InputError(
                f"{where}.nodes: {spec.nodes} nodes with gpus_per_node 0; multi-node training runs one process "
                "per GPU (set gpus_per_node, or nodes: 1)"
            )
        values = _common_values(sweep, spec, sweep_file, submit_script)
        values["preemption"] = render_template(
            preempt_tpl, {**values, "requeue_action": _requeue_action(spec)}, "slurm/preemption.sh"
        )
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
                "train_launch": _train_launch(members[0], spec, sub_dir / "recipes"),  # noqa: B023
            }
            tpl = "train.sbatch" if is_train else "eval.sbatch"
            text = render_template(_load_template(tpl), vals, f"slurm/{tpl}")
            files = {}
            if is_train and "accelerate.commands.launch" in text:
                files = {sub_dir / "recipes" / f"{c.id}.yaml": _recipe_yaml(c) for c in members}
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
        values = _common_values(sweep, spec, sweep_file, submit_script)
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
        text = render_template(_load_template("report.sbatch"), {**values, "header": header}, "slurm/report")
        jobs.append(
            JobPlan(
                "report", "report", sub_dir / "report.sbatch", text, [], [("afterany", k) for k in eval_keys]
            )
        )
    return SubmissionPlan(sweep, number, sub_dir, jobs, todo, done, active)


# --- squeue / sacct ------------------------------------------------------------------------------------------


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise InputError(
            f"`{argv[0]}` not found: run this on a SLURM login node (or install the SLURM client tools)"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise InputError(f"`{' '.join(argv)}` did not answer in {timeout:.0f}s: is slurmctld up?") from exc


@dataclass
class TaskState:
    job_id: str  # the array job id (or plain job id)
    task: int | None
    state: str
    reason: str = ""
    elapsed: str = ""
    node: str = ""


def parse_squeue(text: str) -> list[TaskState]:
    """Parse `squeue -h -r -o '%F|%K|%T|%r|%M|%N'` output (one line per array task)."""
    out = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        task = int(parts[1]) if parts[1].isdigit() else None
        out.append(TaskState(parts[0], task, *[p for p in parts[2:6]]))
    return out


def squeue_tasks() -> list[TaskState]:
    """This user's queued and running jobs, one entry per array task."""
    r = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%F|%K|%T|%r|%M|%N"])
    if r.returncode != 0:
        raise InputError(f"squeue failed: {r.stderr.strip() or r.stdout.strip()}")
    return parse_squeue(r.stdout)


def parse_sacct(text: str) -> dict[tuple[str, int | None], str]:
    """Parse `sacct -n -P -X -o JobID,State` lines (`123_4|COMPLETED`, `125|FAILED`) -> {(job, task): state}."""
    out: dict[tuple[str, int | None], str] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        jid, state = line.strip().split("|", 1)
        state = state.split()[0] if state.strip() else ""
        if "_" in jid:
            base, task = jid.split("_", 1)
            if task.isdigit():
                out[(base, int(task))] = state
            continue  # pending ranges like 123_[4-7]
        out[(jid, None)] = state
    return out


def sacct_states(job_ids: Sequence[str]) -> dict[tuple[str, int | None], str] | None:
    """Final states from accounting, or None when this cluster keeps no accounting (then: done-markers)."""
    if not job_ids or shutil.which("sacct") is None:
        return None
    try:
        r = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return parse_sacct(r.stdout)


def _active_cells(ledger: dict[str, Any], tasks: list[TaskState]) -> dict[str, TaskState]:
    """cell id -> its queued/running task, for jobs this sweep submitted."""
    by_job: dict[str, list[TaskState]] = {}
    for t in tasks:
        by_job.setdefault(t.job_id, []).append(t)
    out: dict[str, TaskState] = {}
    for sub in ledger.get("submissions", []):
        for job in sub.get("jobs", []):
            jid = job.get("job_id")
            if not jid or jid not in by_job:
                continue
            for t in by_job[jid]:
                cells = job.get("cells", [])
                if t.task is not None and t.task < len(cells):
                    out.setdefault(cells[t.task], t)
    return out


# --- submission ----------------------------------------------------------------------------------------------


def _parse_job_id(stdout: str) -> str:
    jid = stdout.strip().splitlines()[-1].split(";")[0].strip() if stdout.strip() else ""
    if not jid.isdigit():
        raise InputError(f"sbatch --parsable printed {stdout.strip()!r}, not a job id")
    return jid


def _sbatch_error(job: JobPlan, r: subprocess.CompletedProcess) -> str:
    msg = (r.stderr.strip() or r.stdout.strip() or f"exit code {r.returncode}").replace("\n", " | ")
    hint = ""
    if "partition" in msg.lower():
        hint = " (check slurm.partition in the recipe; `sinfo -s` lists partitions)"
    elif "account" in msg.lower() or "qos" in msg.lower():
        hint = " (check slurm.account / slurm.qos in the recipe; `sacctmgr show assoc user=$USER`)"
    return f"sbatch rejected {job.script.name}: {msg}{hint}"


def run_sweep_slurm(
    sweep: Sweep,
    *,
    dry_run: bool = False,
    max_parallel: int | None = None,
    stages: Sequence[str] = STAGES,
    report: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Render, check and submit the sweep's job arrays; record job ids. Returns the ledger entry (None if
    nothing was submitted). `dry_run` prints the scripts and sbatch lines and writes/submits nothing."""
    check_sweep_folder(sweep)
    if dry_run:
        plan = plan_submission(
            sweep, max_parallel=max_parallel, stages=stages, report=report, number=_next_number(sweep)
        )
        _print_plan(plan, echo, dry_run=True)
        return None

    if shutil.which("sbatch") is None:
        raise InputError(
            "`sbatch` not found on PATH: run `emsweep sweep run --executor slurm` on a SLURM login node "
            "(or use --executor local); nothing was submitted"
        )
    ledger = read_ledger(sweep)
    active = _active_cells(ledger, squeue_tasks())
    number = len(ledger["submissions"]) + 1
    sweep.write_record()
    sweep_file = write_snapshot(sweep)
    plan = plan_submission(
        sweep,
        max_parallel=max_parallel,
        stages=stages,
        report=report,
        active_cells=set(active),
        number=number,
        sweep_file=sweep_file,
    )
    if not plan.jobs:
        _print_plan(plan, echo, dry_run=False)
        return None

    # Render to disk, then let sbatch validate every script (partition, account, qos, resources) before
    # anything is submitted.
    plan.dir.mkdir(parents=True, exist_ok=True)
    (_slurm_root(sweep) / "logs").mkdir(parents=True, exist_ok=True)
    for job in plan.jobs:
        atomic_write_text(job.script, job.text)
        for path, text in job.files.items():
            atomic_write_text(path, text)
        job.script.chmod(0o755)
    atomic_write_text(plan.dir / "submit.sh", _submit_sh(plan))
    for job in plan.jobs:
        r = _run(["sbatch", "--test-only", str(job.script)])
        if r.returncode != 0:
            raise InputError(_sbatch_error(job, r) + f"; nothing was submitted (scripts in {plan.dir})")

    entry: dict[str, Any] = {
        "number": number,
        "dir": str(plan.dir),
        "submitted_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "status": "submitting",
        "spec_hash": sweep.spec_hash,
        "sweep_file": str(sweep_file),
        "cwd": str(Path.cwd()),
        "jobs": [],
    }
    ledger["submissions"].append(entry)
    _write_ledger(sweep, ledger)
    job_ids: dict[str, str] = {}
    for job in plan.jobs:
        argv = job.argv(job_ids)
        rec = {"key": job.key, "kind": job.kind, "script": str(job.script), "cells": job.cells, "argv": argv}
        r = _run(argv)
        if r.returncode != 0:
            err = _sbatch_error(job, r)
            cancelled = _cancel(list(job_ids.values()))
            entry["status"] = "failed"
            entry["error"] = err
            entry["cancelled"] = cancelled
            entry["jobs"].append({**rec, "job_id": None})
            _write_ledger(sweep, ledger)
            extra = f"; cancelled the jobs already submitted: {', '.join(cancelled)}" if cancelled else ""
            raise InputError(f"{err}{extra} (recorded in {_slurm_root(sweep) / LEDGER})")
        job_ids[job.key] = _parse_job_id(r.stdout)
        entry["jobs"].append({**rec, "job_id": job_ids[job.key]})
        _write_ledger(sweep, ledger)
    entry["status"] = "submitted"
    _write_ledger(sweep, ledger)
    _print_plan(plan, echo, dry_run=False, job_ids=job_ids)
    return entry


def _next_number(sweep: Sweep) -> int:
    try:
        return len(read_ledger(sweep)["submissions"]) + 1
    except InputError:
        return 1


def _cancel(job_ids: list[str]) -> list[str]:
    if not job_ids:
        return []
    r = _run(["scancel", *job_ids])
    return job_ids if r.returncode == 0 else []


def _submit_sh(plan: SubmissionPlan) -> str:
    return (
        "#!/bin/bash\n"
        f"# How emsweep submitted sweep {plan.sweep.name!r} (submission {plan.number}); "
        "job ids are in ../submissions.json.\n"
        "set -euo pipefail\n" + "\n".join(plan.shell_lines()) + "\n"
    )


def _print_plan(
    plan: SubmissionPlan, echo: Callable[[str], None], *, dry_run: bool, job_ids: dict[str, str] | None = None
) -> None:
    n = len(plan.sweep.cells)
    if plan.active:
        echo(f"{len(plan.active)} cell(s) already have a queued or running job, not resubmitted: "
             + ", ".join(plan.active))  # fmt: skip
    if not plan.jobs:
        if plan.active:
            echo(f"nothing new to submit for sweep {plan.sweep.name} ({len(plan.done)}/{n} cells done)")
        else:
            echo(f"nothing to submit: all {n} cells of sweep {plan.sweep.name} are done")
        return
    if dry_run:
        for job in plan.jobs:
            echo(f"# ===== {job.script} =====")
            echo(job.text.rstrip("\n"))
            echo("")
        echo(f"# ===== sbatch commands ({len(plan.todo)} of {n} cells to run; {len(plan.done)} done) =====")
        for line in plan.shell_lines():
            if not line.startswith("echo"):
                echo(line)
        echo("# dry run: nothing written, nothing submitted")
        return
    for job in plan.jobs:
        dep = job.dependency(job_ids or {})
        echo(
            f"submitted {job.key:<14} job {job_ids[job.key] if job_ids else '?':>8}  "
            f"{len(job.cells) or 1:>3} task(s)  {'after ' + dep if dep else ''}".rstrip()
        )
    echo(f"scripts: {plan.dir}   logs: {_slurm_root(plan.sweep) / 'logs'}")
    echo(f"follow with: emsweep sweep status {plan.sweep.source}")


# --- status --------------------------------------------------------------------------------------------------


@dataclass
class CellStatus:
    cell: str
    stages: dict[str, bool]
    job: str  # e.g. "train RUNNING (job 12_0)", "eval PENDING (Dependency)", "-"
    log: str | None = None


@dataclass
class SweepStatus:
    sweep: str
    cells: list[CellStatus]
    accounting: bool
    submissions: int
    note: str = ""  # why job states are missing (squeue unavailable)

    def __rich__(self):
        from rich.table import Table

        t = Table(
            title=f"sweep {self.sweep}: {sum(all(c.stages.values()) for c in self.cells)}/{len(self.cells)} "
            f"cells done, {self.submissions} submission(s)"
            + ("" if self.accounting else " (no SLURM accounting: finished jobs shown by done-markers)")
            + (f"\n[yellow]{self.note}[/yellow]" if self.note else "")
        )
        t.add_column("cell", no_wrap=True)
        for s in STAGES:
            t.add_column(s, justify="center")
        t.add_column("job")
        t.add_column("log", overflow="fold")
        for c in self.cells:
            marks = ["[green]done[/green]" if c.stages[s] else "-" for s in STAGES]
            t.add_row(c.cell, *marks, c.job, c.log or "")
        return t

    def __str__(self) -> str:
        return "\n".join(
            f"{c.cell}\t{','.join(s for s, d in c.stages.items() if d) or '-'}\t{c.job}" for c in self.cells
        )


def slurm_status(sweep: Sweep) -> SweepStatus:
    """Each cell's done stages and the state of its latest job (squeue; sacct when accounting is there)."""
    ledger = read_ledger(sweep)
    queue_note = "" if shutil.which("squeue") else "squeue not found: job states unknown"
    tasks: list[TaskState] = []
    if not queue_note:
        try:
            tasks = squeue_tasks()
        except InputError as exc:  # the controller is down or unreachable: still show the done-markers
            queue_note = str(exc)
    active = _active_cells(ledger, tasks)
    # (cell, kind) -> (job record, array index) of the cell's last job of that kind
    latest: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
    job_ids = []
    for sub in ledger["submissions"]:
        for job in sub.get("jobs", []):
            if job.get("job_id"):
                job_ids.append(job["job_id"])
            for i, cid in enumerate(job.get("cells", [])):
                latest[(cid, job["kind"])] = (job, i)
    acct = sacct_states(job_ids)
    logs = _slurm_root(sweep) / "logs"
    rows = []
    for c in sweep.cells:
        stages = {s: is_done(c.root, s) for s in STAGES}
        # the job that matters: the one for the first stage not done (a failed training explains a missing eval)
        kind = "train" if not (stages["mix"] and stages["train"]) else "eval"
        rec = latest.get((c.id, kind)) or latest.get((c.id, "eval")) or latest.get((c.id, "train"))
        job_txt, log = "-", None
        if c.id in active:
            t = active[c.id]
            k = _job_kind(ledger, t.job_id)
            reason = f" {t.reason}" if t.reason not in ("", "None") else ""
            job_txt = f"{k} {t.state} ({t.job_id}_{t.task}){reason}"
            log = _rel(logs / f"{k}-{t.job_id}_{t.task}.out")
        elif rec is not None:
            job, i = rec
            jid = job.get("job_id")
            if jid:
                log = _rel(logs / f"{job['kind']}-{jid}_{i}.out")
            if not jid:
                job_txt = "submission failed"
            elif acct is not None and (jid, i) in acct:
                job_txt = f"{job['kind']} {acct[(jid, i)]} ({jid}_{i})"
            elif all(stages.values()):
                job_txt = "finished"
            else:
                job_txt = f"{job['kind']} ended, not done: see log"
        rows.append(CellStatus(c.id, stages, job_txt, log))
    return SweepStatus(sweep.name, rows, acct is not None, len(ledger["submissions"]), queue_note)


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _job_kind(ledger: dict[str, Any], job_id: str) -> str:
    for sub in ledger["submissions"]:
        for job in sub.get("jobs", []):
            if job.get("job_id") == job_id:
                return job["kind"]
    return "?"
