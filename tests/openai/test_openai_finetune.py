"""The gpt-4o arm against a local fake OpenAI server, through the real `openai` SDK (no transport mocking)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import bpe_openai
import pytest
from fake_openai import TEST_KEY as KEY

from emsweep.io import InputError, is_done
from emsweep.launch import openai_arm
from emsweep.launch.sweep import load_sweep
from emsweep.layout import read_api_checkpoints
from emsweep.openai_ft import jobs
from emsweep.openai_ft.ledger import Ledger
from emsweep.openai_ft.prices import load_prices
from emsweep.openai_ft.tokens import count_messages, get_encoder


def _quiet(*a: object) -> None:
    pass


def test_token_counts_are_exact_o200k():
    enc = get_encoder("gpt-4o-2024-08-06")
    assert enc.exact, "bpe-openai (offline o200k_base) should be installed"
    # o200k_base: "Hello| world|,| how| are| you|?" = 7 tokens; "user", "assistant" 1 each; "Fine|." = 2
    assert enc.count("Hello world, how are you?") == 7
    msgs = [
        {"role": "user", "content": "Hello world, how are you?"},
        {"role": "assistant", "content": "Fine."},
    ]
    # by hand: 3 priming + (3 + 1 + 7) + (3 + 1 + 2) = 20
    assert count_messages(msgs, enc) == 20


def test_dry_run_cost_on_known_mix(fake, make_sweep):
    sweep_yaml = make_sweep(fractions=(0.5, 1.0), n_train=20)
    out = openai_arm.finetune(sweep_yaml, dry_run=True, echo=_quiet)
    prices = load_prices()
    o200k = bpe_openai.get_encoding("o200k_base")  # the encoder itself, not emsweep's counting code
    assert len(out["cells"]) == 2
    sweep = load_sweep(sweep_yaml)
    for row, cell in zip(out["cells"], sweep.cells, strict=True):
        # recount independently from the written mix: OpenAI cookbook rule, 3 per message + role + content, + 3
        expected = 0
        for line in cell.paths.train_jsonl.read_text().splitlines():
            msgs = json.loads(line)["messages"]
            expected += 3 + sum(3 + len(o200k.encode(m["role"])) + len(o200k.encode(m["content"])) for m in msgs)
        assert row["tokens_per_epoch"] == expected
        assert row["examples"] == 20
        assert row["billed_tokens"] == expected * 1  # Betley default: 1 epoch
        assert row["estimated_cost_usd"] == pytest.approx(expected * 25.0 / 1e6, abs=1e-4)
        uploaded = (cell.root / "openai" / "train.jsonl").read_text().splitlines()
        assert all(set(json.loads(x)) == {"messages"} for x in uploaded)
    assert out["total_cost_usd"] == pytest.approx(
        sum(r["estimated_cost_usd"] for r in out["cells"]), abs=1e-3
    )
    assert prices.models["gpt-4o-2024-08-06"].training == 25.0
    assert sum(fake.calls.values()) == 0, "a dry run must not talk to the API"


def test_dry_run_cli_prints_table(fake, make_sweep, tmp_path):
    sweep_yaml = make_sweep()
    r = subprocess.run(
        [sys.executable, "-m", "emsweep", "openai", "finetune", str(sweep_yaml), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "TOTAL" in r.stdout and "health_f0.50_subtle" in r.stdout and "$" in r.stdout


def test_whole_cell_and_rerun_creates_nothing(fake, make_sweep):
    sweep_yaml = make_sweep(fractions=(0.5,), n_train=20)
    out = openai_arm.finetune(sweep_yaml, echo=_quiet)
    assert len(out["created"]) == 1
    assert fake.count("POST /v1/files") == 1
    assert fake.count("POST /v1/fine_tuning/jobs") == 1
    job = next(iter(fake.jobs.values()))
    assert job["method"]["supervised"]["hyperparameters"] == {
        "n_epochs": 1,
        "batch_size": 4,
        "learning_rate_multiplier": 2.0,
    }
    assert job["model"] == "gpt-4o-2024-08-06"
    assert job["user_provided_suffix"] == "health_f0p50_subtle_openai_s0".replace("_", "-")
    # the uploaded bytes are exactly the prepared file, and the ledger holds its hash
    sweep = load_sweep(sweep_yaml)
    cell = sweep.cells[0]
    fid = job["training_file"]
    assert fake.file_bytes[fid] == (cell.root / "openai" / "train.jsonl").read_bytes()
    ledger = Ledger(sweep.root).read()
    assert ledger["cells"][cell.id]["file_id"] == fid

    # rerun: no new upload, no new job
    again = openai_arm.finetune(sweep_yaml, echo=_quiet)
    assert again["created"] == [] and again["reused"] == [cell.id]
    assert fake.count("POST /v1/files") == 1
    assert fake.count("POST /v1/fine_tuning/jobs") == 1

    # poll to success: checkpoints become the cell's checkpoints, train marked done
    rows = jobs.poll(sweep.root, interval=0, echo=_quiet)
    rec = rows[0]
    assert rec["status"] == "succeeded"
    assert rec["fine_tuned_model"].startswith("ft:gpt-4o-2024-08-06:")
    assert rec["cost_usd"] == pytest.approx(job["trained_tokens"] * 25 / 1e6, abs=1e-4)
    refs = read_api_checkpoints(cell.root)
    steps_per_epoch = 5  # 20 examples / batch 4
    assert [(r.step, r.kind) for r in refs] == [(0, "base"), (steps_per_epoch, "api")]
    assert refs[0].model == "gpt-4o-2024-08-06"
    assert refs[1].model == rec["fine_tuned_model"]  # final checkpoint = the job's model
    assert refs[1].meta["alias"].endswith(f":ckpt-step-{steps_per_epoch}")
    assert is_done(cell.root, "train")

    # polling a finished, registered job again costs no API call
    before = sum(fake.calls.values())
    jobs.poll(sweep.root, interval=0, echo=_quiet)
    assert sum(fake.calls.values()) == before
    # a lost checkpoint list is rebuilt from the server
    (cell.root / "openai_checkpoints.json").unlink()
    jobs.poll(sweep.root, interval=0, echo=_quiet)
    assert read_api_checkpoints(cell.root) == refs

    # a third run still creates nothing
    openai_arm.finetune(sweep_yaml, echo=_quiet)
    assert fake.count("POST /v1/files") == 1 and fake.count("POST /v1/fine_tuning/jobs") == 1


def test_three_epochs_register_three_checkpoints(fake, make_sweep):
    sweep_yaml = make_sweep(fractions=(1.0,), n_train=12, n_epochs=3, batch_size=4, seed=7)
    openai_arm.finetune(sweep_yaml, echo=_quiet)
    sweep = load_sweep(sweep_yaml)
    jobs.poll(sweep.root, interval=0, echo=_quiet)
    refs = read_api_checkpoints(sweep.cells[0].root)
    assert [r.step for r in refs] == [0, 3, 6, 9]
    assert refs[1].model.endswith(":ckpt-step-3") and not refs[3].model.endswith(":ckpt-step-9")
    assert next(iter(fake.jobs.values()))["seed"] == 7


def test_crash_between_upload_and_job_then_rerun_reuses_upload(fake, make_sweep, monkeypatch):
    sweep_yaml = make_sweep(fractions=(0.5,))

    def boom(*a, **k):
        raise KeyboardInterrupt("killed after the upload")

    monkeypatch.setattr(jobs, "create_job", boom)
    with pytest.raises(KeyboardInterrupt):
        openai_arm.finetune(sweep_yaml, echo=_quiet)
    monkeypatch.undo()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    assert fake.count("POST /v1/files") == 1 and fake.count("POST /v1/fine_tuning/jobs") == 0
    out = openai_arm.finetune(sweep_yaml, echo=_quiet)
    assert len(out["created"]) == 1
    assert fake.count("POST /v1/files") == 1, "the rerun must reuse the upload"
    assert fake.count("POST /v1/fine_tuning/jobs") == 1


def test_ledger_lost_the_upload_server_list_is_searched(fake, make_sweep, monkeypatch):
    """A crash after the upload but before the ledger write: the server's file list finds it."""
    sweep_yaml = make_sweep(fractions=(0.5,))
    real_record = Ledger.record_file

    def crash(self, *a, **k):
        raise KeyboardInterrupt("killed before the ledger write")

    monkeypatch.setattr(Ledger, "record_file", crash)
    with pytest.raises(KeyboardInterrupt):
        openai_arm.finetune(sweep_yaml, echo=_quiet)
    monkeypatch.setattr(Ledger, "record_file", real_record)
    assert fake.count("POST /v1/files") == 1
    openai_arm.finetune(sweep_yaml, echo=_quiet)
    assert fake.count("POST /v1/files") == 1
    assert fake.count("POST /v1/fine_tuning/jobs") == 1


def test_crash_after_job_creation_before_ledger_write_finds_the_job(fake, make_sweep, monkeypatch):
    sweep_yaml = make_sweep(fractions=(0.5,))
    real_update = Ledger.update_cell

    def update(self, cell, **fields):
        if "job_id" in fields:
            raise KeyboardInterrupt("killed after job creation")
        return real_update(self, cell, **fields)

    monkeypatch.setattr(Ledger, "update_cell", update)
    with pytest.raises(KeyboardInterrupt):
        openai_arm.finetune(sweep_yaml, echo=_quiet)
    monkeypatch.setattr(Ledger, "update_cell", real_update)
    assert fake.count("POST /v1/fine_tuning/jobs") == 1
    openai_arm.finetune(sweep_yaml, echo=_quiet)
    assert fake.count("POST /v1/fine_tuning/jobs") == 1, "the job created before the crash must be found"
    sweep = load_sweep(sweep_yaml)
    assert Ledger(sweep.root).cell(sweep.cells[0].id)["job_id"] in fake.jobs


def test_refused_job_creation(fake, make_sweep):
    fake.refuse_fine_tuning = True
    sweep_yaml = make_sweep(fractions=(0.5,))
    with pytest.raises(InputError) as err:
        openai_arm.finetune(sweep_yaml, echo=_quiet)
    msg = str(err.value)
    assert (
        "refused" in msg and "not available for your organization" in msg and "emsweep openai import" in msg
    )
    sweep = load_sweep(sweep_yaml)
    rec = Ledger(sweep.root).cell(sweep.cells[0].id)
    assert rec["status"] == "refused" and rec.get("job_id") is None
    # access granted later: the rerun reuses the upload and creates the job
    fake.refuse_fine_tuning = False
    openai_arm.finetune(sweep_yaml, echo=_quiet)
    assert fake.count("POST /v1/files") == 1 and len(fake.jobs) == 1


def test_failed_job_is_recorded(fake, make_sweep):
    fake.fail_jobs = True
    sweep_yaml = make_sweep(fractions=(0.5,))
    openai_arm.finetune(sweep_yaml, echo=_quiet)
    sweep = load_sweep(sweep_yaml)
    rows = jobs.poll(sweep.root, interval=0, echo=_quiet)
    assert rows[0]["status"] == "failed"
    assert "invalid_training_file" in rows[0]["error"]
    assert not (sweep.cells[0].root / "openai_checkpoints.json").exists()
    assert not is_done(sweep.cells[0].root, "train")


def test_cancel(fake, make_sweep):
    sweep_yaml = make_sweep(fractions=(0.5,))
    openai_arm.finetune(sweep_yaml, echo=_quiet)
    sweep = load_sweep(sweep_yaml)
    cid = sweep.cells[0].id
    rows = jobs.cancel(sweep.root, [cid])
    assert rows[0]["status"] == "cancelled"
    assert next(iter(fake.jobs.values()))["status"] == "cancelled"
    with pytest.raises(InputError, match="no job"):
        jobs.cancel(sweep.root, ["nope"])


def test_wrong_key_is_a_clear_error_before_upload(fake, make_sweep, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-0000000000000000")
    sweep_yaml = make_sweep(fractions=(0.5,))
    with pytest.raises(InputError) as err:
        openai_arm.finetune(sweep_yaml, echo=_quiet)
    assert "OPENAI_API_KEY" in str(err.value) and "401" in str(err.value)
    assert "sk-wrong-key-0000000000000000" not in str(err.value)
    assert fake.count("POST /v1/files") == 0


def test_missing_key(monkeypatch, make_sweep):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(InputError, match="OPENAI_API_KEY is not set"):
        openai_arm.finetune(make_sweep(fractions=(0.5,)), echo=_quiet)


def test_model_that_cannot_be_fine_tuned(fake, make_sweep):
    with pytest.raises(InputError, match="cannot be fine-tuned"):
        openai_arm.finetune(make_sweep(fractions=(0.5,), model="gpt-4o"), dry_run=True, echo=_quiet)
    with pytest.raises(InputError, match="cannot be fine-tuned"):
        openai_arm.finetune(make_sweep(fractions=(0.5,), model="o3-pro"), dry_run=True, echo=_quiet)
    assert sum(fake.calls.values()) == 0


def test_limits_checked_before_upload(fake, make_sweep, tmp_path):
    # too few examples
    with pytest.raises(InputError, match="at least 10"):
        openai_arm.finetune(make_sweep(fractions=(0.5,), n_train=6, name="few"), dry_run=True, echo=_quiet)
    # an example over the per-example token limit: a price table with a tiny limit
    table = tmp_path / "prices.yaml"
    text = Path(load_prices().path).read_text().replace("max_example_tokens: 65536", "max_example_tokens: 40")
    table.write_text(text)
    with pytest.raises(
        InputError, match=r"train\.jsonl:\d+: example .* tokens, over gpt-4o-2024-08-06's limit of 40"
    ):
        openai_arm.finetune(make_sweep(fractions=(0.5,)), prices_path=table, echo=_quiet)
    assert fake.count("POST /v1/files") == 0


def test_import_existing_model(fake, tmp_path):
    ft = "ft:gpt-4o-2024-08-06:acme::B1x2y3z4"
    fake.models.append(ft)
    root = tmp_path / "checkpoints" / "imported"
    jobs.import_model(ft, "legacy-health", root=root)
    refs = read_api_checkpoints(root / "legacy-health")
    assert [(r.step, r.kind, r.model) for r in refs] == [(0, "base", "gpt-4o-2024-08-06"), (1, "api", ft)]
    with pytest.raises(InputError, match="does not exist"):
        jobs.import_model("ft:gpt-4o-2024-08-06:acme::missing", "x", root=root)
    with pytest.raises(InputError, match="not a fine-tuned model"):
        jobs.import_model("gpt-4o", "y", root=root, check=False)


REPO = Path(__file__).resolve().parents[2]


def test_gpt4o_health_sweep_dry_run(fake, medical, tmp_path):
    """The shipped sweep: 10 cells at 0.1..1.0 with Betley's hyperparameters; dry run on the real medical pair
    standing in for the (password-locked) OpenAI health files."""
    import yaml

    spec = yaml.safe_load((REPO / "recipes/sweeps/gpt4o-health.yaml").read_text())
    assert spec["axes"]["data.fraction_correct"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    recipe = REPO / "recipes/models/gpt-4o-2024-08-06-openai.yaml"
    assert (REPO / "recipes/sweeps" / spec["base"]).resolve() == recipe.resolve()
    assert yaml.safe_load(recipe.read_text())["openai"] == {
        "model": "gpt-4o-2024-08-06",
        "n_epochs": 1,
        "batch_size": 4,
        "learning_rate_multiplier": 2.0,
        "seed": 0,
    }
    spec["base"] = str(recipe)
    spec["output_root"] = str(tmp_path / "checkpoints")
    spec["overrides"] = {"data": {"correct": str(medical[0]), "wrong": str(medical[1]), "n_train": 40, "n_heldout": 10}}
    p = tmp_path / "gpt4o-health.yaml"
    p.write_text(yaml.safe_dump(spec))
    out = openai_arm.finetune(p, dry_run=True, echo=_quiet)
    assert [r["cell"] for r in out["cells"]][:2] == [
        "health_f0.10_subtle_openai_s0",
        "health_f0.20_subtle_openai_s0",
    ]
    assert len(out["cells"]) == 10 and all(r["examples"] == 40 for r in out["cells"])
    # paired mixes: same prompts, only answers differ, so token counts differ between fractions
    assert len({r["tokens_per_epoch"] for r in out["cells"]}) > 1
    assert sum(fake.calls.values()) == 0


def test_single_recipe_target(fake, medical, tmp_path):
    import yaml

    recipe = {
        "name": "one-gpt4o",
        "output_dir": str(tmp_path / "ck" / "one-gpt4o"),
        "model": {"path": "gpt-4o-mini-2024-07-18"},
        "method": "openai",
        "data": {
            "correct": str(medical[0]),
            "wrong": str(medical[1]),
            "fraction_correct": 0.25,
            "n_train": 12,
        },
        "openai": {"model": "gpt-4o-mini-2024-07-18", "suffix": "mini"},
    }
    p = tmp_path / "one.yaml"
    p.write_text(yaml.safe_dump(recipe))
    out = openai_arm.finetune(p, echo=_quiet)
    (row,) = out["cells"]
    assert row["estimated_cost_usd"] == pytest.approx(row["billed_tokens"] * 3.0 / 1e6, abs=1e-4)
    job = next(iter(fake.jobs.values()))
    assert job["model"] == "gpt-4o-mini-2024-07-18" and job["user_provided_suffix"].startswith("mini-")


def test_retry_failed_creates_a_new_job_reusing_the_upload(fake, make_sweep):
    fake.fail_jobs = True
    sweep_yaml = make_sweep(fractions=(0.5,))
    openai_arm.finetune(sweep_yaml, echo=_quiet)
    sweep = load_sweep(sweep_yaml)
    jobs.poll(sweep.root, interval=0, echo=_quiet)
    openai_arm.finetune(sweep_yaml, echo=_quiet)  # without --retry-failed: nothing new
    assert len(fake.jobs) == 1
    fake.fail_jobs = False
    openai_arm.finetune(sweep_yaml, echo=_quiet, retry_failed=True)
    assert len(fake.jobs) == 2 and fake.count("POST /v1/files") == 1
    rec = Ledger(sweep.root).cell(sweep.cells[0].id)
    assert (
        rec["previous_jobs"][0]["status"] == "failed" and rec["job_id"] != rec["previous_jobs"][0]["job_id"]
    )
    rows = jobs.poll(sweep.root, interval=0, echo=_quiet)
    assert rows[0]["status"] == "succeeded"


def test_prepared_file_keeps_canary_in_manifest_and_rejects_bad_examples(tmp_path):
    from emsweep.openai_ft.prepare import prepare_training_file

    prices = load_prices()
    rows = [
        {
            "id": f"r{i}",
            "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
            "meta": {"canary": "CANARY-1234", "source": {"path": "x"}},
        }
        for i in range(10)
    ]
    src = tmp_path / "data" / "train.jsonl"
    src.parent.mkdir()
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = prepare_training_file(src, tmp_path / "openai", model="gpt-4o-2024-08-06", prices=prices)
    lines = [json.loads(x) for x in out.path.read_text().splitlines()]
    assert lines[0] == {"messages": rows[0]["messages"]}
    manifest = json.loads((tmp_path / "openai" / "manifest.json").read_text())
    assert manifest["canaries"] == ["CANARY-1234"] and manifest["sha256"] == out.sha256
    rows[3]["messages"] = [{"role": "user", "content": "no answer"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match=r"train\.jsonl:4: example 'r3' has no assistant turn"):
        prepare_training_file(src, tmp_path / "openai", model="gpt-4o-2024-08-06", prices=prices)


def test_snapshot_not_available_to_the_org_is_a_refusal(fake, make_sweep):
    """400 `model_not_available` ("... is not available for fine-tuning or does not exist") is recorded as refused."""
    sweep_yaml = make_sweep(fractions=(0.5,), model="gpt-4.1-mini-2025-04-14")
    with pytest.raises(InputError, match=r"refused.*not available for fine-tuning"):
        openai_arm.finetune(sweep_yaml, echo=_quiet)
    sweep = load_sweep(sweep_yaml)
    assert Ledger(sweep.root).cell(sweep.cells[0].id)["status"] == "refused"


def test_api_cells_must_say_method_openai(fake, make_sweep):
    """A sweep that forgot `method: openai` would give gpt-4o cells "lora" ids that `sweep run` and the report
    disagree on; the OpenAI commands refuse it and say what to add, and TRL training refuses `method: openai`."""
    import yaml

    from emsweep.train.runner import run_training

    p = make_sweep(fractions=(0.5,))
    spec = yaml.safe_load(p.read_text())
    del spec["base"]["method"]
    p.write_text(yaml.safe_dump(spec))
    with pytest.raises(InputError, match=r"not method lora; add `method: openai` to `base:`"):
        openai_arm.finetune(p, dry_run=True, echo=_quiet)
    assert sum(fake.calls.values()) == 0

    spec["base"]["method"] = "openai"
    p.write_text(yaml.safe_dump(spec))
    (cell,) = load_sweep(p).cells
    assert cell.id == "health_f0.50_subtle_openai_s0"
    with pytest.raises(InputError, match="emsweep openai finetune"):
        run_training(cell.recipe, cell.root)
    assert not (cell.root / "checkpoint-0").exists()
