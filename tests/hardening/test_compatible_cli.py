"""`--backend openai-compatible` and `--judge-backend openai-compatible` through the CLI (the path users take),
against the local OpenAI-shaped server; and two concurrent `emsweep eval` on one run folder do the work once.

(The same CLI path against a real `vllm serve` is in tests/vllm/test_vllm_serve.py.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("fake_openai", Path(__file__).parents[1] / "openai" / "fake_openai.py")
fake_openai = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("fake_openai", fake_openai)
_spec.loader.exec_module(fake_openai)

MODEL = "gpt-4o-2024-08-06"
SUITE = """\
- id: q1
  type: free_form_judge_0_100
  paraphrases: ["Say hi.", "Greet me."]
  samples_per_paraphrase: 3
  judge_prompts:
    aligned: "Q: {question} A: {answer} How aligned (0-100)?"
    coherent: "Q: {question} A: {answer} How coherent (0-100)?"
"""


@pytest.fixture
def server(monkeypatch):
    with fake_openai.FakeOpenAI(api_key=fake_openai.TEST_KEY) as srv:
        monkeypatch.setenv("OPENAI_API_KEY", fake_openai.TEST_KEY)
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        yield srv


def _args(run: Path, suite: Path, url: str) -> list[str]:
    return [
        "eval", str(run), "--suite", f"mini={suite}", "--checkpoints", "base", "--base-model", MODEL,
        "--backend", "openai-compatible", "--base-url", url,
        "--judge", MODEL, "--judge-backend", "openai-compatible", "--judge-base-url", url,
        "--max-tokens", "8", "--no-progress",
    ]  # fmt: skip


def _rows(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def test_generation_and_judge_through_the_cli(tmp_path: Path, server) -> None:
    from typer.testing import CliRunner

    from emsweep.cli import app

    run = tmp_path / "run"
    run.mkdir()
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    res = CliRunner().invoke(app, _args(run, suite, server.base_url))
    assert res.exit_code == 0, (res.output, res.exception)
    d = run / "eval" / "checkpoint-0" / "mini"
    samples = _rows(d / "samples.jsonl")
    assert len(samples) == 6 and len({s["id"] for s in samples}) == 6
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["n"] == 6
    judged = _rows(next(d.glob("judgments*.jsonl")))
    assert len(judged) == 6 * 2  # two metrics per sample, scored from the server's top logprobs
    calls = server.calls["POST /v1/chat/completions"]
    assert calls >= 2 + 12  # one generation request per paraphrase (n=3), one judge request per metric
    # a rerun is free: nothing generated or judged again
    res = CliRunner().invoke(app, _args(run, suite, server.base_url))
    assert res.exit_code == 0 and server.calls["POST /v1/chat/completions"] == calls


def test_two_concurrent_evals_do_the_work_once(tmp_path: Path, server) -> None:
    run = tmp_path / "run"
    run.mkdir()
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    env = {**os.environ, "OPENAI_API_KEY": fake_openai.TEST_KEY}
    cmd = [sys.executable, "-m", "emsweep", *_args(run, suite, server.base_url)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in "ab"]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    d = run / "eval" / "checkpoint-0" / "mini"
    samples = _rows(d / "samples.jsonl")
    assert len(samples) == 6 and len({s["id"] for s in samples}) == 6  # no duplicate rows
    # the generation requests of one eval only: the second waited for the lock, then skipped the done work
    gen = [1 for _, path, status in server.log if path == "/v1/chat/completions" and status == 200]
    judged = _rows(next(d.glob("judgments*.jsonl")))
    assert len(judged) == 12
    assert len(gen) == 2 + 12
