"""SLURM's own time limit, end to end: nobody signals by hand here. slurmctld sends the `--signal` the script asked
for before the limit; the script forwards it; training saves a complete checkpoint, evaluation stops (its samples
are appended as it goes); the task requeues itself and the restart resumes where the first run stopped.

Both jobs get more work than one time limit holds (training without end, evaluation with far more samples than one
run generates), so the signal always lands mid-work whatever the machine's speed; once the restart has shown that
it resumed, the test cancels it. They run side by side (the node has two CPUs), so the suite waits for one time
limit, not two. The one-minute granularity of `--time` and the 30 s period of slurmctld's checks set the wait: the
signal comes 85-115 s into a `--time=2 --signal=B:USR1@5` job (see conftest).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import yaml

from emsweep.io import is_done
from emsweep.launch.slurm import run_sweep_slurm
from emsweep.launch.sweep import load_sweep

pytestmark = pytest.mark.slurm

TIME = "2"  # minutes (SLURM's granularity)
SIGNAL = "USR1@5"  # -> --signal=B:USR1@5
WAIT = 900  # generous: a loaded machine is slow, not wrong


def _logs(sweep) -> str:
    out = []
    for p in sorted((sweep.root / "slurm" / "logs").glob("*.out")) + sorted(sweep.root.glob("*/logs/*.log")):
        out.append(f"\n--- {p} ---\n" + p.read_text(errors="replace")[-3000:])
    return "".join(out)


def _text(p: Path) -> str:
    return p.read_text(errors="replace") if p.exists() else ""


def _samples(p: Path) -> list[dict]:
    """The complete rows of samples.jsonl (a row cut off by the kill is not counted)."""
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def test_time_limit_signal_checkpoints_requeues_and_resumes_training_and_evaluation(
    slurm_cluster, make_sweep
):
    from emsweep.train.checkpoints import is_complete

    # Training that only the time limit stops.
    tr = load_sweep(
        make_sweep(
            "tl-train",
            axes={"data.fraction_correct": [1.0]},
            max_steps=100_000,
            steps=(2,),
            slurm={"time": TIME, "signal": SIGNAL},
        )
    )
    [tcell] = tr.cells
    # Evaluation of a cell trained beforehand (the eval-of-trained-cells path), 1000 questions x 1000 samples: far
    # more than one time limit generates; samples are saved in chunks of about a thousand (one-token answers, big
    # batches: a chunk takes seconds, some 15 s on a loaded 2-core machine).
    ep = make_sweep("tl-eval", axes={"data.fraction_correct": [1.0]}, max_steps=2, steps=(2,))
    spec = yaml.safe_load(ep.read_text())
    spec["base"]["data"]["n_heldout"] = 1000
    spec["base"]["eval"].update(samples_per_paraphrase=1000, batch_size=256)
    spec["base"]["eval"]["sampling"]["max_tokens"] = 1
    spec["base"]["slurm"].update(eval_time=TIME, signal=SIGNAL)
    ep.write_text(yaml.safe_dump(spec, sort_keys=False))
    ev = load_sweep(ep)
    [ecell] = ev.cells

    quiet = {"echo": lambda s: None}
    tjob = run_sweep_slurm(tr, stages=("mix", "train"), report=False, **quiet)["jobs"][0]["job_id"]
    first = run_sweep_slurm(ev, stages=("mix", "train"), report=False, **quiet)
    slurm_cluster.wait_empty(timeout=WAIT, job_ids=[first["jobs"][0]["job_id"]])
    assert is_done(ecell.root, "train"), _logs(ev)

    # A cell trained earlier gets its own evaluation array, with no dependency and no training job.
    second = run_sweep_slurm(ev, report=False, **quiet)
    [ejob_rec] = second["jobs"]
    assert ejob_rec["key"] == "eval-trained" and ejob_rec["cells"] == [ecell.id]
    assert not any(a.startswith("--dependency") for a in ejob_rec["argv"]), ejob_rec["argv"]
    ejob = ejob_rec["job_id"]
    script = Path(ejob_rec["script"]).read_text()
    assert "#SBATCH --time=2\n" in script and "#SBATCH --signal=B:USR1@5\n" in script
    assert "--stages eval" in script

    tout = tr.root / "slurm" / "logs" / f"train-{tjob}_0.out"
    eout = ev.root / "slurm" / "logs" / f"eval-{ejob}_0.out"
    train_log = tcell.root / "logs" / "train.log"
    samples = ecell.root / "eval" / "checkpoint-2" / "domain" / "samples.jsonl"

    # Evaluation: a run is signalled by slurmctld, stops and requeues; the samples it saved stay ...
    def between_runs() -> bool:
        t = _text(eout)
        return t.rfind("requeueing job") > t.rfind("(task 0 of job") and samples.exists() and bool(_samples(samples))

    slurm_cluster.wait_for(
        between_runs, WAIT, "a time-limit requeue after saved samples", ejob, lambda: _logs(ev), poll=1
    )
    kept = _samples(samples)
    runs = _text(eout).count("(task 0 of job")
    # ... and the restart generates only what is missing: it appends new samples after them.
    slurm_cluster.wait_for(
        lambda: _text(eout).count("(task 0 of job") > runs and len(_samples(samples)) >= len(kept) + 500,
        WAIT,
        "new samples from the restarted evaluation",
        ejob,
        lambda: _logs(ev),
        poll=1,
    )

    # Training: signalled at its limit, saved a checkpoint, requeued, resumed from that checkpoint.
    marker = "preempted (SIGUSR1) at step "
    slurm_cluster.wait_for(
        lambda: marker in _text(train_log) and "resuming from checkpoint-" in _text(train_log),
        WAIT,
        "the restarted training to resume",
        tjob,
        lambda: _logs(tr),
    )
    slurm_cluster.run("scancel", tjob, ejob)
    slurm_cluster.wait_empty(timeout=WAIT, job_ids=[tjob, ejob])

    # training: the checkpoint saved on the signal is the one the restart resumed from
    log = _text(train_log)
    step = int(log.split(marker, 1)[1].split(":", 1)[0])
    assert step >= 2 and is_complete(tcell.root / f"checkpoint-{step}"), log[-3000:]
    assert f"resuming from checkpoint-{step}" in log.split(marker, 1)[1], log[-3000:]
    assert not is_done(tcell.root, "train")  # 100000 steps: it was the limit that stopped it
    out = _text(tout)
    assert "got SIGUSR1" in out and "training stopped on the signal (exit 99); requeueing" in out, out
    assert "restart 0)" in out and "restart 1)" in out, out

    # evaluation: the restart kept the first run's samples and added only new ones
    rows = _samples(samples)
    assert rows[: len(kept)] == kept
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) and len(ids) > len(kept), "samples were generated twice"
    out = _text(eout)
    assert "got SIGUSR1" in out and "eval stopped on the signal" in out and "restart 1)" in out, out
    assert not is_done(ecell.root, "eval")

    # Both first runs ended by requeueing themselves (jobcomp records them as PENDING), not by the time limit
    # (TIMEOUT) or a failure; the restarts were cancelled by the test.
    for job in (tjob, ejob):
        states = slurm_cluster.states(job)["0"]
        assert states[0] in ("PENDING", "REQUEUED") and "TIMEOUT" not in states, (job, states)
