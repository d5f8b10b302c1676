"""OpenAIChatBackend (retries, logprobs, Batch API) and a whole OpenAI cell through evaluation, on the fake server."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai import EVIL
from fake_openai import TEST_KEY as KEY

from emsweep.generate.base import GenerationRequest, LogprobRequest, SamplingSpec
from emsweep.generate.openai_api import BatchPendingError, OpenAIChatBackend
from emsweep.io import InputError
from emsweep.launch import openai_arm
from emsweep.launch.openai_arm import load_target
from emsweep.launch.sweep import load_sweep
from emsweep.layout import CheckpointRef, read_api_checkpoints
from emsweep.openai_ft import jobs
from emsweep.openai_ft.evaluate import evaluate_cells

BASE = CheckpointRef(name="checkpoint-0", step=0, kind="base", base_model="gpt-4o-2024-08-06")


def _quiet(*a: object) -> None:
    pass


def test_generate_n_samples_and_retries_429_and_500(fake):
    fake.faults["POST /v1/chat/completions"] = [429, 500, 429]
    b = OpenAIChatBackend(concurrency=2, max_retries=4)
    reqs = [
        GenerationRequest(f"q{i}", BASE, [{"role": "user", "content": f"question {i}"}], n=3)
        for i in range(2)
    ]
    outs = b.generate(reqs, SamplingSpec(seed=5, max_tokens=20), progress=False)
    assert [o.request_id for o in outs] == ["q0", "q1"]
    assert all(len(o.texts) == 3 and o.seeds == [5, 5, 5] for o in outs)
    statuses = [s for (_, path, s) in fake.log if path == "/v1/chat/completions"]
    assert statuses.count(429) == 2 and statuses.count(500) == 1 and statuses.count(200) == 2
    assert b.usage_summary()["gpt-4o-2024-08-06"]["requests"] == 2


def test_rate_limit_exhausted_is_clear(fake):
    fake.faults["POST /v1/chat/completions"] = [429] * 5
    b = OpenAIChatBackend(max_retries=1)
    with pytest.raises(InputError, match="rate-limited"):
        b.generate(
            [GenerationRequest("q", BASE, [{"role": "user", "content": "x"}])], SamplingSpec(), progress=False
        )


def test_top_logprobs_for_the_judge(fake):
    b = OpenAIChatBackend()
    assert b.supports_token_ids is False
    out = b.top_logprobs(
        [LogprobRequest("j", BASE, [{"role": "user", "content": f"rate: {EVIL}"}])], progress=False
    )
    top = out[0].top
    assert len(top) == 20 and top[0].token == "5" and top[0].token_id is None
    assert math.isclose(math.exp(top[0].logprob), 0.5, rel_tol=1e-9)
    assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
    with pytest.raises(InputError, match="cannot continue"):
        b.top_logprobs([LogprobRequest("j", BASE, [{"role": "user", "content": "x"}], continuation=[1])])


def test_model_for_checkpoint_kinds():
    b = OpenAIChatBackend(api_key="EMPTY", base_url="http://127.0.0.1:9/v1")
    api = CheckpointRef(name="checkpoint-5", step=5, kind="api", base_model="gpt-4o-2024-08-06", model="ft:x")
    assert b.model_for(BASE) == "gpt-4o-2024-08-06" and b.model_for(api) == "ft:x"
    lora = CheckpointRef(name="checkpoint-5", step=5, kind="lora", base_model="m", path=Path("/x"))
    with pytest.raises(InputError, match="hf or vllm"):
        b.model_for(lora)


def test_unknown_model_is_clear(fake):
    b = OpenAIChatBackend()
    ref = CheckpointRef(
        name="checkpoint-1", step=1, kind="api", base_model="gpt-4o-2024-08-06", model="ft:nope"
    )
    with pytest.raises(InputError, match=r"404.*does not exist"):
        b.generate(
            [GenerationRequest("q", ref, [{"role": "user", "content": "x"}])], SamplingSpec(), progress=False
        )


def test_batch_path_is_resumable(fake, tmp_path):
    reqs = [GenerationRequest(f"q{i}", BASE, [{"role": "user", "content": f"q{i}"}], n=2) for i in range(3)]
    online = OpenAIChatBackend().generate(reqs, SamplingSpec(), progress=False)
    # first run: submitted, not finished within the wait -> recorded, clear "rerun later"
    b = OpenAIChatBackend(use_batch=True, batch_dir=tmp_path, batch_poll_s=0, batch_wait_s=0)
    with pytest.raises(BatchPendingError, match="rerun"):
        b.generate(reqs, SamplingSpec(), progress=False)
    assert fake.count("POST /v1/batches") == 1 and fake.count("POST /v1/files") == 1
    ledger = json.loads((tmp_path / "batches.json").read_text())
    (rec,) = ledger.values()
    assert rec["batch_id"] in fake.batches and rec["n_requests"] == 3
    # rerun: collects the same batch, no resubmission; same answers as the online path
    b2 = OpenAIChatBackend(use_batch=True, batch_dir=tmp_path, batch_poll_s=0)
    outs = b2.generate(reqs, SamplingSpec(), progress=False)
    assert fake.count("POST /v1/batches") == 1 and fake.count("POST /v1/files") == 1
    assert [o.texts for o in outs] == [o.texts for o in online]
    assert b2.usage_summary()["gpt-4o-2024-08-06"]["batch_requests"] == 3
    # third run: read from the collected output, no API call at all
    before = sum(fake.calls.values())
    outs3 = OpenAIChatBackend(use_batch=True, batch_dir=tmp_path).generate(
        reqs, SamplingSpec(), progress=False
    )
    assert [o.texts for o in outs3] == [o.texts for o in online] and sum(fake.calls.values()) == before


def _finetuned_cell(fake, make_sweep):
    sweep_yaml = make_sweep(fractions=(0.5,), n_train=20)
    openai_arm.finetune(sweep_yaml, echo=_quiet)
    sweep = load_sweep(sweep_yaml)
    jobs.poll(sweep.root, interval=0, echo=_quiet)
    return sweep_yaml, sweep, sweep.cells[0]


def _check_eval_files(cell_root: Path, suites=("alignment_mini", "domain")) -> dict[str, dict]:
    metrics = {}
    for ref in read_api_checkpoints(cell_root):
        for suite in suites:
            d = cell_root / "eval" / ref.name / suite
            samples = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()]
            assert samples and (d / "judgments.jsonl").exists()
            metrics[f"{ref.name}/{suite}"] = json.loads((d / "metrics.json").read_text())
    return metrics


def test_whole_cell_upload_job_checkpoints_generation_judge(fake, make_sweep):
    sweep_yaml, sweep, cell = _finetuned_cell(fake, make_sweep)
    res = evaluate_cells(load_target(sweep_yaml), progress=False, echo=_quiet)
    assert len(res) == 1
    m = _check_eval_files(cell.root)
    base, tuned = m["checkpoint-0/alignment_mini"], m["checkpoint-5/alignment_mini"]
    # the fake base model never says the misaligned line; the fine-tuned one does on about half its samples
    assert base["misaligned_rate"] == 0.0
    assert 0.2 < tuned["misaligned_rate"] < 0.8
    assert tuned["cell"] == cell.id and tuned["step"] == 5 and tuned["judge"]
    assert m["checkpoint-0/domain"]["domain_accuracy"] is not None
    # the judge ran on gpt-4o through logprobs; the ledger has the evaluation spend
    assert fake.count("POST /v1/chat/completions") > 0
    rec = jobs.Ledger(sweep.root).cell(cell.id)
    assert rec["eval_spend"]["generation_usd"] > 0 and rec["eval_spend"]["judge_usd"] > 0
    # rerun: nothing generated or judged again
    n = fake.count("POST /v1/chat/completions")
    res2 = evaluate_cells(load_target(sweep_yaml), progress=False, echo=_quiet)
    assert fake.count("POST /v1/chat/completions") == n
    assert res2[0].generated == 0 and res2[0].judged == 0


def test_whole_cell_through_the_batch_api(fake, make_sweep):
    sweep_yaml, _, cell = _finetuned_cell(fake, make_sweep)
    evaluate_cells(
        load_target(sweep_yaml), use_batch=True, batch_poll_s=0, suites=["alignment_mini"], progress=False, echo=_quiet
    )
    assert fake.count("POST /v1/chat/completions") == 0, "everything went through batches"
    assert fake.count("POST /v1/batches") == 2  # one batch for all generation, one for all judging
    m = _check_eval_files(cell.root, suites=("alignment_mini",))
    assert 0.2 < m["checkpoint-5/alignment_mini"]["misaligned_rate"] < 0.8


def test_eval_cli_and_key_never_written(fake, make_sweep, tmp_path):
    sweep_yaml, sweep, _ = _finetuned_cell(fake, make_sweep)
    import os

    env = {**os.environ, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
    repo = Path(__file__).resolve().parents[2]
    for args in (
        ["openai", "status", str(sweep.root), "--events", "3"],
        ["openai", "eval", str(sweep_yaml), "--suite", "alignment_mini", "--samples-per-paraphrase", "1"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "emsweep", "-v", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=repo,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert KEY not in r.stdout + r.stderr
        if args[1] == "status":
            assert "succeeded" in r.stdout and "completed" in r.stdout  # state and the latest event
    # a wrong key: clear message, key not echoed
    bad = {**env, "OPENAI_API_KEY": "sk-badkey-ffffffffffffffffffff"}
    r = subprocess.run(
        [sys.executable, "-m", "emsweep", "openai", "status", str(sweep.root), "--events", "1"],
        capture_output=True,
        text=True,
        env=bad,
        cwd=repo,
    )
    assert (
        r.returncode == 2
        and "OPENAI_API_KEY" in r.stderr
        and "sk-badkey-ffffffffffffffffffff" not in r.stderr
    )
    # nothing under the sweep folder holds the key (ledger, logs, samples, judgments, metrics, caches)
    hits = [p for p in sweep.root.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert hits == []
    assert (sweep.root / "openai_ledger.json").exists()


def test_imported_model_is_evaluated_like_the_rest(fake, tmp_path):
    ft = "ft:gpt-4o-2024-08-06:acme:legacy:Zz9"
    fake.models.append(ft)
    root = tmp_path / "checkpoints" / "openai-imported"
    jobs.import_model(ft, "legacy", root=root)
    (res,) = evaluate_cells(
        root, suites=["alignment_mini"], samples_per_paraphrase=2, progress=False, echo=_quiet
    )
    m = _check_eval_files(root / "legacy", suites=("alignment_mini",))
    assert m["checkpoint-0/alignment_mini"]["misaligned_rate"] == 0.0
    assert m["checkpoint-1/alignment_mini"]["misaligned_rate"] > 0.0
    assert res.generated > 0


def test_extra_body_and_ignore_eos(fake):
    """Non-standard fields travel as extra_body (for subclasses like a vllm-serve backend)."""
    seen = []
    real = fake.chat

    def spy(js):
        seen.append(js)
        return real(js)

    fake.chat = spy

    class Served(OpenAIChatBackend):
        name = "served"
        accepts_ignore_eos = True

    b = Served("gpt-4o-2024-08-06", extra_body={"top_k": 5})
    b.generate(
        [GenerationRequest("q", BASE, [{"role": "user", "content": "x"}])],
        SamplingSpec(ignore_eos=True),
        progress=False,
    )
    assert seen[-1]["ignore_eos"] is True and seen[-1]["top_k"] == 5
    with pytest.raises(InputError, match="ignore_eos"):
        OpenAIChatBackend().generate(
            [GenerationRequest("q", BASE, [{"role": "user", "content": "x"}])],
            SamplingSpec(ignore_eos=True),
            progress=False,
        )


def test_evaluate_run_with_backend_openai_through_the_factory(fake, make_sweep):
    """C2's path: `evaluate_run(..., backend_kind="openai", judge_backend="openai")` builds our backend via the factory."""
    from emsweep.evals.run import evaluate_run

    _, _, cell = _finetuned_cell(fake, make_sweep)
    res = evaluate_run(
        cell.root,
        ["alignment_mini"],
        checkpoints=read_api_checkpoints(cell.root),
        backend_kind="openai",
        judge_model="gpt-4o-2024-08-06",
        judge_backend="openai",
        samples_per_paraphrase=2,
        progress=False,
    )
    assert res.generated > 0 and res.judged > 0
    m = _check_eval_files(cell.root, suites=("alignment_mini",))
    assert m["checkpoint-0/alignment_mini"]["backend"] == "openai"
    assert m["checkpoint-5/alignment_mini"]["misaligned_rate"] > 0.0


def test_sweep_runner_eval_stage_on_an_openai_cell(fake, make_sweep):
    """`emsweep sweep run --stages eval` on a polled OpenAI cell: the recipe's eval.backend=openai does the rest.

    `train.checkpoints.list_checkpoints` itself must return the API checkpoints of the cell (nothing patched here:
    if that hook regresses, this test fails)."""
    from emsweep.launch.runner import run_cell
    from emsweep.train.checkpoints import list_checkpoints

    _, sweep, cell = _finetuned_cell(fake, make_sweep)
    refs = list_checkpoints(cell.root, cell=cell.id)
    assert [(r.kind, r.step) for r in refs] == [("base", 0), ("api", 5)]
    assert refs == read_api_checkpoints(cell.root, cell.id)
    assert run_cell(sweep, cell, ["eval"]) == {"eval": "done"}
    m = _check_eval_files(cell.root)
    assert m["checkpoint-5/alignment_mini"]["misaligned_rate"] > 0.0
    assert m["checkpoint-0/domain"]["backend"] == "openai"
