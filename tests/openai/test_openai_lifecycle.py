"""OpenAI's fine-tuning wind-down: cutoffs checked with a frozen clock on each side, the gated-organisation refusal from
the fake server explained, the inventory of registered checkpoints and `eval --pending`."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emsweep.io import InputError
from emsweep.launch import openai_arm
from emsweep.launch.openai_arm import load_target
from emsweep.launch.sweep import load_sweep
from emsweep.openai_ft import jobs
from emsweep.openai_ft import lifecycle as lc
from emsweep.openai_ft.evaluate import evaluate_cells
from emsweep.openai_ft.ledger import Ledger
from emsweep.openai_ft.winddown import inventory, next_steps

REPO = Path(__file__).resolve().parents[2]
D = dt.date
# the dates (the deprecations page), restated here so the table is checked against them
NEVER, INACTIVE, EVERYONE, NANO_RETIRES = D(2026, 5, 7), D(2026, 7, 2), D(2027, 1, 6), D(2026, 10, 23)


class Echo(list):
    def __call__(self, line: str) -> None:
        self.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self)


def _table_without(tmp_path: Path, drop: str | None = None, **retire: str) -> Path:
    data = yaml.safe_load((REPO / "recipes/openai/lifecycle.yaml").read_text())
    if drop:
        del data["models"][drop]
    for model, when in retire.items():
        data["models"][model.replace("_", "-")]["inference_retirement"]["date"] = when
    p = tmp_path / "lifecycle.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_shipped_table_holds_the_published_dates_and_sources():
    t = lc.load_lifecycle()
    assert sorted(s.date for s in t.wind_down.stages) == [NEVER, INACTIVE, EVERYONE]
    assert "deprecations" in t.wind_down.source
    for model, e in t.models.items():
        assert e.inference_retirement.source and e.inference_retirement.as_of
        if e.fine_tuning.open is True:
            assert e.job_creation_cutoff is not None and e.job_creation_cutoff.known == EVERYONE, model
    assert t.models["gpt-4.1-nano-2025-04-14"].inference_retirement.known == NANO_RETIRES
    # nothing else has a published retirement date: unknown, not guessed
    others = [m for m in t.models if m != "gpt-4.1-nano-2025-04-14"]
    assert all(t.models[m].inference_retirement.known is None for m in others)
    # every fine-tunable snapshot of the prices table has lifecycle facts
    prices = yaml.safe_load((REPO / "recipes/openai/prices.yaml").read_text())["models"]
    assert {m for m, p in prices.items() if p.get("fine_tunable")} <= set(t.models)


@pytest.mark.parametrize(
    ("model", "cutoff"),
    [("gpt-4o-2024-08-06", EVERYONE), ("gpt-4.1-nano-2025-04-14", NANO_RETIRES)],
)
def test_cutoff_with_a_frozen_clock_on_each_side(model, cutoff):
    t = lc.load_lifecycle()
    before = lc.check_job_creation(t, model, cutoff - dt.timedelta(days=1))
    assert before.allowed and before.error is None
    after = lc.check_job_creation(t, model, cutoff)
    assert not after.allowed
    assert str(cutoff) in after.error and "deprecations" in after.error
    later = lc.check_job_creation(t, model, cutoff + dt.timedelta(days=30))
    assert not later.allowed


def test_days_left_and_stage_notes():
    t = lc.load_lifecycle()
    day = D(2026, 11, 29)
    v = lc.check_job_creation(t, "gpt-4o-2024-08-06", day)
    assert v.days_to_job_cutoff == (EVERYONE - day).days == 38
    assert "38 days left" in v.lines[0] and "unknown" in v.lines[1]
    assert "without inference on a fine-tuned model" in v.lines[0]  # stage 2 already in force
    # before stage 1 nothing is said to be closed; between 1 and 2 only stage 1
    assert "Already closed" not in lc.check_job_creation(t, "gpt-4o-2024-08-06", NEVER - dt.timedelta(1)).lines[0]
    mid = lc.check_job_creation(t, "gpt-4o-2024-08-06", INACTIVE - dt.timedelta(1)).lines[0]
    assert "never fine-tuned" in mid and "60 days" not in mid
    # a fine-tuned id carries its base model's dates
    nano = lc.check_job_creation(t, "ft:gpt-4.1-nano-2025-04-14:org::x", D(2026, 10, 1))
    assert nano.days_to_retirement == (NANO_RETIRES - D(2026, 10, 1)).days
    # the alias is not fine-tunable, whatever the date
    assert not lc.check_job_creation(t, "gpt-4o", D(2026, 6, 1)).allowed


def test_model_missing_from_the_table_is_a_warning_never_a_silent_pass(tmp_path, caplog):
    t = lc.load_lifecycle(_table_without(tmp_path, drop="gpt-4o-2024-08-06"))
    with caplog.at_level(logging.WARNING):
        v = lc.check_job_creation(t, "gpt-4o-2024-08-06", D(2026, 11, 29))
    assert v.allowed and not v.known
    assert "not in the lifecycle table" in v.lines[0] and "not in the lifecycle table" in caplog.text
    # past the final stage even an unknown model cannot get a job
    assert not lc.check_job_creation(t, "gpt-4o-2024-08-06", EVERYONE).allowed


def test_bad_table_names_the_key(tmp_path):
    p = tmp_path / "bad.yaml"
    text = (REPO / "recipes/openai/lifecycle.yaml").read_text().replace('date: "2026-10-23"', 'date: "soon"')
    p.write_text(text)
    with pytest.raises(InputError, match=r"bad\.yaml:\d+: models\.gpt-4\.1-nano-2025-04-14\.inference_retirement"):
        lc.load_lifecycle(p)
    with pytest.raises(InputError, match="EMSWEEP_TODAY"):
        lc.today("29/11/2026")


def test_finetune_prints_days_left_and_refuses_after_the_cutoff(fake, make_sweep):
    sweep_yaml = make_sweep(fractions=(0.5,))
    out = Echo()
    res = openai_arm.finetune(sweep_yaml, dry_run=True, echo=out, today=D(2027, 1, 5))
    assert "job creation closes on 2027-01-06: 1 day left" in out.text
    assert res["lifecycle"][0]["days_to_job_cutoff"] == 1
    with pytest.raises(InputError) as err:
        openai_arm.finetune(sweep_yaml, dry_run=True, echo=Echo(), today=EVERYONE)
    assert "2027-01-06" in str(err.value) and "deprecations" in str(err.value)
    with pytest.raises(InputError, match="2027-01-06"):
        openai_arm.finetune(sweep_yaml, echo=Echo(), today=D(2027, 2, 1))
    assert sum(fake.calls.values()) == 0, "a refused run talks to no API"
    # nano: refused once its base retired, although job creation in general is still open
    with pytest.raises(InputError, match=r"2026-10-23"):
        openai_arm.finetune(make_sweep(fractions=(0.5,), model="gpt-4.1-nano-2025-04-14", name="nano"), dry_run=True)


def test_finetune_with_a_model_missing_from_the_table_warns(fake, make_sweep, tmp_path):
    table = _table_without(tmp_path, drop="gpt-4o-2024-08-06")
    out = Echo()
    openai_arm.finetune(make_sweep(fractions=(0.5,)), dry_run=True, echo=out, lifecycle_path=table)
    assert "WARNING" in out.text and "not in the lifecycle table" in out.text


@pytest.mark.parametrize(
    ("day", "stage_said", "stage_not_said"),
    [
        (D(2026, 6, 1), "'never-fine-tuned'", "'no-recent-fine-tuned-inference'"),
        (D(2026, 11, 29), "'no-recent-fine-tuned-inference'", "closed for every organisation"),
    ],
)
def test_gated_organisation_error_is_explained(fake, make_sweep, day, stage_said, stage_not_said):
    fake.refuse_fine_tuning = True  # 403 fine_tuning_not_available, as the fake server answers a gated org
    sweep_yaml = make_sweep(fractions=(0.5,))
    with pytest.raises(InputError) as err:
        openai_arm.finetune(sweep_yaml, echo=Echo(), today=day)
    msg = str(err.value)
    assert "not available for your organization" in msg  # the server's own words
    assert stage_said in msg and stage_not_said not in msg
    assert "2027-01-06" in msg and "emsweep openai import" in msg
    sweep = load_sweep(sweep_yaml)
    rec = Ledger(sweep.root).cell(sweep.cells[0].id)
    assert rec["status"] == "refused" and rec["refused_as"] == "wind-down gate" and rec["refused_on"] == str(day)


def test_gate_recogniser():
    assert lc.is_gated_org_error(403, None, "Forbidden")
    assert lc.is_gated_org_error(400, "fine_tuning_not_available", "anything")
    assert lc.is_gated_org_error(400, None, "Fine-tuning is no longer available for this organization.")
    # an unknown snapshot is not the wind-down
    assert not lc.is_gated_org_error(
        400, "model_not_available", "Model gpt-x is not available for fine-tuning or does not exist."
    )
    assert not lc.is_gated_org_error(400, "invalid_training_file", "invalid training_file: file-1")
    t = lc.load_lifecycle()
    assert "no stage of OpenAI's fine-tuning wind-down had started" in lc.explain_gate(t, D(2026, 1, 1))
    assert "closed for every organisation" in lc.explain_gate(t, EVERYONE)


def _polled(make_sweep):
    sweep_yaml = make_sweep(fractions=(0.5,), n_train=20)
    openai_arm.finetune(sweep_yaml, echo=Echo())
    sweep = load_sweep(sweep_yaml)
    jobs.poll(sweep.root, interval=0, echo=Echo())
    return sweep_yaml, sweep


def test_inventory_and_eval_pending_with_the_batch_api(fake, make_sweep):
    sweep_yaml, sweep = _polled(make_sweep)
    t, day = lc.load_lifecycle(), D(2026, 11, 29)
    rows = inventory([sweep.root], t, day)
    assert [(r.checkpoint, r.step) for r in rows] == [("checkpoint-0", 0), ("checkpoint-5", 5)]
    assert rows[1].model.startswith("ft:gpt-4o-2024-08-06:") and rows[1].retirement is None
    assert all(r.pending == ["alignment_mini", "domain"] and not r.done for r in rows)
    steps = next_steps(sweep_yaml, [sweep.root], rows, t, day, sweep=load_target(sweep_yaml))
    assert any("emsweep openai eval" in s and "--pending" in s for s in steps)
    assert not any("openai finetune" in s for s in steps)  # every cell has its job

    out = Echo()
    evaluate_cells(
        sweep.root, pending=True, use_batch="auto", batch_poll_s=0, suites=["alignment_mini"],
        progress=False, echo=out,
    )
    assert "Batch API (--batch auto)" in out.text  # gpt-4o and its fine-tune are priced: the batch is cheaper
    assert fake.count("POST /v1/batches") == 2 and fake.count("POST /v1/chat/completions") == 0
    rows = inventory([sweep.root], t, day, ["alignment_mini"])
    assert all(r.done == ["alignment_mini"] and not r.pending for r in rows)
    for r in rows:  # samples and judgments are on disk
        d = sweep.cells[0].root / "eval" / r.checkpoint / "alignment_mini"
        assert (d / "samples.jsonl").stat().st_size > 0 and (d / "judgments.jsonl").stat().st_size > 0
    # nothing pending: a second run calls nothing
    before = sum(fake.calls.values())
    evaluate_cells(sweep.root, pending=True, suites=["alignment_mini"], progress=False, echo=Echo())
    assert sum(fake.calls.values()) == before


def test_eval_pending_skips_checkpoints_whose_base_retired(fake, make_sweep, tmp_path):
    _, sweep = _polled(make_sweep)
    table = _table_without(tmp_path, gpt_4o_2024_08_06="2026-12-01")
    out = Echo()
    res = evaluate_cells(
        sweep.root, pending=True, today=D(2026, 12, 1), lifecycle_path=table, progress=False, echo=out
    )
    assert res == [] and out.text.count("skipped") == 2 and "2026-12-01" in out.text
    assert fake.count("POST /v1/chat/completions") == 0
    # the day before, both are evaluated, online when asked
    res = evaluate_cells(
        sweep.root, pending=True, today=D(2026, 11, 30), lifecycle_path=table, suites=["alignment_mini"],
        progress=False, echo=Echo(),
    )
    assert len(res) == 1 and res[0].generated > 0


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "emsweep", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )


def test_cli_finetune_dry_run_timeline_and_status(fake, make_sweep):
    sweep_yaml = make_sweep(fractions=(0.5,))
    r = _cli("openai", "finetune", str(sweep_yaml), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "2027-01-06: 38 days left" in r.stdout and "next: emsweep openai finetune" in r.stdout
    r = _cli("openai", "finetune", str(sweep_yaml), "--dry-run", env_extra={"EMSWEEP_TODAY": "2027-01-07"})
    assert r.returncode != 0 and "2027-01-06" in r.stderr and "deprecations" in r.stderr
    r = _cli("openai", "timeline", str(sweep_yaml))
    assert r.returncode == 0, r.stderr
    assert "38 d left" in r.stdout and "What to run first" in r.stdout
    assert f"emsweep openai finetune {sweep_yaml} --dry-run" in r.stdout
    # after jobs ran: status lists the checkpoints with the base model's retirement
    openai_arm.finetune(sweep_yaml, echo=Echo())
    sweep = load_sweep(sweep_yaml)
    r = _cli("openai", "poll", str(sweep.root), "--interval", "0")
    assert r.returncode == 0, r.stderr
    assert "base retirement" in r.stdout and "checkpoint-5" in r.stdout and "unknown" in r.stdout
    assert "alignment_mini,domain" in r.stdout  # pending suites
    ledger = json.loads((sweep.root / "openai_ledger.json").read_text())
    assert next(iter(ledger["cells"].values()))["status"] == "succeeded"
