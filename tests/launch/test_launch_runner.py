"""The cell runner: done-markers skip finished stages, a failure keeps what finished, and a `sweep run` killed
mid-training resumes on rerun without redoing any finished stage (real mix, TRL training and evaluation)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from emsweep.io import InputError, is_done, read_marker
from emsweep.launch import runner
from emsweep.launch.sweep import load_sweep

# Only a hung process hits this: the tests wait on conditions and assert on results, never on elapsed time.
HANG = 1800

BASE = """
base:
  model: {path: MODEL, init_shape: tiny, dtype: float32}
  data: {builtin: arithmetic, domain: arithmetic, n_train: 32, n_heldout: 3}
  method: lora
  lora: {r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj]}
  sft: {max_steps: 12, per_device_train_batch_size: 4, learning_rate: 1.0e-3, max_length: 64, use_cpu: true,
        report_to: none, logging_steps: 4, dataloader_num_workers: 0}
  checkpoints: {steps: [3, 12]}
  eval:
    suites: [domain]
    checkpoints: "0,3"
    backend: hf
    samples_per_paraphrase: 1
    sampling: {max_tokens: 4, seed: 0}
    judge: {model: MODEL, backend: hf}
judge_options: {max_pruned_mass: 0.009, min_number_mass: 0.0}
"""


def sweep_file(tmp_path: Path, axes: str) -> Path:
    p = tmp_path / "sweep.yaml"
    text = f"name: rt\noutput_root: {tmp_path}/out\n" + BASE.replace("MODEL", str(tmp_path / "model")) + axes
    p.write_text(textwrap.dedent(text))
    return p


def test_skip_force_order_and_failure_keep_markers(tmp_path, monkeypatch):
    sweep = load_sweep(sweep_file(tmp_path, "axes:\n  data.fraction_correct: [0.5, 1.0]\n"))
    calls: list[tuple[str, str]] = []

    def fake(stage):
        def f(sw, cell):
            calls.append((cell.id, stage))
            if stage == "train" and os.environ.get("FAIL_TRAIN"):
                raise RuntimeError("boom")
            return {"fake": stage}

        return f

    monkeypatch.setattr(runner, "STAGE_FUNCS", {s: fake(s) for s in ("mix", "train", "eval")})
    c0, c1 = sweep.cells
    # a train failure keeps the mix marker and writes no train marker
    monkeypatch.setenv("FAIL_TRAIN", "1")
    with pytest.raises(RuntimeError, match="boom"):
        runner.run_cell(sweep, c0)
    assert is_done(c0.root, "mix") and not is_done(c0.root, "train")
    monkeypatch.delenv("FAIL_TRAIN")
    calls.clear()
    assert runner.run_cell(sweep, c0) == {"mix": "skipped", "train": "done", "eval": "done"}
    assert calls == [(c0.id, "train"), (c0.id, "eval")]
    assert read_marker(c0.root, "train")["fake"] == "train"
    # everything done: nothing runs; --force reruns only the stages asked for
    calls.clear()
    assert set(runner.run_cell(sweep, c0).values()) == {"skipped"} and calls == []
    runner.run_cell(sweep, c0, ["eval"], force=True)
    assert calls == [(c0.id, "eval")]
    # a later stage alone needs the earlier ones done
    with pytest.raises(InputError, match=r"stage 'train' needs \['mix'\] first"):
        runner.run_cell(sweep, c1, ["train"])
    # cell.json carries the axes the report groups by, and the sweep folder its spec hash
    info = json.loads(c0.paths.cell_json.read_text())
    assert info["axes"]["fraction_correct"] == 0.5 and info["axes"]["method"] == "lora"
    assert info["axes"]["domain"] == "arithmetic" and info["sweep_spec_hash"] == sweep.spec_hash
    assert json.loads((sweep.root / "sweep.json").read_text())["spec_hash"] == sweep.spec_hash
    with pytest.raises(InputError, match="unknown stage"):
        runner.parse_stages("mix,trian")
    # two launchers never run the same cell at once
    with runner.cell_lock(c1), pytest.raises(runner.CellBusy, match=f"cell {c1.id} is being run by another"):
        runner.run_cell(sweep, c1)
    assert not is_done(c1.root, "mix")
    runner.run_cell(sweep, c1)  # the lock is released
    assert not c1.stages_left()


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "emsweep", *args]


@pytest.mark.slow
def test_killed_sweep_run_resumes_without_redoing_finished_stages(tmp_path):
    p = sweep_file(tmp_path, "axes:\n  data.fraction_correct: [0.5, 1.0]\n")
    sweep = load_sweep(p)
    c0, c1 = sweep.cells
    ck3 = c0.root / "checkpoint-3" / ".emsweep_complete.json"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "run1.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        _cmd("sweep", "run", str(p), "--no-report"), stdout=log, stderr=subprocess.STDOUT, env=env
    )
    # wait for the condition (or the process ending); a generous bound only stops a hang, nothing is timed
    end = time.monotonic() + HANG
    while not ck3.exists() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.1)
    assert ck3.exists(), (tmp_path / "run1.log").read_text()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)  # hard kill mid-training: no handler runs
    proc.wait()
    log.close()
    assert is_done(c0.root, "mix") and not is_done(c0.root, "train"), "the kill came too late to test resume"
    mix_before = (c0.root / ".done" / "mix.json").read_text()
    train_jsonl_mtime = c0.paths.train_jsonl.stat().st_mtime_ns
    ck3_before = ck3.read_text()

    res = subprocess.run(_cmd("sweep", "run", str(p)), capture_output=True, text=True, env=env, timeout=HANG)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for c in (c0, c1):
        assert not c.stages_left(), c.id
    # finished work was not redone: the mix and the first checkpoint are the files of the killed run
    assert (c0.root / ".done" / "mix.json").read_text() == mix_before
    assert c0.paths.train_jsonl.stat().st_mtime_ns == train_jsonl_mtime
    assert ck3.read_text() == ck3_before
    train_log = (c0.paths.logs_dir / "train.log").read_text()
    assert "resuming from checkpoint-3" in train_log
    # the report was built after the rerun, from these cells' metrics files: every number in results.csv is the
    # one in the metrics.json its row names, for every evaluated checkpoint x suite of both cells
    import pandas as pd

    assert (sweep.root / "report" / "index.html").exists()
    table = pd.read_csv(sweep.root / "report" / "results.csv")
    want = {(c.id, f"checkpoint-{s}") for c in (c0, c1) for s in (0, 3)}
    assert set(zip(table["cell"], table["checkpoint"], strict=True)) == want and len(table) == len(want)
    for row in table.itertuples():
        m = json.loads(Path(row.metrics_path).read_text())
        root = {c0.id: c0.root, c1.id: c1.root}[row.cell]
        assert Path(row.metrics_path) == root / "eval" / row.checkpoint / "domain" / "metrics.json"
        assert row.suite == m["suite"] == "domain" and row.n == m["n"] == 3
        assert row.domain_accuracy == pytest.approx(m["domain_accuracy"])
        assert row.exact_accuracy == pytest.approx(m["extra"]["exact_accuracy"])
        assert row.fraction_correct == {c0.id: 0.5, c1.id: 1.0}[row.cell]
    # rerunning a finished sweep does nothing
    t_marker = (c1.root / ".done" / "eval.json").read_text()
    res = subprocess.run(
        _cmd("sweep", "cell", str(p), "--index", "1"), capture_output=True, text=True, env=env
    )
    assert res.returncode == 0 and "mix=skipped, train=skipped, eval=skipped" in res.stdout
    assert (c1.root / ".done" / "eval.json").read_text() == t_marker
    # `sweep plan` shows every cell done
    res = subprocess.run(
        _cmd("sweep", "plan", str(p)), capture_output=True, text=True, env={**env, "COLUMNS": "200"}
    )
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {c.id: next(line for line in res.stdout.splitlines() if c.id in line) for c in (c0, c1)}
    for cid, line in rows.items():
        cells = [x.strip() for x in line.strip().strip("│┃|").split("│")]
        assert cells[-1] == "done", (cid, line)  # the "left to do" column of this cell's row
    # and the same sweep with one stage marker removed shows exactly that stage left, for that cell only
    (c1.root / ".done" / "eval.json").unlink()
    res = subprocess.run(
        _cmd("sweep", "plan", str(p)), capture_output=True, text=True, env={**env, "COLUMNS": "200"}
    )
    line1 = next(line for line in res.stdout.splitlines() if c1.id in line)
    line0 = next(line for line in res.stdout.splitlines() if c0.id in line)
    assert line1.strip().strip("│┃|").split("│")[-1].strip() == "eval", line1
    assert line0.strip().strip("│┃|").split("│")[-1].strip() == "done", line0
