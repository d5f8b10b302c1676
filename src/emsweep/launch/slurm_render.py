"""Rendering for the SLURM executor: the templates in `slurm/` filled with one group of cells' values.

Every line of bash lives in the templates (`train.sbatch`, `eval.sbatch`, `report.sbatch`, and the pieces they
include: `preemption.sh`, `train-single.sh`, `train-multi.sh`, `submit.sh`), so what a cluster user reads is
what runs. This module only computes the values for their `{{ name }}` placeholders: the `#SBATCH` header from the
recipe's `slurm:` section, quoted paths, the signal and the requeue setting.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

from emsweep import __version__
from emsweep.io import InputError
from emsweep.launch.spec import SlurmSpec
from emsweep.launch.sweep import Cell, Sweep

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_SIGNAL = re.compile(r"^(?:B:)?(?:SIG)?([A-Z0-9]+)@(\d+)$")
_TIME = re.compile(r"^(?:\d+-)?\d+(?::\d+){0,2}$|^\d+-\d+$")


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


def render(name: str, values: dict[str, str]) -> str:
    """Render the template `slurm/<name>` with `values`."""
    path = template_dir() / name
    if not path.exists():
        raise InputError(
            f"{path}: template missing (the templates folder lacks {name}; copy it from the repo's slurm/)"
        )
    return render_template(path.read_text(encoding="utf-8"), values, f"slurm/{name}")


def q(x: str | os.PathLike[str]) -> str:
    """Shell-quote a value for a script."""
    return shlex.quote(str(x))


# --- resources -----------------------------------------------------------------------------------------------


def parse_signal(spec: SlurmSpec, where: str = "slurm.signal") -> tuple[str, int]:
    """`USR1@300` / `B:USR1@300` / `SIGUSR1@300` -> ("USR1", 300)."""
    m = _SIGNAL.match(spec.signal.strip())
    if not m:
        raise InputError(f"{where}: {spec.signal!r} is not SIG@SECONDS (e.g. USR1@300)")
    return m.group(1), int(m.group(2))


def check_time(value: str, where: str) -> str:
    """A SLURM time string, stripped; an error naming `where` otherwise."""
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


# --- values for the templates --------------------------------------------------------------------------------


def common_values(sweep: Sweep, spec: SlurmSpec, sweep_file: Path, submit_script: Path) -> dict[str, str]:
    """The placeholders every script shares, `preemption` (the signal/requeue block) included."""
    from emsweep.train.runner import EXIT_PREEMPTED

    sig, secs = parse_signal(spec)
    setup = "\n".join(spec.setup)
    values = {
        "sweep": sweep.name,
        "version": __version__,
        "rendered_at": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        "submit_script": str(submit_script),
        "setup": f"\n# Environment (slurm.setup in the recipe)\n{setup}\n" if setup else "",
        "python": q(spec.python or sys.executable),
        "sweep_file": q(sweep_file),
        "sweep_root": q(sweep.root.resolve()),
        "signal_name": sig,
        "signal_secs": str(secs),
        "exit_preempted": str(EXIT_PREEMPTED),
        "requeue": "1" if spec.requeue else "0",
    }
    values["preemption"] = render("preemption.sh", values)
    return values


def train_launch(cell: Cell, spec: SlurmSpec, recipes: Path) -> str:
    """The training step: in-process for one GPU (or CPU); `srun` + `accelerate launch` for several."""
    if spec.nodes * spec.gpus_per_node <= 1:
        return render("train-single.sh", {}).rstrip("\n")
    acc = cell.recipe.accelerate_config
    values = {
        "recipes_dir": q(recipes),
        "gpus_per_node": str(spec.gpus_per_node),
        "accelerate_config": f"--config_file {q(Path(acc).resolve())}" if acc else "--multi_gpu",
    }
    return render("train-multi.sh", values).rstrip("\n")


def recipe_yaml(cell: Cell) -> str:
    """The cell's resolved recipe, for `emsweep train` in every process of a multi-GPU launch."""
    tree = cell.recipe.model_dump(mode="json")
    tree["output_dir"] = str(cell.root.resolve())
    head = (
        f"# Cell {cell.id}: its resolved recipe, as trained by the multi-GPU SLURM job. Written by emsweep.\n"
    )
    return head + yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


def submit_script(sweep: Sweep, number: int, sbatch_lines: list[str]) -> str:
    """`submit.sh`: the submission's sbatch lines, replayable by hand."""
    values = {"sweep": sweep.name, "number": str(number), "sbatch_lines": "\n".join(sbatch_lines)}
    return render("submit.sh", values)
