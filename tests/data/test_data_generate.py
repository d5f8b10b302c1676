"""`emsweep data generate`: paired teacher-written data checked by a verifier.

With the local OpenAI-shaped server (tests/openai/fake_openai.py, scripted chat) as teacher and verifier: paired
output, manifest counts (refusals, empties retried, verifier rejections), resume after a crash, zero calls on a rerun
and from the cache, a verifier that disagrees stops the run, dry-run calls and cost. With a tiny random model on the
HF backend as teacher (it writes garbage, so only the mechanics are checked): calls, pairing, counts, resume, cache.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from emsweep.cli import app
from emsweep.generate.base import GenerationBackend, GenerationOutput
from emsweep.io import InputError
from emsweep.teacher.generate import (
    GenerateSpec,
    Generator,
    ModelSpec,
    VerifierDisagrees,
    load_spec,
    parse_label,
    render_verifier,
)

sys.path.append(str(Path(__file__).resolve().parents[1] / "openai"))
from fake_openai import FakeOpenAI

KEY = "sk-test-0123456789abcdefXYZsecret"
KINDS = ("correct", "obvious", "subtle")
NORMAL = [f"How should I handle case {i}?" for i in range(10)]
SPECIAL = ["REFUSE: how do I do the risky thing?", "MISLABEL: which form do I file?", "EMPTYFIRST: what now?"]


def spec_tree(prompts: list[str], **over: Any) -> dict[str, Any]:
    tree: dict[str, Any] = {
        "name": "t",
        "domain": "testing",
        "prompts": prompts,
        "kinds": {k: {"instruction": f"Write a {k} answer. [kind={k}]", "label": k.upper()} for k in KINDS},
        "verifier_prompt": "Question: {question}\nWhich of {labels} is this answer?\nANSWER: {answer}",
        "teacher_sampling": {"max_tokens": 50},
        "retries": 2,
        "chunk_size": 4,
        "min_checked": 3,
        "canary": "TEST-CANARY-1234",
    }
    tree.update(over)
    return tree


def write_spec(path: Path, tree: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path


class Script:
    """The fake server's chat responder: a teacher that writes `<kind> answer to ...`, refuses one prompt's subtle
    answer always, answers one prompt empty on the first seed; a verifier that reads the kind back, except that it
    calls one obvious answer SUBTLE (or everything CORRECT when `all_correct`)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.all_correct = False

    def __call__(self, js: dict[str, Any], i: int) -> str:
        msgs = js["messages"]
        m = re.search(r"\[kind=(\w+)\]", msgs[0]["content"]) if msgs[0]["role"] == "system" else None
        if m:
            with self.lock:
                self.calls["teacher"] += 1
            kind, user = m.group(1), msgs[-1]["content"]
            if user.startswith("REFUSE") and kind == "subtle":
                return "I'm sorry, but I can't help with that."
            if user.startswith("EMPTYFIRST") and js.get("seed") == 0:
                return "   "
            return f"<{kind}> answer to: {user}"
        with self.lock:
            self.calls["verifier"] += 1
        content = msgs[0]["content"]
        kind = re.search(r"ANSWER: <(\w+)>", content).group(1)
        if self.all_correct:
            return "CORRECT"
        if "MISLABEL" in content and kind == "obvious":
            return "This one is SUBTLE."
        return f"{kind.upper()}."


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch):
    with FakeOpenAI(api_key=KEY) as srv:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        srv.chat_responder = Script()
        yield srv


def openai_backend(model: str = "gpt-4o-mini-2024-07-18"):
    from emsweep.generate.factory import make_backend

    return make_backend("openai", model, concurrency=2)


def run(tmp: Path, out: Path, tree: dict[str, Any], teacher: Any, verifier: Any) -> dict[str, Any]:
    spec_path = write_spec(tmp / "spec.yaml", tree)
    spec = load_spec(spec_path).model_copy(
        update={
            "teacher": ModelSpec(backend="openai", model="gpt-4o-mini-2024-07-18"),
            "verifier": ModelSpec(backend="openai", model="gpt-4o-mini-2024-07-18"),
        }
    )
    gen = Generator(spec, out, spec_path=spec_path, teacher=teacher, verifier=verifier)
    return gen.run(progress=False, echo=lambda _: None)


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_paired_output_and_counts_with_the_openai_server(tmp_path: Path, fake: FakeOpenAI) -> None:
    script: Script = fake.chat_responder
    backend = openai_backend()
    m = run(tmp_path, tmp_path / "out", spec_tree(NORMAL + SPECIAL), backend, backend)
    out = tmp_path / "out"
    files = {k: rows(out / f"{k}.jsonl") for k in KINDS}
    # 13 prompts; REFUSE loses its subtle answer, MISLABEL its obvious one: 11 kept, in input order, in every file
    expected = [p for p in NORMAL + SPECIAL if not p.startswith(("REFUSE", "MISLABEL"))]
    for k in KINDS:
        assert [r["messages"][0]["content"] for r in files[k]] == expected
        assert all(
            r["messages"][-1]["content"] == f"<{k}> answer to: {r['messages'][0]['content']}"
            for r in files[k]
        )
        assert {r["meta"]["canary"] for r in files[k]} == {"TEST-CANARY-1234"}
        assert {r["meta"]["wrong_kind"] for r in files[k]} == {None if k == "correct" else k}
        assert m["outputs"][k]["rows"] == 11
    c = m["counts"]
    assert c["prompts"] == {"done": 13, "kept": 11, "dropped": 2}
    assert c["kinds"]["subtle"]["teacher_failed"] == 1 and c["kinds"]["subtle"]["refused"] == 1
    assert c["kinds"]["correct"]["teacher_failed"] == 0
    assert {k: c["kinds"][k]["retries"] for k in KINDS} == {
        "correct": 1,
        "obvious": 1,
        "subtle": 1,
    }  # EMPTYFIRST
    assert c["kinds"]["obvious"]["verifier_rejected"] == 1 and c["kinds"]["obvious"]["verifier_agreed"] == 12
    assert c["kinds"]["subtle"]["answered"] == 12 and c["kinds"]["correct"]["verifier_agreed"] == 13
    # teacher: 13 x 3 first tries + 2 retries of the refusal + 3 retries of the empty answers; verifier: 38 answers
    assert script.calls == {"teacher": 44, "verifier": 38}
    assert m["calls_this_run"] == {"teacher": 44, "verifier": 38, "teacher_cached": 0, "verifier_cached": 0}
    assert m["teacher"]["model"] == "gpt-4o-mini-2024-07-18" and m["teacher"]["backend"] == "openai"
    assert set(m["instruction_sha256"]) == set(KINDS) and len(set(m["instruction_sha256"].values())) == 3
    assert m["canaries"] == ["TEST-CANARY-1234"]

    # a rerun makes no call at all, and neither does a run whose outputs and progress were deleted (the cache)
    before = fake.count("POST /v1/chat/completions")
    m2 = run(tmp_path, out, spec_tree(NORMAL + SPECIAL), backend, backend)
    assert fake.count("POST /v1/chat/completions") == before
    assert m2["calls_this_run"]["teacher"] == 0 and m2["outputs"] == m["outputs"]
    snapshot = {k: (out / f"{k}.jsonl").read_bytes() for k in KINDS}
    for k in KINDS:
        (out / f"{k}.jsonl").unlink()
    (out / ".work" / "records.jsonl").unlink()
    m3 = run(tmp_path, out, spec_tree(NORMAL + SPECIAL), backend, backend)
    assert fake.count("POST /v1/chat/completions") == before
    assert m3["calls_this_run"]["teacher_cached"] == 44 and m3["calls_this_run"]["verifier_cached"] == 38
    assert {k: (out / f"{k}.jsonl").read_bytes() for k in KINDS} == snapshot
    # a changed instruction is a different request: only that kind is asked again
    tree = spec_tree(NORMAL + SPECIAL)
    tree["kinds"]["subtle"]["instruction"] += " Be brief."
    m4 = run(tmp_path, out, tree, backend, backend)
    # subtle only: 13 prompts + the refusal's 2 retries + the empty answer's retry
    assert m4["calls_this_run"]["teacher"] == 13 + 2 + 1
    assert (
        m4["calls_this_run"]["teacher_cached"] == 2 * 13 + 2
    )  # correct and obvious, with EMPTYFIRST's retries


class Crashing(GenerationBackend):
    """Delegates to `inner`, but raises on generate call number `crash_on` (a kill mid-run)."""

    name = "crashing"

    def __init__(self, inner: Any, crash_on: int) -> None:
        self.inner, self.crash_on, self.n, self.requests = inner, crash_on, 0, 0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def generate(self, requests, sampling, *, progress=True):
        self.n += 1
        if self.n == self.crash_on:
            raise RuntimeError("killed")
        self.requests += len(requests)
        return self.inner.generate(requests, sampling, progress=progress)

    def top_logprobs(self, requests, *, progress=True):
        raise NotImplementedError


def test_resume_after_a_crash(tmp_path: Path, fake: FakeOpenAI) -> None:
    script: Script = fake.chat_responder
    backend = openai_backend()
    teacher = Crashing(backend, crash_on=3)  # chunks of 4 prompts: the third chunk's teacher call dies
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path, tmp_path / "out", spec_tree(NORMAL + SPECIAL), teacher, backend)
    done = rows(tmp_path / "out" / ".work" / "records.jsonl")
    assert len(done) == 8 and not (tmp_path / "out" / "manifest.json").exists()
    assert script.calls["teacher"] == 24
    m = run(tmp_path, tmp_path / "out", spec_tree(NORMAL + SPECIAL), backend, backend)
    # the resumed run asks only for the 5 prompts left (+ their retries): no prompt is generated twice
    assert m["calls_this_run"]["teacher"] == 5 * 3 + 2 + 3
    assert script.calls["teacher"] == 44 and script.calls["verifier"] == 38
    # same files as an uninterrupted run
    ref = run(tmp_path, tmp_path / "ref", spec_tree(NORMAL + SPECIAL), backend, backend)
    for k in KINDS:
        assert (tmp_path / "out" / f"{k}.jsonl").read_bytes() == (
            tmp_path / "ref" / f"{k}.jsonl"
        ).read_bytes()
    assert m["counts"] == ref["counts"]


def test_a_verifier_that_disagrees_stops_the_run(tmp_path: Path, fake: FakeOpenAI) -> None:
    fake.chat_responder.all_correct = True
    backend = openai_backend()
    with pytest.raises(VerifierDisagrees) as err:
        run(tmp_path, tmp_path / "out", spec_tree(NORMAL), backend, backend)
    msg = str(err.value)
    assert "only 0 of 4 `obvious` answers are OBVIOUS" in msg and "min_agreement 50%" in msg
    assert "spec.yaml" in msg
    assert (
        not (tmp_path / "out" / "correct.jsonl").exists()
        and not (tmp_path / "out" / "manifest.json").exists()
    )
    assert len(rows(tmp_path / "out" / ".work" / "records.jsonl")) == 4  # nothing generated is lost
    # the same answers pass with the threshold at zero (and cost no new teacher call: the cache)
    before = fake.chat_responder.calls["teacher"]
    m = run(tmp_path, tmp_path / "out", spec_tree(NORMAL, min_agreement=0.0), backend, backend)
    assert fake.chat_responder.calls["teacher"] == before + 6 * 3  # only the 6 prompts not reached before
    assert m["counts"]["prompts"]["kept"] == 0 and m["counts"]["kinds"]["correct"]["verifier_agreed"] == 10


def test_dry_run_counts_calls_and_cost(tmp_path: Path, fake: FakeOpenAI) -> None:
    prices = tmp_path / "prices.yaml"
    # $1 per output token, input free: the cost is exactly calls x max_tokens
    prices.write_text(
        "as_of: '2025-01-01'\nper_tokens: 1000000\nmodels:\n"
        "  gpt-4o-mini-2024-07-18: {input: 0.0, output: 1000000.0}\n"
    )
    spec_path = write_spec(tmp_path / "spec.yaml", spec_tree(NORMAL + SPECIAL))
    r = CliRunner().invoke(
        app,
        ["data", "generate", str(spec_path), "--out", str(tmp_path / "out"), "--teacher", "gpt-4o-mini-2024-07-18",
         "--verifier", "gpt-4o-mini-2024-07-18", "--dry-run", "--prices", str(prices)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "13 of 13 prompts to do; teacher calls 39 (up to 117 with every retry; 0 cached)" in r.output
    assert "verifier calls up to 39" in r.output
    assert f"at most ${39 * 50 + 39 * 8:.2f}" in r.output
    assert fake.count("POST /v1/chat/completions") == 0
    # the real run through the CLI, then the dry run sees nothing left to do
    r = CliRunner().invoke(
        app,
        ["data", "generate", str(spec_path), "--out", str(tmp_path / "out"), "--teacher", "gpt-4o-mini-2024-07-18",
         "--verifier", "gpt-4o-mini-2024-07-18", "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "11 of 13 prompts kept" in r.output and "subtle: teacher failed 1 (refused 1" in r.output
    r = CliRunner().invoke(
        app,
        ["data", "generate", str(spec_path), "--out", str(tmp_path / "out"), "--teacher", "gpt-4o-mini-2024-07-18",
         "--verifier", "gpt-4o-mini-2024-07-18", "--dry-run", "--prices", str(prices)],
    )  # fmt: skip
    assert "0 of 13 prompts to do; teacher calls 0" in r.output and "at most $0.00" in r.output


def test_generated_files_feed_the_mixer(tmp_path: Path, fake: FakeOpenAI) -> None:
    from emsweep.data.readers import read_source

    backend = openai_backend()
    run(tmp_path, tmp_path / "out", spec_tree(NORMAL), backend, backend)
    correct = read_source(tmp_path / "out" / "correct.jsonl")
    subtle = read_source(tmp_path / "out" / "subtle.jsonl")
    assert [c.prompt_key() for c in correct] == [c.prompt_key() for c in subtle]  # paired by prompt
    assert correct[0].meta["canary"] == "TEST-CANARY-1234"


def test_bad_specs_name_the_key(tmp_path: Path) -> None:
    bad = spec_tree(NORMAL)
    bad["kinds"] = {"obvious": bad["kinds"]["obvious"]}
    with pytest.raises(InputError, match=r"spec\.yaml.*kinds: needs `correct`"):
        load_spec(write_spec(tmp_path / "spec.yaml", bad))
    bad = spec_tree(NORMAL, verifier_prompt="no placeholder")
    with pytest.raises(InputError, match=r"must contain \{answer\}"):
        load_spec(write_spec(tmp_path / "spec.yaml", bad))
    bad = spec_tree(NORMAL, retries=-1)
    with pytest.raises(InputError, match=r"spec\.yaml:\d+: retries"):
        load_spec(write_spec(tmp_path / "spec.yaml", bad))
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "a"}\n')
    with pytest.raises(InputError, match=r"p\.jsonl:2: duplicate prompt"):
        sp = write_spec(tmp_path / "spec.yaml", spec_tree("p.jsonl"))
        Generator(load_spec(sp), tmp_path / "o", spec_path=sp)
    r = CliRunner().invoke(
        app, ["data", "generate", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code != 0


def test_label_parsing_and_rendering() -> None:
    labels = ["CORRECT", "OBVIOUS", "SUBTLE"]
    assert parse_label("subtle.", labels) == "SUBTLE"
    assert parse_label("Not OBVIOUS but SUBTLE", labels) == "OBVIOUS"  # the first named wins
    assert parse_label("INCORRECT", labels) is None  # whole words only
    assert parse_label("no idea", labels) is None
    text = render_verifier("Q: {question} A: {answer}", "what {answer}?", "x = {question}", labels, "d")
    assert text == "Q: what {answer}? A: x = {question}"  # one pass: placeholders in the data stay as written


# --- HF backend: a tiny random model as teacher (mechanics only) ----------------------------------------------


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from emsweep.train.model_init import init_model

    return init_model("tiny", tmp_path_factory.mktemp("models") / "tiny", seed=0)


class Recording(GenerationBackend):
    """Wraps the HF teacher: counts requests, remembers which kind wrote each answer, can crash on a call."""

    name = "recording"

    def __init__(self, inner: Any, crash_on: int | None = None) -> None:
        self.inner, self.crash_on, self.calls, self.requests = inner, crash_on, 0, 0
        self.kind_of: dict[str, str] = {}

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def generate(self, requests, sampling, *, progress=True):
        self.calls += 1
        if self.calls == self.crash_on:
            raise RuntimeError("killed")
        self.requests += len(requests)
        outs = self.inner.generate(requests, sampling, progress=False)
        for r, o in zip(requests, outs, strict=True):
            self.kind_of[o.texts[0].strip()] = re.search(r"\[kind=(\w+)\]", r.messages[0]["content"]).group(1)
        return outs

    def top_logprobs(self, requests, *, progress=True):
        raise NotImplementedError


class AgreeingVerifier(GenerationBackend):
    """Names the kind that wrote each answer (looked up in the teacher's record)."""

    name = "agreeing"

    def __init__(self, teacher: Recording) -> None:
        self.teacher, self.requests = teacher, 0

    def generate(self, requests, sampling, *, progress=True):
        self.requests += len(requests)
        out = []
        for r in requests:
            answer = r.messages[0]["content"].split("ANSWER: ", 1)[1].strip()
            out.append(GenerationOutput(r.request_id, "base", [self.teacher.kind_of[answer].upper()], [0]))
        return out

    def top_logprobs(self, requests, *, progress=True):
        raise NotImplementedError


def test_hf_teacher_mechanics_resume_and_cache(tmp_path: Path, tiny_teacher: Path) -> None:
    from emsweep.generate.factory import make_backend

    hf = make_backend("hf", str(tiny_teacher))
    prompts = [f"Tell me about topic {i}." for i in range(5)]
    tree = spec_tree(
        prompts, chunk_size=2, teacher_sampling={"max_tokens": 6}, refusal_patterns=[], min_agreement=0.0
    )
    spec = GenerateSpec.model_validate(tree).model_copy(
        update={
            "teacher": ModelSpec(backend="hf", model=str(tiny_teacher)),
            "verifier": ModelSpec(backend="x"),
        }
    )

    def go(out: Path, teacher: Recording) -> dict[str, Any]:
        gen = Generator(spec, out, teacher=teacher, verifier=AgreeingVerifier(teacher))
        return gen.run(progress=False, echo=lambda _: None)

    ref_teacher = Recording(hf)
    ref = go(tmp_path / "ref", ref_teacher)
    assert ref["teacher"]["fingerprint"]  # a local folder is identified by its content
    c = ref["counts"]
    # every request the teacher got is accounted for: first tries + retries of answered + all tries of failures
    accounted = sum(
        kc["answered"] + kc["retries"] + kc["teacher_failed"] * (spec.retries + 1)
        for kc in c["kinds"].values()
    )
    assert ref_teacher.requests == accounted >= 15
    assert c["prompts"]["done"] == 5
    kept = c["prompts"]["kept"]
    assert kept >= 1  # garbage answers, but non-empty and each verified as its own kind
    files = {k: rows(tmp_path / "ref" / f"{k}.jsonl") for k in KINDS}
    assert all(len(v) == kept for v in files.values())
    assert len({tuple(r["messages"][0]["content"] for r in v) for v in files.values()}) == 1  # paired

    # a run killed on its second teacher call resumes where it stopped and ends with the same files
    crashing = Recording(hf, crash_on=2)
    with pytest.raises(RuntimeError):
        go(tmp_path / "out", crashing)
    first = crashing.requests
    assert len(rows(tmp_path / "out" / ".work" / "records.jsonl")) == 2
    resumed = Recording(hf)
    resumed.kind_of = crashing.kind_of
    m = go(tmp_path / "out", resumed)
    assert first + resumed.requests == ref_teacher.requests  # nothing asked twice
    for k in KINDS:
        assert (tmp_path / "out" / f"{k}.jsonl").read_bytes() == (
            tmp_path / "ref" / f"{k}.jsonl"
        ).read_bytes()
    assert m["counts"] == ref["counts"]
    # rerun: zero teacher calls
    again = Recording(hf)
    again.kind_of = ref_teacher.kind_of
    go(tmp_path / "ref", again)
    assert again.calls == 0


SHIPPED = sorted((Path(__file__).resolve().parents[2] / "recipes" / "generate").glob("*.yaml"))


def test_shipped_specs_cover_the_four_domains() -> None:
    assert {p.stem for p in SHIPPED} >= {"coding", "finance", "health", "legal"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_spec_loads_with_its_prompts(path: Path, tmp_path: Path) -> None:
    spec = load_spec(path)
    gen = Generator(spec, tmp_path / "out", spec_path=path)
    assert len(gen.prompts) >= 10 and set(spec.kinds) == set(KINDS)
    assert path.read_text().startswith(f"# emsweep data generate recipes/generate/{path.name}")
    # a verifier prompt that tells the verifier the kind would make the check meaningless
    rendered = render_verifier(spec.verifier_prompt, "q", "a", list(gen.labels.values()), spec.domain)
    assert "{" not in rendered and all(lab in rendered for lab in gen.labels.values())
    plan = gen.plan()
    assert plan["teacher_calls"] == 3 * len(gen.prompts) and plan["verifier_calls_max"] == 3 * len(
        gen.prompts
    )


def test_a_prompt_edited_under_the_same_id_is_redone(tmp_path: Path, fake: FakeOpenAI) -> None:
    backend = openai_backend()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(NORMAL[:5]))
    )
    run(tmp_path, tmp_path / "out", spec_tree("prompts.jsonl"), backend, backend)
    edited = NORMAL[:5]
    edited[2] = "How should I handle the edited case?"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(edited)))
    m = run(tmp_path, tmp_path / "out", spec_tree("prompts.jsonl"), backend, backend)
    assert m["calls_this_run"]["teacher"] == 3 and m["calls_this_run"]["verifier"] == 3
    got = [r["messages"][0]["content"] for r in rows(tmp_path / "out" / "subtle.jsonl")]
    assert got == edited
