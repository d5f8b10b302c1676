"""A sweep through real sbatch on the one-node test cluster: arrays, dependencies, report, resubmission,
preemption with requeue and resume, and bad input that must not leave half a submission behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emsweep.io import InputError, is_done
from emsweep.launch.slurm import read_ledger, run_sweep_slurm, slurm_status
from emsweep.launch.sweep import load_sweep

pytestmark = pytest.mark.slurm


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "emsweep", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ.copy(),
    )


def _logs(sweep) -> str:
    out = []
    for p in sorted((sweep.root / "slurm" / "logs").glob("*.out")):
        out.append(f"\n--- {p.name} ---\n" + p.read_text(errors="replace")[-3000:])
    return "".join(out)


def test_sweep_runs_end_to_end_through_sbatch_and_resubmits_nothing(slurm_cluster, make_sweep, tmp_path):
    path = make_sweep("e2e")
    sweep = load_sweep(path)
    r = _cli("sweep", "run", str(path), "--executor", "slurm", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    ledger = read_ledger(sweep)
    [sub] = ledger["submissions"]
    assert sub["status"] == "submitted"
    ids = {j["key"]: j["job_id"] for j in sub["jobs"]}
    assert list(ids) == ["train", "eval", "report"]
    assert sub["jobs"][1]["argv"][2] == f"--dependency=aftercorr:{ids['train']}"
    assert sub["jobs"][2]["argv"][2] == f"--dependency=afterany:{ids['eval']}"
    # What ran is readable in the sweep folder.
    sdir = Path(sub["dir"])
    assert {p.name for p in sdir.iterdir()} == {"train.sbatch", "eval.sbatch", "report.sbatch", "submit.sh"}
    assert load_sweep(sub["sweep_file"]).spec_hash == sweep.spec_hash

    # While the jobs are queued or running, status shows them.
    st = slurm_status(sweep)
    assert st.submissions == 1 and not st.accounting
    assert any(c.job.split()[0] in ("train", "eval") for c in st.cells), str(st)

    try:
        slurm_cluster.wait_empty(timeout=480, job_ids=list(ids.values()))
    except AssertionError as exc:
        raise AssertionError(str(exc) + _logs(sweep)) from None

    for c in sweep.cells:
        assert [is_done(c.root, s) for s in ("mix", "train", "eval")] == [True, True, True], c.id + _logs(
            sweep
        )
        assert (c.root / "eval" / "checkpoint-6" / "domain" / "metrics.json").exists()
    assert (sweep.root / "report" / "index.html").exists(), _logs(sweep)
    _assert_results_csv_matches_metrics(sweep)
    assert slurm_cluster.states(ids["train"]) == {"0": ["COMPLETED"], "1": ["COMPLETED"]}
    assert slurm_cluster.states(ids["eval"]) == {"0": ["COMPLETED"], "1": ["COMPLETED"]}
    assert slurm_cluster.states(ids["report"]) == {"-": ["COMPLETED"]}
    assert (
        "cell arith_f0.50_subtle_lora_s0 trained"
        in (sweep.root / "slurm" / "logs" / f"train-{ids['train']}_0.out").read_text()
    )

    # Status from the done-markers; then resubmitting a finished sweep submits nothing.
    st = slurm_status(sweep)
    assert all(all(c.stages.values()) and c.job == "finished" for c in st.cells), str(st)
    n_runs = len(slurm_cluster.completions())
    r = _cli("sweep", "run", str(path), "--executor", "slurm", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "nothing to submit: all 2 cells of sweep e2e are done" in r.stdout
    assert len(read_ledger(sweep)["submissions"]) == 1
    assert slurm_cluster.queue() == [] and len(slurm_cluster.completions()) == n_runs
    r = _cli("sweep", "status", str(path), cwd=tmp_path)
    assert r.returncode == 0 and "2/2 cells done" in r.stdout, r.stdout + r.stderr


def _assert_results_csv_matches_metrics(sweep) -> None:
    """The report job's results.csv holds, cell by cell, the numbers of the metrics.json each row names."""
    import math

    import pandas as pd

    from emsweep.analysis.results import CI_METRICS

    df = pd.read_csv(sweep.root / "report" / "results.csv")
    assert sorted(df["cell"]) == sorted(c.id for c in sweep.cells)
    for row in df.to_dict("records"):
        path = Path(row["metrics_path"])
        assert path == sweep.root / row["cell"] / "eval" / "checkpoint-6" / "domain" / "metrics.json"
        m = json.loads(path.read_text())
        # n_samples is what was generated: the rows of the samples file next to it
        assert m["n_samples"] == len((path.parent / "samples.jsonl").read_text().splitlines()) > 0
        assert (row["checkpoint"], row["step"], row["suite"]) == ("checkpoint-6", 6, "domain")
        assert (row["n"], row["n_samples"]) == (m["n"], m["n_samples"])
        compared = 0
        for k in CI_METRICS:
            ci = m[f"{k}_ci"] or [None, None]
            for col, want in ((k, m[k]), (f"{k}_lo", ci[0]), (f"{k}_hi", ci[1])):
                got = row[col]
                if want is None:
                    assert got is None or math.isnan(got), (col, got)
                else:
                    assert got == pytest.approx(want, rel=1e-9), (row["cell"], col, got, want)
                    compared += 1
        # the answer checker's accuracy (builtin arithmetic), which needs no judge
        ex_ci = m["extra"].get("exact_accuracy_ci") or [None, None]
        for col, want in (
            ("exact_accuracy", m["extra"]["exact_accuracy"]),
            ("exact_accuracy_lo", ex_ci[0]),
            ("exact_accuracy_hi", ex_ci[1]),
            ("n_exact", m["extra"]["n_exact"]),
            ("none_rate", m["none_rate"]),
            ("n_samples", m["n_samples"]),
        ):
            assert want is not None and row[col] == pytest.approx(want, rel=1e-9), (row["cell"], col, row[col], want)
            compared += 1
        for name, jm in m["judge_metrics"].items():
            if jm.get("mean") is not None:
                assert row[f"judge:{name}_mean"] == pytest.approx(jm["mean"], rel=1e-9)
                compared += 1
        assert compared >= 6


def test_preempted_training_requeues_itself_and_resumes_to_the_same_weights(slurm_cluster, make_sweep):
    """Two cells with identical training (they differ only in eval batch size): cell 0 gets SIGUSR1 mid-training
    as SLURM's --signal would send it, saves, requeues and resumes; cell 1 trains uninterrupted. Same weights."""
    import torch
    from safetensors.torch import load_file

    from emsweep.train.checkpoints import is_complete

    path = make_sweep("preempt", axes={"eval.batch_size": [16, 17]}, max_steps=16, steps=(2, 8, 16))
    sweep = load_sweep(path)
    victim, ref = sweep.cells
    entry = run_sweep_slurm(sweep, stages=("mix", "train"), report=False, echo=lambda s: None)
    assert entry is not None and [j["key"] for j in entry["jobs"]] == ["train"]
    train = entry["jobs"][0]["job_id"]

    slurm_cluster.wait_for(
        lambda: is_complete(victim.root / "checkpoint-2"), 600, "the first checkpoint", train, lambda: _logs(sweep)
    )
    assert not is_done(victim.root, "train")
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", f"{train}_0")

    # A resubmission while the jobs are in flight submits nothing new.
    assert run_sweep_slurm(sweep, stages=("mix", "train"), report=False, echo=lambda s: None) is None
    assert len(read_ledger(sweep)["submissions"]) == 1

    try:
        slurm_cluster.wait_empty(timeout=420, job_ids=[train])
    except AssertionError as exc:
        raise AssertionError(str(exc) + _logs(sweep)) from None
    assert is_done(victim.root, "train") and is_done(ref.root, "train"), _logs(sweep)

    slurm_log = (sweep.root / "slurm" / "logs" / f"train-{train}_0.out").read_text()
    assert "got SIGUSR1" in slurm_log and "requeueing job" in slurm_log, slurm_log
    assert "restart 0)" in slurm_log and "restart 1)" in slurm_log  # --open-mode=append kept both runs
    train_log = (victim.root / "logs" / "train.log").read_text()
    marker = "preempted (SIGUSR1) at step "
    assert marker in train_log, train_log[-3000:]
    step = int(train_log.split(marker, 1)[1].split(":", 1)[0])
    assert 2 <= step < 16
    assert f"resuming from checkpoint-{step}" in train_log
    assert "restart 0)" in (sweep.root / "slurm" / "logs" / f"train-{train}_1.out").read_text()
    states = slurm_cluster.states(train)
    assert states["1"] == ["COMPLETED"] and states["0"][-1] == "COMPLETED" and len(states["0"]) >= 2, states

    for s in (2, 8, 16):
        a = load_file(ref.root / f"checkpoint-{s}" / "adapter_model.safetensors")
        b = load_file(victim.root / f"checkpoint-{s}" / "adapter_model.safetensors")
        assert a.keys() == b.keys() and a
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


def test_unknown_partition_is_refused_before_anything_is_submitted(slurm_cluster, make_sweep):
    sweep = load_sweep(make_sweep("nopart", slurm={"partition": "nosuchpartition"}))
    with pytest.raises(
        InputError, match=r"(?i)sbatch rejected train.sbatch: .*partition.*nothing was submitted"
    ):
        run_sweep_slurm(sweep, echo=lambda s: None)
    assert slurm_cluster.queue() == []
    assert read_ledger(sweep)["submissions"] == []


def test_sbatch_failing_midway_cancels_and_records(slurm_cluster, make_sweep, tmp_path, monkeypatch):
    """sbatch accepts the training array, then refuses the evaluation array (e.g. a QOS submit limit): the
    training array is cancelled and the ledger says what happened."""
    real = subprocess.run(["bash", "-c", "command -v sbatch"], capture_output=True, text=True).stdout.strip()
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/bash\n"
        'if [[ " $* " != *" --test-only "* && "${@: -1}" == *eval.sbatch ]]; then\n'
        '  echo "sbatch: error: QOSMaxSubmitJobPerUserLimit" >&2; exit 1\n'
        "fi\n"
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    sweep = load_sweep(make_sweep("midway"))
    with pytest.raises(
        InputError, match=r"sbatch rejected eval.sbatch: .*QOSMaxSubmitJobPerUserLimit.*cancelled"
    ):
        run_sweep_slurm(sweep, echo=lambda s: None)
    [sub] = read_ledger(sweep)["submissions"]
    assert sub["status"] == "failed" and "QOSMaxSubmitJobPerUserLimit" in sub["error"]
    train_id = sub["jobs"][0]["job_id"]
    assert sub["jobs"][0]["key"] == "train" and train_id and sub["cancelled"] == [train_id]
    assert sub["jobs"][1]["key"] == "eval" and sub["jobs"][1]["job_id"] is None
    slurm_cluster.wait_empty(timeout=60, job_ids=[train_id])
    assert not any(is_done(c.root, "train") for c in sweep.cells)
    assert json.loads((sweep.root / "slurm" / "submissions.json").read_text())["spec_hash"] == sweep.spec_hash


STUB = r"""#!/bin/bash
# Stands in for python on the nodes: records how it was called; as the accelerate launcher it waits for
# SIGUSR1 (exit 99, as training does after saving) on the first run and succeeds after the requeue.
log={log}
echo "argv: $* | restart=${{SLURM_RESTART_COUNT:-0}} nodeid=${{SLURM_NODEID:-}} step=${{SLURM_STEP_ID:-}} master=$MASTER_ADDR:$MASTER_PORT sigs=${{TORCHELASTIC_SIGNALS_TO_HANDLE:-}}" >> "$log"
case "$*" in
  *accelerate.commands.launch*)
    if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then
      trap 'echo "launcher got USR1" >> "$log"; exit 99' USR1
      echo ready >> "$log"
      for i in $(seq 600); do sleep 0.2; done
      exit 1
    fi ;;
esac
exit 0
"""


def test_multi_gpu_launch_goes_through_srun_and_forwards_the_signal(slurm_cluster, make_sweep, tmp_path):
    """The rendered multi-GPU training step, run for real under sbatch + srun (GPU request removed: the test node
    has none, and a stub stands in for python): rendezvous arguments, quoting, and SIGUSR1 reaching the
    launcher through srun, then the requeue."""
    import yaml

    from emsweep.launch.slurm import plan_submission
    from emsweep.launch.sweep import SweepSpec, build_sweep

    log = tmp_path / "calls.log"
    stub = tmp_path / "fakepython"
    stub.write_text(STUB.format(log=log))
    stub.chmod(0o755)
    acc = tmp_path / "acc config.yaml"  # a space: the path must stay quoted through srun and bash -c
    acc.write_text("distributed_type: MULTI_GPU\n")
    spec = yaml.safe_load(make_sweep("srun", axes={"data.fraction_correct": [1.0]}).read_text())
    spec["base"]["accelerate_config"] = str(acc)
    spec["base"]["slurm"].update(gpus_per_node=2, python=str(stub))
    sweep = build_sweep(SweepSpec.model_validate(spec))
    train = plan_submission(sweep, stages=("mix", "train"), report=False).jobs[0]
    assert "#SBATCH --gres=gpu:2\n" in train.text
    script = tmp_path / "train.sbatch"
    script.write_text(train.text.replace("#SBATCH --gres=gpu:2\n", ""))
    (sweep.root / "slurm" / "logs").mkdir(parents=True)
    job = slurm_cluster.run("sbatch", "--parsable", str(script)).stdout.strip()

    slurm_cluster.wait_for(
        lambda: log.exists() and "ready" in log.read_text(), 600, "the launcher", job, lambda: _logs(sweep)
    )
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", f"{job}_0")
    slurm_cluster.wait_empty(timeout=120, job_ids=[job])

    calls = log.read_text()
    out = (sweep.root / "slurm" / "logs" / f"train-{job}_0.out").read_text()
    assert "launcher got USR1" in calls, calls + out
    assert "training stopped on the signal (exit 99); requeueing" in out, out
    launches = [ln for ln in calls.splitlines() if "accelerate.commands.launch" in ln]
    mixes = [ln for ln in calls.splitlines() if "--stages mix |" in ln]
    assert len(launches) == 2 and len(mixes) == 2, calls  # first run and the requeued one
    first = launches[0]
    cell = sweep.cells[0].id
    assert f"-m accelerate.commands.launch --config_file {acc} --num_machines 1 --num_processes 2 " in first
    assert "--machine_rank 0 --main_process_ip localhost --main_process_port " in first
    recipe = sweep.root.resolve() / "slurm" / "submit-001" / "recipes" / f"{cell}.yaml"
    assert first.split(" | ")[0].endswith(f" -m emsweep train {recipe}"), first
    assert mixes[0].startswith(
        f"argv: -m emsweep sweep cell {sweep.root.resolve()}/slurm/sweep.yaml --cell {cell} --stages mix |"
    )
    assert "restart=0 nodeid=0 step=0 " in first and "sigs=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in first
    assert "restart=1" in launches[1]
    assert slurm_cluster.states(job)["0"][-1] == "COMPLETED"


def test_failed_training_cancels_its_evaluation_and_a_resubmission_runs_only_what_failed(
    slurm_cluster, make_sweep, tiny_model_dir, tmp_path
):
    """Two cells, one of whose model is missing: its training fails, its evaluation is cancelled, the report
    still runs on the other cell. Once the model is there, resubmitting submits that one cell and nothing else."""
    late = tmp_path / "late-model"
    path = make_sweep("fails", axes={"model.path": [str(tiny_model_dir), str(late)]}, max_steps=2, steps=(2,))
    sweep = load_sweep(path)
    good, bad = sweep.cells
    entry = run_sweep_slurm(sweep, echo=lambda s: None)
    ids = {j["key"]: j["job_id"] for j in entry["jobs"]}
    slurm_cluster.wait_empty(timeout=600, job_ids=list(ids.values()))
    assert slurm_cluster.states(ids["train"]) == {"0": ["COMPLETED"], "1": ["FAILED"]}, _logs(sweep)
    # --kill-on-invalid-dep: the evaluation of a failed training is cancelled, not left pending forever
    assert slurm_cluster.states(ids["eval"]) == {"0": ["COMPLETED"], "1": ["CANCELLED"]}, _logs(sweep)
    # afterany: the report ran, and succeeded, on what finished
    assert slurm_cluster.states(ids["report"]) == {"-": ["COMPLETED"]}, _logs(sweep)
    import pandas as pd

    assert list(pd.read_csv(sweep.root / "report" / "results.csv")["cell"]) == [good.id]
    rows = {r.cell: r for r in slurm_status(sweep).cells}
    assert rows[good.id].job == "finished"
    assert rows[bad.id].stages == {"mix": True, "train": False, "eval": False}
    assert rows[bad.id].job == "train ended, not done: see log"
    assert rows[bad.id].log.endswith(f"train-{ids['train']}_1.out")
    assert "late-model" in (sweep.root / "slurm" / "logs" / f"train-{ids['train']}_1.out").read_text()

    # The model arrives; resubmitting submits the failed cell only (train, then its evaluation).
    late.symlink_to(tiny_model_dir, target_is_directory=True)
    good_files = {p: p.read_bytes() for p in (good.root / "logs").glob("*.log")}
    again = run_sweep_slurm(sweep, report=False, echo=lambda s: None)
    assert again["number"] == 2
    assert [(j["key"], j["cells"]) for j in again["jobs"]] == [("train", [bad.id]), ("eval", [bad.id])]
    script = Path(again["jobs"][0]["script"]).read_text()
    assert bad.id in script and good.id not in script and "#SBATCH --array=0\n" in script
    ids2 = {j["key"]: j["job_id"] for j in again["jobs"]}
    slurm_cluster.wait_empty(timeout=600, job_ids=list(ids2.values()))
    assert slurm_cluster.states(ids2["train"]) == {"0": ["COMPLETED"]}, _logs(sweep)
    assert slurm_cluster.states(ids2["eval"]) == {"0": ["COMPLETED"]}, _logs(sweep)
    assert all(is_done(c.root, s) for c in sweep.cells for s in ("mix", "train", "eval")), _logs(sweep)
    # the cell that had succeeded was not run again
    assert {p: p.read_bytes() for p in (good.root / "logs").glob("*.log")} == good_files and good_files
