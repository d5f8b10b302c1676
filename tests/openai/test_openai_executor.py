"""`method: openai` cells through the executor: `emsweep sweep run` and `emsweep train` route their train stage to
the OpenAI arm (fake server, real SDK): a job is created once and only with --create-openai-jobs, each rerun polls
it once, a succeeded job registers its checkpoints and marks train done, then the eval stage runs as for any cell."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from emsweep.cli import app
from emsweep.io import is_done
from emsweep.launch.openai_arm import load_target
from emsweep.launch.runner import EXIT_PENDING, pending_cells, run_sweep_local
from emsweep.launch.sweep import load_sweep
from emsweep.layout import read_api_checkpoints
from emsweep.openai_ft.cell import CREATE_FLAG, JobCreationNotAllowed
from emsweep.openai_ft.ledger import Ledger


def _retrieves(fake) -> int:
    """How many times a job was retrieved (one `poll` step each)."""
    return fake.count("GET /v1/fine_tuning/jobs/{id}")


def _spent(fake) -> tuple[int, int]:
    return fake.count("POST /v1/files"), fake.count("POST /v1/fine_tuning/jobs")


def test_sweep_run_routes_openai_cells_to_the_arm(fake, make_sweep, caplog):
    sweep = load_sweep(make_sweep(fractions=(0.5,), n_train=20))
    (cell,) = sweep.cells

    # no consent: nothing runs, nothing is spent, and the message names the flag and the dry run
    with pytest.raises(JobCreationNotAllowed) as err:
        run_sweep_local(sweep, show_progress=False)
    assert CREATE_FLAG in str(err.value) and "--dry-run" in str(err.value) and cell.id in str(err.value)
    assert sum(fake.calls.values()) == 0 and not is_done(cell.root, "mix")

    # consent: mix written, one upload, one job; train is pending, not done, and eval did not run
    caplog.set_level(logging.INFO)
    res = run_sweep_local(sweep, show_progress=False, create_openai_jobs=True)
    assert res == {cell.id: {"mix": "done", "train": "pending"}}
    assert pending_cells(res) == [cell.id]
    assert _spent(fake) == (1, 1) and _retrieves(fake) == 0
    assert not is_done(cell.root, "train") and not (cell.root / "eval").exists()
    job_id = Ledger(sweep.root).cell(cell.id)["job_id"]
    assert job_id.startswith("ftjob-")

    # reruns (no flag needed once the job exists) poll once each and never create another job
    statuses = []
    for _ in range(6):
        caplog.clear()
        before = _retrieves(fake)
        res = run_sweep_local(sweep, show_progress=False)
        assert _retrieves(fake) == before + 1, "each run polls the job exactly once"
        assert _spent(fake) == (1, 1)
        if res[cell.id].get("train") != "pending":
            break
        status = Ledger(sweep.root).cell(cell.id)["status"]
        statuses.append(status)
        assert f"waiting for OpenAI job {job_id} (status {status}); rerun to continue" in caplog.text
        assert res[cell.id] == {"mix": "skipped", "train": "pending"} and not is_done(cell.root, "train")
    assert statuses and "succeeded" not in statuses  # it waited at least once, and only while not finished
    assert res == {cell.id: {"mix": "skipped", "train": "done", "eval": "done"}}
    assert pending_cells(res) == []

    # the succeeded job's checkpoints are the cell's, train is done, and the eval stage evaluated them
    rec = Ledger(sweep.root).cell(cell.id)
    assert rec["status"] == "succeeded"
    refs = read_api_checkpoints(cell.root)
    assert [(r.step, r.kind) for r in refs] == [(0, "base"), (5, "api")] and refs[1].model == rec["fine_tuned_model"]
    assert is_done(cell.root, "train") and is_done(cell.root, "eval")
    for ref in refs:
        for suite in ("alignment_mini", "domain"):
            assert (cell.root / "eval" / ref.name / suite / "metrics.json").exists()

    # a finished sweep: nothing polled, nothing spent
    before = sum(fake.calls.values())
    assert set(run_sweep_local(sweep, show_progress=False)[cell.id].values()) == {"skipped"}
    assert sum(fake.calls.values()) == before


def test_a_waiting_cell_does_not_hold_up_the_next(fake, make_sweep):
    sweep = load_sweep(make_sweep(fractions=(0.5, 1.0), n_train=20))
    res = run_sweep_local(sweep, ["mix", "train"], show_progress=False, create_openai_jobs=True)
    assert pending_cells(res) == [c.id for c in sweep.cells]
    assert _spent(fake) == (2, 2)
    jobs = {Ledger(sweep.root).cell(c.id)["job_id"] for c in sweep.cells}
    assert len(jobs) == 2 and all(j.startswith("ftjob-") for j in jobs)


def test_failed_job_fails_the_cell_and_says_how_to_retry(fake, make_sweep, caplog):
    fake.fail_jobs = True
    sweep_yaml = make_sweep(fractions=(0.5,), n_train=20)
    sweep = load_sweep(sweep_yaml)
    (cell,) = sweep.cells
    run_sweep_local(sweep, ["mix", "train"], show_progress=False, create_openai_jobs=True)
    for _ in range(6):
        try:
            res = run_sweep_local(sweep, ["mix", "train"], show_progress=False)
        except RuntimeError as exc:  # the cell failed; the message points at its logs
            assert cell.id in str(exc)
            assert "--retry-failed" in caplog.text and "invalid_training_file" in caplog.text
            break
        assert res[cell.id]["train"] == "pending"
    else:
        pytest.fail("a failed job never failed the cell")
    assert Ledger(sweep.root).cell(cell.id)["status"] == "failed"
    assert not is_done(cell.root, "train") and _spent(fake) == (1, 1)


def _recipe(sweep_yaml: Path, out: Path) -> Path:
    """The sweep's base recipe as a single recipe YAML (what `emsweep train` takes)."""
    spec = yaml.safe_load(sweep_yaml.read_text())
    recipe = {**spec["base"], "name": "gpt4o-one", "output_dir": str(out)}
    recipe["data"] = {**recipe["data"], "fraction_correct": 0.5}
    p = sweep_yaml.parent / "gpt4o-one.yaml"
    p.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return p


def test_emsweep_train_on_an_openai_recipe(fake, make_sweep, tmp_path):
    recipe = _recipe(make_sweep(fractions=(0.5,), n_train=20), tmp_path / "runs" / "gpt4o-one")
    cli = CliRunner()

    r = cli.invoke(app, ["train", str(recipe)])
    assert isinstance(r.exception, JobCreationNotAllowed), r.output
    assert CREATE_FLAG in str(r.exception) and "est. $" in str(r.exception)
    assert sum(fake.calls.values()) == 0, "refusing costs no API call"

    r = cli.invoke(app, ["train", str(recipe), CREATE_FLAG])
    assert r.exit_code == EXIT_PENDING, r.output
    assert _spent(fake) == (1, 1)

    # the same one-cell sweep the OpenAI commands use (`emsweep openai poll RECIPE` reads this ledger)
    sweep = load_target(recipe)
    (cell,) = sweep.cells
    assert Ledger(sweep.root).cell(cell.id)["job_id"] and not is_done(cell.root, "train")

    codes = []
    for _ in range(6):
        r = cli.invoke(app, ["train", str(recipe)])
        codes.append(r.exit_code)
        if r.exit_code != EXIT_PENDING:
            break
    assert codes[-1] == 0 and len(codes) >= 2 and set(codes[:-1]) == {EXIT_PENDING}  # waited, then done
    assert r.output.strip().splitlines()[-1] == str(cell.root)
    assert _spent(fake) == (1, 1)
    assert is_done(cell.root, "train") and not is_done(cell.root, "eval")
    refs = read_api_checkpoints(cell.root)
    assert refs[-1].model == Ledger(sweep.root).cell(cell.id)["fine_tuned_model"]


def test_sweep_run_cli_parallel_cells_wait_with_exit_75(fake, make_sweep):
    """`-j 2` runs cells as `emsweep sweep cell` subprocesses: their exit 75 is "pending", not a failure."""
    sweep_yaml = make_sweep(fractions=(0.5, 1.0), n_train=20)
    sweep = load_sweep(sweep_yaml)
    cli = CliRunner()

    r = cli.invoke(app, ["sweep", "run", str(sweep_yaml), "-j", "2"])
    assert isinstance(r.exception, JobCreationNotAllowed) and CREATE_FLAG in str(r.exception)

    r = cli.invoke(app, ["sweep", "run", str(sweep_yaml), "-j", "2", CREATE_FLAG])
    assert r.exit_code == EXIT_PENDING, r.output
    assert "2 cell(s) wait for their OpenAI fine-tuning jobs" in r.output
    assert _spent(fake) == (2, 2)
    for c in sweep.cells:
        assert is_done(c.root, "mix") and not is_done(c.root, "train")
        assert "waiting for OpenAI job ftjob-" in (c.paths.logs_dir / "cell.out").read_text()


def test_slurm_executor_refuses_untrained_openai_cells_before_submitting(fake, make_sweep, monkeypatch):
    """A SLURM task for an OpenAI cell would only wait on the API (and show as failed while it waits): the SLURM
    executor says to run those cells locally, before anything is written or submitted."""
    import emsweep.launch.slurm as slurm

    submitted = []
    monkeypatch.setattr(slurm, "run_sweep_slurm", lambda *a, **k: submitted.append(a))
    path = make_sweep(fractions=(0.5, 1.0), n_train=20)
    out = CliRunner().invoke(app, ["sweep", "run", str(path), "--executor", "slurm"])
    from emsweep.io import InputError

    assert isinstance(out.exception, InputError), out.output  # `emsweep` prints it as one line, exit 2
    text = str(out.exception)
    assert "2 cell(s) are `method: openai`" in text and "--create-openai-jobs" in text
    assert submitted == [] and sum(fake.calls.values()) == 0
    # the eval stage alone is not refused (it calls the API from wherever it runs)
    out = CliRunner().invoke(app, ["sweep", "run", str(path), "--executor", "slurm", "--stages", "eval"])
    assert len(submitted) == 1, out.output
