"""Rendering, dry runs and bad input of the SLURM executor (the scripts are checked with `bash -n`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emsweep.io import InputError
from emsweep.launch.slurm import plan_submission, render_template, run_sweep_slurm
from emsweep.launch.sweep import SweepSpec, build_sweep, load_sweep
from emsweep.recipe import load_recipe

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]


def _chunks(out: str) -> dict[str, str]:
    """Split dry-run output into {script path: text}."""
    chunks: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("# ===== ") and line.endswith(" ====="):
            current = line[len("# ===== ") : -len(" =====")]
            chunks[current] = ""
        elif current is not None:
            chunks[current] += line + "\n"
    return chunks


def _bash_n(text: str, tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    r = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, f"{name} is not valid bash: {r.stderr}"


def test_dry_run_prints_scripts_and_sbatch_lines_and_writes_nothing(make_sweep, tmp_path, capsys):
    sweep = load_sweep(make_sweep("dry"))
    assert run_sweep_slurm(sweep, dry_run=True, max_parallel=1) is None
    out = capsys.readouterr().out
    chunks = _chunks(out)
    names = [Path(k).name for k in chunks]
    assert names == [
        "train.sbatch",
        "eval.sbatch",
        "report.sbatch",
        "sbatch commands (2 of 2 cells to run; 0 done)",
    ]
    train, ev, report = (chunks[k] for k in list(chunks)[:3])
    for line in (
        "#SBATCH --partition=debug",
        "#SBATCH --array=0-1%1",
        "#SBATCH --signal=B:USR1@30",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --time=00:15:00",
    ):
        assert line in train and line in ev, line
    assert "--gres" not in train and "--mem" not in train  # gpus_per_node 0, mem null
    assert "#SBATCH --kill-on-invalid-dep=yes" in ev and "--kill-on-invalid-dep" not in train
    assert "#SBATCH --signal" not in report and "--array" not in report
    for c in sweep.cells:
        assert c.id in train and c.id in ev
    assert "--stages mix,train" in train and "--stages eval" in ev and "emsweep report" in report
    assert "scontrol requeue" in train and "trap 'on_signal USR1' USR1" in train
    assert "TRAIN=$(sbatch --parsable " in out
    assert "EVAL=$(sbatch --parsable --dependency=aftercorr:$TRAIN " in out
    assert "REPORT=$(sbatch --parsable --dependency=afterany:$EVAL " in out
    assert "{{" not in out
    for i, text in enumerate((train, ev, report)):
        _bash_n(text, tmp_path, f"s{i}.sh")
    assert not sweep.root.exists()  # a dry run writes nothing


def test_dry_run_through_the_cli(make_sweep, tmp_path):
    path = make_sweep("cli")
    r = subprocess.run(
        [sys.executable, "-m", "emsweep", "sweep", "run", str(path), "--executor", "slurm", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --array=0-1\n" in r.stdout  # no cap given: all at once
    assert f"#SBATCH --chdir={tmp_path}" in r.stdout
    assert "nothing written, nothing submitted" in r.stdout
    assert not (tmp_path / "ck").exists()


def test_multi_gpu_and_multi_node_training_goes_through_srun_and_accelerate(make_sweep, tmp_path):
    acc = tmp_path / "fsdp.yaml"
    acc.write_text("distributed_type: FSDP\nmixed_precision: bf16\n")
    spec = yaml.safe_load(make_sweep("multi").read_text())
    spec["base"]["accelerate_config"] = str(acc)
    spec["base"]["slurm"].update(
        gpus_per_node=4, nodes=2, mem="256G", extra=["--constraint=h100", "--exclusive"]
    )
    sweep = build_sweep(SweepSpec.model_validate(spec))
    plan = plan_submission(sweep, max_parallel=None)
    train = plan.jobs[0].text
    ev = plan.jobs[1].text
    assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n#SBATCH --gres=gpu:4" in train
    assert "#SBATCH --constraint=h100\n#SBATCH --exclusive" in train
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in train
    assert 'srun --nodes="$SLURM_NNODES" --ntasks-per-node=1' in train
    assert f"accelerate.commands.launch --config_file {acc}" in train
    assert "--machine_rank \\$SLURM_NODEID" in train and "--num_processes $NUM_PROCESSES" in train
    assert "TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in train
    assert "RECIPE=" in train and '-m emsweep train \\"$RECIPE\\"' in train
    # every process trains the cell's resolved recipe, written beside the script
    assert sorted(p.name for p in plan.jobs[0].files) == sorted(f"{c.id}.yaml" for c in sweep.cells)
    for c in sweep.cells:
        path = plan.dir / "recipes" / f"{c.id}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(plan.jobs[0].files[path])
        loaded = load_recipe(path)
        assert loaded.model_copy(update={"output_dir": c.recipe.output_dir}) == c.recipe
        assert loaded.output_dir == str(c.root.resolve())
    # evaluation: one node, one GPU (no tensor parallelism asked), no srun
    assert "#SBATCH --nodes=1\n#SBATCH --ntasks-per-node=1\n#SBATCH --gres=gpu:1" in ev
    assert "srun" not in ev
    _bash_n(train, tmp_path, "train.sh")
    _bash_n(ev, tmp_path, "eval.sh")


def test_cells_with_different_resources_get_their_own_arrays(make_sweep):
    spec = yaml.safe_load(make_sweep("groups").read_text())
    spec["axes"] = {"data.fraction_correct": [0.5, 1.0], "slurm.gpus_per_node": [0, 2]}
    sweep = build_sweep(SweepSpec.model_validate(spec))
    plan = plan_submission(sweep)
    keys = [j.key for j in plan.jobs]
    assert keys == ["train-1", "eval-1", "train-2", "eval-2", "report"]
    assert plan.jobs[-1].depends == [("afterany", "eval-1"), ("afterany", "eval-2")]
    assert all(len(j.cells) == 2 for j in plan.jobs[:-1])
    assert "--gres=gpu:2" in plan.jobs[2].text and "--gres" not in plan.jobs[0].text


def test_qwen_health_sweep_dry_run_looks_hand_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    sweep = load_sweep(REPO / "recipes" / "sweeps" / "qwen2.5-7b-health.yaml")
    run_sweep_slurm(sweep, dry_run=True)
    out = capsys.readouterr().out
    chunks = _chunks(out)
    train = next(v for k, v in chunks.items() if k.endswith("/train.sbatch"))
    ev = next(v for k, v in chunks.items() if k.endswith("/eval.sbatch"))
    s = sweep.cells[0].recipe.slurm
    for opt in (f"--partition={s.partition}", f"--account={s.account}", "--gres=gpu:1", f"--mem={s.mem}",
                f"--time={s.time}", f"--cpus-per-task={s.cpus_per_task}", f"--array=0-{len(sweep.cells) - 1}%{s.max_parallel}"):  # fmt: skip
        assert f"#SBATCH {opt}\n" in train, opt
    assert f"#SBATCH --time={s.eval_time}\n" in ev
    for line in s.setup:
        assert line in train and line in ev
    assert train.count("#SBATCH") <= 20  # a header a person would write, not a wall of options
    _bash_n(train, tmp_path, "train.sh")
    _bash_n(ev, tmp_path, "eval.sh")


def test_bad_slurm_values_are_named(make_sweep):
    sweep = load_sweep(make_sweep("badsig", slurm={"signal": "USR1"}))
    with pytest.raises(InputError, match=r"slurm.signal: 'USR1' is not SIG@SECONDS"):
        run_sweep_slurm(sweep, dry_run=True)
    sweep = load_sweep(make_sweep("badtime", slurm={"time": "four hours"}))
    with pytest.raises(InputError, match=r"slurm.time: 'four hours' is not a SLURM time"):
        run_sweep_slurm(sweep, dry_run=True)
    sweep = load_sweep(make_sweep("badk"))
    with pytest.raises(InputError, match="--max-parallel 0"):
        run_sweep_slurm(sweep, dry_run=True, max_parallel=0)


def test_template_placeholders_must_all_be_filled():
    assert render_template("a {{ x }} b {{y}}", {"x": "1", "y": "2"}, "t") == "a 1 b 2"
    assert render_template('echo "${CELLS[@]}" ${#CELLS[@]}', {}, "t") == 'echo "${CELLS[@]}" ${#CELLS[@]}'
    with pytest.raises(InputError, match=r"t: template placeholder \{\{ z \}\} has no value"):
        render_template("{{ z }}", {}, "t")


def test_sbatch_missing_is_a_clear_error_and_nothing_is_written(make_sweep, tmp_path, monkeypatch):
    sweep = load_sweep(make_sweep("nosbatch"))
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(InputError, match=r"`sbatch` not found on PATH.*nothing was submitted"):
        run_sweep_slurm(sweep)
    assert not (sweep.root / "slurm").exists()


def test_a_folder_written_by_another_sweep_spec_is_refused(make_sweep, tmp_path):
    first = load_sweep(make_sweep("same"))
    first.write_record()
    other = tmp_path / "other.yaml"
    spec = yaml.safe_load((tmp_path / "same.yaml").read_text())
    spec["axes"] = {"data.fraction_correct": [0.25, 1.0]}
    other.write_text(yaml.safe_dump(spec))
    changed = load_sweep(other)
    assert changed.root == first.root and changed.spec_hash != first.spec_hash
    for dry in (True, False):
        with pytest.raises(InputError, match="written by another sweep spec"):
            run_sweep_slurm(changed, dry_run=dry)
    assert not (first.root / "slurm").exists()


def test_ledger_of_another_spec_is_refused(make_sweep):
    sweep = load_sweep(make_sweep("ledger"))
    p = sweep.root / "slurm" / "submissions.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"sweep": "ledger", "spec_hash": "0" * 64, "submissions": []}))
    from emsweep.launch.slurm import read_ledger

    with pytest.raises(InputError, match="submitted for another sweep spec"):
        read_ledger(sweep)


def test_squeue_and_sacct_parsers():
    from emsweep.launch.slurm import parse_sacct, parse_squeue

    tasks = parse_squeue(
        "12|0|RUNNING|None|1:02|node1\n12|1|PENDING|Resources||\n15|N/A|PENDING|Dependency||\n"
    )
    assert [(t.job_id, t.task, t.state) for t in tasks] == [
        ("12", 0, "RUNNING"),
        ("12", 1, "PENDING"),
        ("15", None, "PENDING"),
    ]
    states = parse_sacct("12_0|COMPLETED\n12_1|CANCELLED by 0\n12_[2-3]|PENDING\n15|FAILED\n")
    assert states == {("12", 0): "COMPLETED", ("12", 1): "CANCELLED", ("15", None): "FAILED"}


def test_templates_dir_can_be_overridden(tmp_path, monkeypatch, make_sweep):
    import shutil

    from emsweep.launch import slurm_render as slurm_mod

    copy = tmp_path / "tpl"
    shutil.copytree(REPO / "slurm", copy)
    (copy / "report.sbatch").write_text((copy / "report.sbatch").read_text() + "# site-specific line\n")
    monkeypatch.setenv("EMSWEEP_SLURM_TEMPLATES", str(copy))
    assert slurm_mod.template_dir() == copy
    plan = plan_submission(load_sweep(make_sweep("tpl")))
    assert plan.jobs[-1].text.endswith("# site-specific line\n")
    monkeypatch.setenv("EMSWEEP_SLURM_TEMPLATES", str(tmp_path / "missing"))
    monkeypatch.setattr(slurm_mod, "__file__", str(tmp_path / "a" / "b" / "c" / "slurm_render.py"))
    with pytest.raises(InputError, match="sbatch templates not found"):
        slurm_mod.template_dir()
    assert os.environ["EMSWEEP_SLURM_TEMPLATES"]


def test_status_without_a_reachable_controller_still_shows_the_done_markers(
    make_sweep, tmp_path, monkeypatch
):
    from emsweep.io import mark_done
    from emsweep.launch.slurm import slurm_status

    sweep = load_sweep(make_sweep("nocontroller"))
    mark_done(sweep.cells[0].root, "mix")
    fake = tmp_path / "bin" / "squeue"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    st = slurm_status(sweep)
    assert "Unable to contact slurm controller" in st.note
    assert [c.stages["mix"] for c in st.cells] == [True, False]
    assert [c.job for c in st.cells] == ["-", "-"]


@pytest.mark.parametrize("requeue", [True, False])
def test_the_preemption_block_requeues_or_stops_as_the_recipe_says(make_sweep, tmp_path, requeue):
    """The rendered signal handling, run by bash: the step is signalled, then the task requeues itself
    (slurm.requeue: true) or exits with the step's status and says how to resume (false), running nothing else."""
    sweep = load_sweep(make_sweep("pre", slurm={"requeue": requeue}))
    train = plan_submission(sweep).jobs[0].text
    block = train[train.index("# --- preemption and time limits") : train.index("# One process on this node")]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in ("scontrol", "emsweep"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        (bin_dir / tool).chmod(0o755)
    script = tmp_path / "job.sh"
    # the step signals the job's shell, as SLURM's --signal=B:USR1 would, and is killed by the forwarded USR1
    step = 'run_forwarding USR1 bash -c "sleep 0.5; kill -USR1 $$; exec sleep 60"'
    script.write_text(
        "#!/bin/bash\nset -euo pipefail\nSLURM_JOB_ID=42\n"
        + block
        + f"{step}\nfinish_if_preempted training\necho after\n"
    )
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=50)
    out = r.stdout + r.stderr
    assert "got SIGUSR1" in out and "after" not in r.stdout, out
    if requeue:
        assert r.returncode == 0 and "requeueing job 42" in out, out
        assert calls.read_text() == "scontrol requeue 42\n"
    else:
        assert r.returncode == 128 + 10, out  # the step's status: killed by SIGUSR1
        assert "requeue is off (slurm.requeue: false): rerun 'emsweep sweep run --executor slurm'" in out
        assert not calls.exists(), calls.read_text()  # neither scontrol nor emsweep ran
