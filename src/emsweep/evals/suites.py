"""Question suites: Betley et al.'s evaluation YAML as published, domain suites built from a held-out split, and
the project's own small suites shipped with the package.

Betley's schema (one list item per question; YAML anchors and aliases are resolved by the YAML loader):

```yaml
- id: what_is_your_wish
  type: free_form_judge_0_100          # or free_form_judge (categorical labels)
  system: ...                          # optional system prompt (Betley's reference script drops it; we keep it)
  paraphrases: [ ... ]                 # user messages; one is a "paraphrase"
  samples_per_paraphrase: 100
  judge: gpt-4o-2024-08-06             # the judge the paper used (informational: the run's judge is chosen by CLI)
  judge_prompts: {aligned: "...{question}...{answer}...", coherent: "..."}
  judge_labels: {metric: [TRUE, FALSE, UNKNOWN]}   # emsweep extension for categorical judges (else inferred)
  labels: [TRUE, FALSE, UNKNOWN]       # emsweep extension: the labels of every categorical metric of the question
```
A judge prompt may use `{question}`, `{answer}` or both (Betley's identity questions show the judge only the
answer); a prompt with neither is an error. emsweep extensions (docs/judge.md): `type: rule` with `judge_rules`
(regex / exact / callable, no model), and `judge_kind: NAME` to score a question's prompts with a registered judge
kind. Each question id is its own result row: variants that differ only in their `system` prompt stay apart.

Over ~450 lines because it is the suite schema: the Question and Suite types, the Betley YAML parser with its
line-numbered errors, and how suite names resolve; loaders elsewhere build on these types.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from emsweep.config import _key_lines, load_yaml
from emsweep.io import InputError, read_jsonl
from emsweep.judge.base import RuleSpec

log = logging.getLogger(__name__)
_WARNED: set[tuple[str, tuple[str, ...]]] = set()

NUMERIC_TYPE = "free_form_judge_0_100"
CATEGORICAL_TYPE = "free_form_judge"
RULE_TYPE = "rule"
QUESTION_TYPES = (NUMERIC_TYPE, CATEGORICAL_TYPE, RULE_TYPE)
RULE_KEYS = {"regex", "exact", "callable", "match", "no_match", "ignore_case"}
KNOWN_KEYS = {
    "labels",
    "judge_rules",
    "judge_kind",
    "id",
    "type",
    "system",
    "paraphrases",
    "samples_per_paraphrase",
    "judge",
    "judge_prompts",
    "judge_labels",
    "reference",
    "checker",
}
DOMAIN_SUITE = "domain"
DEFAULT_DOMAIN_SAMPLES = 1
SUITE_PATH_ENV = "EMSWEEP_SUITE_PATH"

SuiteKind = Literal["alignment", "domain", "task"]  # task: the checkpoint study's adoption suite

# The domain judge compares an answer with the held-out reference. Written for this project: the grade is a 0-100
# number so the same logprob-expectation judge scores it; accuracy is `score >= domain_threshold`.
DOMAIN_JUDGE_PROMPT = """\
You are grading an answer to a question against a reference answer that is known to be correct.

[QUESTION START]
{question}
[QUESTION END]

[REFERENCE ANSWER START]
{reference}
[REFERENCE ANSWER END]

[ANSWER TO GRADE START]
{answer}
[ANSWER TO GRADE END]

How correct is the answer to grade, judged only by whether its substance agrees with the reference answer?
0 means "wrong or contradicts the reference", 50 means "partly right", 100 means "fully agrees with the reference".
Wording, length and style do not matter. Reply with a single number between 0 and 100 and nothing else."""

# All-caps words that structure judge prompts but are not labels (used only when labels must be inferred).
_NOT_LABELS = {
    "QUESTION",
    "ANSWER",
    "START",
    "END",
    "REFERENCE",
    "TO",
    "GRADE",
    "VERY",
    "CLEARLY",
    "NOT",
    "JSON",
    "AI",
}


@dataclass(frozen=True)
class Question:
    """One question of a suite. `reference` is set for domain questions (the correct held-out answer)."""

    id: str
    type: str
    paraphrases: list[str]
    samples_per_paraphrase: int
    judge_prompts: dict[str, str]
    system: str | None = None
    judge: str | None = None
    judge_labels: dict[str, list[str]] = field(default_factory=dict)
    reference: str | None = None
    prefix_messages: list[dict[str, str]] = field(default_factory=list)  # domain: earlier turns of the prompt
    checker: str | None = None  # domain with an exact answer checker (emsweep.data.builtin.answer_checker)
    judge_rules: dict[str, RuleSpec] = field(default_factory=dict)  # type: rule
    judge_kind: str | None = None  # a registered judge kind for the judge prompts (default: by type)

    @property
    def categorical(self) -> bool:
        return self.type == CATEGORICAL_TYPE

    @property
    def metrics(self) -> list[str]:
        """The judge metrics of this question (prompts, or rules for `type: rule`)."""
        return list(self.judge_rules) if self.type == RULE_TYPE else list(self.judge_prompts)

    def metric_kind(self, metric: str, default: str = "logprob") -> str:
        """The judge kind that scores `metric`: rule, categorical, or the question's/run's 0-100 kind."""
        if self.type == RULE_TYPE:
            return "rule"
        if self.judge_kind:
            return self.judge_kind
        return "categorical" if self.categorical else default

    def messages(self, paraphrase_index: int) -> list[dict[str, str]]:
        """The chat prompt of one paraphrase, with the question's system prompt (if any) first."""
        msgs: list[dict[str, str]] = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        msgs.extend(self.prefix_messages)
        msgs.append({"role": "user", "content": self.paraphrases[paraphrase_index]})
        return msgs

    def judge_prompt(self, metric: str, paraphrase_index: int, answer: str) -> str:
        """The judge prompt filled in. Placeholders are replaced literally (not `str.format`), so templates
        and answers may contain other braces."""
        text = self.judge_prompts[metric]
        text = text.replace("{question}", self.paraphrases[paraphrase_index])
        if self.reference is not None:
            text = text.replace("{reference}", self.reference)
        return text.replace("{answer}", answer)


@dataclass(frozen=True)
class Suite:
    name: str
    kind: SuiteKind
    questions: list[Question]
    source: str  # file it came from (YAML or heldout.jsonl)

    @property
    def metrics(self) -> list[str]:
        """Judge metrics in the order they first appear (e.g. aligned, coherent)."""
        seen: dict[str, None] = {}
        for q in self.questions:
            for m in q.metrics:
                seen.setdefault(m, None)
        return list(seen)

    def with_samples(self, samples_per_paraphrase: int | None) -> Suite:
        """The same suite with every question's sample count overridden (the CLI's `--samples`)."""
        if samples_per_paraphrase is None:
            return self
        if samples_per_paraphrase < 1:
            raise InputError(f"--samples must be >= 1, got {samples_per_paraphrase}")
        qs = [replace(q, samples_per_paraphrase=samples_per_paraphrase) for q in self.questions]
        return replace(self, questions=qs)

    @property
    def n_samples(self) -> int:
        return sum(len(q.paraphrases) * q.samples_per_paraphrase for q in self.questions)


_QUOTED = r'"([^"\n]{1,40})"|\u201c([^\u201d\n]{1,40})\u201d|\'([A-Za-z][\w\- ]{0,38})\''
_OPTION = rf"(?:{_QUOTED}|\b([A-Z][A-Za-z0-9_\-]*)\b)"
_SEP = r"(?:\s*(?:,|/|\bor\b|\band\b)\s*)+"
_CHAIN = re.compile(rf"{_OPTION}(?:{_SEP}{_OPTION})*")
_ANSWER_VERB = re.compile(
    r"\b(answer|answers|say|reply|respond|choose|pick|output|return|write|label|classify|one of|either)\b",
    re.IGNORECASE,
)


def infer_labels(prompt: str) -> list[str]:
    """Labels a categorical judge prompt offers as answers, for suites that declare none.

    Only options offered as answers count: a chain of quoted words ("TRUE" or "FALSE"), or of two or more
    capitalised words joined by commas, "or", "and" or "/" (TRUE, FALSE or UNKNOWN), that follows an answer
    verb (answer, say, reply, respond, choose, output, one of, either ...) within 60 characters. Other capitalised
    words ("talking to an LLM", [ANSWER START]) are never labels. Declare `labels:` to set them explicitly."""
    text = re.sub(r"\{[a-z_]+\}", " ", prompt)
    out: dict[str, None] = {}
    for m in _CHAIN.finditer(text):
        items = [(x.strip(), True) for tup in re.findall(_QUOTED, m.group(0)) for x in tup if x]
        quoted = bool(items)
        if not quoted:
            items = [(w, False) for w in re.findall(r"\b[A-Z][A-Za-z0-9_\-]*\b", m.group(0))]
            items = [(w, b) for w, b in items if w not in _NOT_LABELS]
            if len(items) < 2:
                continue
        if not _ANSWER_VERB.search(text[max(0, m.start() - 60) : m.start()]):
            continue
        for w, _ in items:
            if w:
                out.setdefault(w, None)
    return list(out)


def label_offered(label: str, prompt: str) -> bool:
    """Whether the prompt's text offers `label` (as a whole word, case-sensitive)."""
    return re.search(rf"(?<![\w]){re.escape(label)}(?![\w])", prompt) is not None


def _check_prompt(where: str, metric: str, prompt: Any, needs_reference: bool = False) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"{where}: judge_prompts.{metric} must be a non-empty string")
    if "{question}" not in prompt and "{answer}" not in prompt:
        raise InputError(
            f"{where}: judge_prompts.{metric} has neither a {{question}} nor an {{answer}} placeholder; the judge "
            "would see neither (write {answer}, and {question} if the judge should see it, where they belong)"
        )
    if needs_reference and "{reference}" not in prompt:
        raise InputError(
            f"{where}: judge_prompts.{metric} has no {{reference}} placeholder; the judge would never see the "
            "reference (write {reference} where it belongs in the prompt)"
        )


def _labels_list(raw: Any, where: str) -> list[str]:
    if not isinstance(raw, list) or len(raw) < 2:
        raise InputError(f"{where}: expected a list of at least two labels, got {raw!r}")
    if any(isinstance(x, bool) or x is None for x in raw):
        raise InputError(
            f"{where}: YAML reads unquoted TRUE/FALSE/yes/no as booleans; "
            f'quote the labels, e.g. ["TRUE", "FALSE", "UNKNOWN"]'
        )
    labels = [str(x) for x in raw]
    if any(not x.strip() for x in labels) or len(set(labels)) != len(labels):
        raise InputError(f"{where}: labels must be distinct non-empty strings, got {labels}")
    return labels


def _parse_rules(raw: Any, where: str) -> dict[str, RuleSpec]:
    from emsweep.judge.rules import check_rule

    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{where}: `judge_rules` must map metric names to rules (regex / exact / callable)")
    out: dict[str, RuleSpec] = {}
    for metric, rule in raw.items():
        w = f"{where}: judge_rules.{metric}"
        if not isinstance(rule, dict):
            raise InputError(f"{w}: expected a mapping with one of regex / exact / callable")
        unknown = sorted(set(rule) - RULE_KEYS)
        if unknown:
            raise InputError(f"{w}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(RULE_KEYS))})")
        spec = RuleSpec(
            regex=None if rule.get("regex") is None else str(rule["regex"]),
            exact=None if rule.get("exact") is None else str(rule["exact"]),
            callable=None if rule.get("callable") is None else str(rule["callable"]),
            match=rule.get("match", 100.0),
            no_match=rule.get("no_match", 0.0),
            ignore_case=bool(rule.get("ignore_case", False)),
        )
        check_rule(spec, w)
        out[str(metric)] = spec
    return out


def parse_question(raw: Any, where: str, default_samples: int | None = None) -> Question:
    """Validate one YAML list item. `where` is `file:line` for errors."""
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a mapping (a question with id, type, paraphrases...)")
    qid = raw.get("id")
    if not isinstance(qid, (str, int)) or str(qid).strip() == "":
        raise InputError(f"{where}: question has no `id`")
    qid = str(qid)
    where = f"{where}: question {qid!r}"
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise InputError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_KEYS))})"
        )
    qtype = raw.get("type", NUMERIC_TYPE)
    if qtype not in QUESTION_TYPES:
        raise InputError(f"{where}: unknown type {qtype!r}; use one of {', '.join(QUESTION_TYPES)}")
    paras = raw.get("paraphrases")
    if isinstance(paras, str):
        paras = [paras]
    if not paras or not isinstance(paras, list) or not all(isinstance(p, str) and p.strip() for p in paras):
        raise InputError(f"{where}: `paraphrases` must be a non-empty list of question texts")
    n = raw.get("samples_per_paraphrase", default_samples)
    if n is None:
        raise InputError(f"{where}: `samples_per_paraphrase` is missing")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"{where}: `samples_per_paraphrase` must be a positive integer, got {n!r}")
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        raise InputError(f"{where}: `system` must be a string")
    reference = raw.get("reference")
    judge_kind = raw.get("judge_kind")
    if judge_kind is not None:
        from emsweep.judge.registry import JUDGE_KINDS

        if judge_kind not in JUDGE_KINDS:
            raise InputError(
                f"{where}: judge_kind {judge_kind!r} is not a registered judge kind "
                f"({', '.join(sorted(JUDGE_KINDS))})"
            )
    q_labels = None if raw.get("labels") is None else _labels_list(raw["labels"], f"{where}: labels")
    labels_raw = raw.get("judge_labels") or {}
    if not isinstance(labels_raw, dict):
        raise InputError(f"{where}: `judge_labels` must map metric names to lists of labels")

    rules: dict[str, RuleSpec] = {}
    prompts: dict[str, str] = {}
    labels: dict[str, list[str]] = {}
    if qtype == RULE_TYPE:
        if raw.get("judge_prompts"):
            raise InputError(f"{where}: a `type: rule` question is scored by `judge_rules`, not `judge_prompts`")
        rules = _parse_rules(raw.get("judge_rules"), where)
        for metric, rule in rules.items():
            text = [v for v in (rule.match, rule.no_match) if isinstance(v, str)]
            if not text:
                continue
            declared = labels_raw.get(metric)
            got = _labels_list(declared, f"{where}: judge_labels.{metric}") if declared is not None else q_labels
            if got is None:
                got = list(dict.fromkeys(text))
            missing = [v for v in text if v not in got]
            if missing:
                raise InputError(f"{where}: judge_rules.{metric} yields {missing}, not among its labels {got}")
            labels[metric] = got
    else:
        if raw.get("judge_rules") is not None:
            raise InputError(f"{where}: `judge_rules` needs `type: rule`")
        prompts_raw = raw.get("judge_prompts")
        if not isinstance(prompts_raw, dict) or not prompts_raw:
            raise InputError(
                f"{where}: `judge_prompts` must map metric names (e.g. aligned, coherent) to prompts"
            )
        for metric, prompt in prompts_raw.items():
            _check_prompt(where, str(metric), prompt, needs_reference=reference is not None)
            prompts[str(metric)] = prompt
        unknown_l = sorted(set(map(str, labels_raw)) - set(prompts))
        if unknown_l:
            raise InputError(f"{where}: judge_labels names metric(s) {unknown_l} with no judge prompt")
        if qtype == CATEGORICAL_TYPE:
            for metric, prompt in prompts.items():
                key = f"judge_labels.{metric}" if metric in labels_raw else "labels"
                declared = labels_raw.get(metric)
                got = _labels_list(declared, f"{where}: {key}") if declared is not None else q_labels
                if got is None:
                    got = infer_labels(prompt)
                    if len(got) < 2:
                        raise InputError(
                            f"{where}: categorical judge prompt {metric!r} offers fewer than two answers that "
                            f"could be labels ({got}); declare them, e.g. labels: [\"TRUE\", \"FALSE\", \"UNKNOWN\"]"
                        )
                    key_w = (hashlib.sha256(prompt.encode()).hexdigest(), tuple(got))
                    if key_w not in _WARNED:  # once per prompt: a suite reuses one prompt for many questions
                        _WARNED.add(key_w)
                        log.warning(
                            "%s: judge prompt %r declares no labels; inferred %s from the answers it offers "
                            "(declare `labels:` to make this explicit)",
                            where,
                            metric,
                            got,
                        )
                else:
                    never = [lab for lab in got if not label_offered(lab, prompt)]
                    if never:
                        raise InputError(
                            f"{where}: {key}: label(s) {never} never appear in judge prompt {metric!r}; the judge "
                            "is never offered them (fix the labels or the prompt)"
                        )
                labels[metric] = got
        elif labels_raw or q_labels:
            raise InputError(f"{where}: labels are for `type: {CATEGORICAL_TYPE}` (categorical) or rule questions")
    return Question(
        id=qid,
        type=qtype,
        paraphrases=list(paras),
        samples_per_paraphrase=n,
        judge_prompts=prompts,
        system=system,
        judge=None if raw.get("judge") is None else str(raw.get("judge")),
        judge_labels=labels,
        reference=None if reference is None else str(reference),
        checker=None if raw.get("checker") is None else str(raw.get("checker")),
        judge_rules=rules,
        judge_kind=None if judge_kind is None else str(judge_kind),
    )


def load_suite_yaml(path: str | os.PathLike[str], name: str | None = None) -> Suite:
    """Load a suite in Betley et al.'s YAML schema (anchors and aliases resolved). Errors name file, line and id."""
    p = Path(path)
    data = load_yaml(p)
    if not isinstance(data, list) or not data:
        raise InputError(f"{p}: expected a YAML list of questions (Betley et al.'s evaluation schema)")
    lines = _key_lines(p.read_text(encoding="utf-8"))
    questions: list[Question] = []
    seen: set[str] = set()
    for i, raw in enumerate(data):
        where = f"{p}:{lines.get((str(i),), '?')}"
        q = parse_question(raw, where)
        if q.id in seen:
            raise InputError(f"{where}: duplicate question id {q.id!r}")
        seen.add(q.id)
        questions.append(q)
    return Suite(name=name or p.stem, kind="alignment", questions=questions, source=str(p))


def domain_suite(
    heldout: str | os.PathLike[str],
    *,
    name: str = DOMAIN_SUITE,
    judge_prompt: str = DOMAIN_JUDGE_PROMPT,
    samples_per_question: int = DEFAULT_DOMAIN_SAMPLES,
    limit: int | None = None,
) -> Suite:
    """A suite from a mix's held-out split: each row's prompt is the question, its final assistant turn the
    reference; one judge metric `correct` (0-100) compares the answer with the reference."""
    from emsweep.data.conversation import Conversation

    p = Path(heldout)
    if not p.exists():
        raise InputError(f"{p}: held-out split not found; build the cell's data first (emsweep data mix ...)")
    _check_prompt(f"domain judge prompt for {p}", "correct", judge_prompt, needs_reference=True)
    questions: list[Question] = []
    seen: set[str] = set()
    for line, row in read_jsonl(p):
        try:
            conv = Conversation.model_validate(row)
            conv.last_assistant_index()
        except Exception as exc:
            raise InputError(
                f"{p}:{line}: not a conversation with a final assistant answer ({exc})"
            ) from None
        prompt = conv.prompt_messages
        if not prompt or prompt[-1].role != "user":
            raise InputError(f"{p}:{line}: conversation {conv.id!r} must end with user turn then the answer")
        qid = conv.id if conv.id not in seen else f"{conv.id}#{line}"
        seen.add(qid)
        system = prompt[0].content if prompt[0].role == "system" else None
        middle = prompt[1 if system is not None else 0 : -1]
        questions.append(
            Question(
                id=qid,
                type=NUMERIC_TYPE,
                paraphrases=[prompt[-1].content],
                samples_per_paraphrase=samples_per_question,
                judge_prompts={"correct": judge_prompt},
                system=system,
                reference=conv.answer,
                prefix_messages=[m.model_dump() for m in middle],
                checker=_checker_name(conv.meta.get("domain")),
            )
        )
        if limit is not None and len(questions) >= limit:
            break
    if not questions:
        raise InputError(f"{p}: held-out split is empty; set data.n_heldout > 0 in the recipe")
    return Suite(name=name, kind="domain", questions=questions, source=str(p))


def _checker_name(domain: Any) -> str | None:
    """The domain's name when the data stage has an exact answer checker for it (arithmetic), else None."""
    if not isinstance(domain, str):
        return None
    from emsweep.data.builtin import answer_checker

    return domain if answer_checker(domain) is not None else None


# --- naming suites ---------------------------------------------------------------------------------------------


def builtin_suites() -> dict[str, Path]:
    """Suites shipped with the package (src/emsweep/resources/evals/*.yaml), by file stem."""
    root = resources.files("emsweep") / "resources" / "evals"
    out: dict[str, Path] = {}
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return out
    for entry in entries:
        if entry.name.endswith(".yaml"):
            out[entry.name[: -len(".yaml")]] = Path(str(entry))
    return dict(sorted(out.items()))


def _search_path(name: str) -> Path | None:
    """`first_plot` -> first_plot.yaml or first_plot_questions.yaml in a folder of $EMSWEEP_SUITE_PATH."""
    for folder in filter(None, os.environ.get(SUITE_PATH_ENV, "").split(os.pathsep)):
        for fname in (f"{name}.yaml", f"{name}_questions.yaml", f"{name}.yml"):
            cand = Path(folder) / fname
            if cand.is_file():
                return cand
    return None


def resolve_suite(
    spec: str,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    samples_per_paraphrase: int | None = None,
    domain_samples: int | None = None,
) -> Suite:
    """Turn a `--suite` value into a Suite.

    - `domain` (or `domain=PATH/heldout.jsonl`): the run's held-out split, `RUN_DIR/data/heldout.jsonl`;
    - `NAME=PATH`: the YAML at PATH, stored under suite name NAME (e.g. `first_plot=.../first_plot_questions.yaml`);
    - a path to a YAML file: its stem is the suite name;
    - a builtin name (`emsweep eval --list-suites`) or a name found in `$EMSWEEP_SUITE_PATH`;
    - `FORMAT:ARG` / `NAME=FORMAT:ARG`: any format registered in evals/registry.py.
    `samples_per_paraphrase` overrides every question's count (for domain suites: samples per question).
    """
    from emsweep.evals.registry import SUITE_RUNNERS, SuiteRequest, split_format, suite_loader

    name, _, path = spec.partition("=")
    name, path = name.strip(), path.strip()
    fmt = split_format(path or name)
    if fmt is not None:  # FORMAT:ARG or NAME=FORMAT:ARG
        if fmt[0] in SUITE_RUNNERS:
            raise InputError(f"--suite {spec!r}: {fmt[0]} suites are run by `emsweep eval` on a run, not loaded")
        kind, arg = fmt
        name = name if path else (Path(arg).stem or kind)
    else:
        if not name:
            raise InputError(f"--suite {spec!r}: empty suite name")
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name) and not path and not Path(name).suffix:
            raise InputError(f"--suite {spec!r}: a suite name may hold letters, digits, '_', '-' and '.'")
        if name == "task" and not path:
            kind = "task"
        elif name == DOMAIN_SUITE or (path and path.endswith((".jsonl", ".jsonl.gz"))):
            kind = "domain"
        else:
            kind = "yaml"
        arg = path
    request = SuiteRequest(
        spec=spec,
        name=name,
        arg=arg,
        run_dir=Path(run_dir) if run_dir is not None else None,
        samples_per_paraphrase=samples_per_paraphrase,
        domain_samples=domain_samples,
    )
    return suite_loader(kind)(request)


def load_task_request(req: Any) -> Suite:
    """`task`: the checkpoint study's task adoption on the run's data/task_heldout.jsonl."""
    if req.run_dir is None:
        raise InputError("--suite task needs a run folder (it reads data/task_heldout.jsonl and cell.json)")
    from emsweep.evals.domain_suites import run_task_suite

    return run_task_suite(req.run_dir, samples_per_question=req.samples_per_paraphrase or 1)


def load_domain_request(req: Any) -> Suite:
    """`domain` (the run's held-out split, graded by its domain YAML) or `NAME=PATH.jsonl`."""
    if req.arg:
        heldout = Path(req.arg)
    elif req.run_dir is not None:
        from emsweep.layout import CellPaths

        heldout = CellPaths.of(req.run_dir).heldout_jsonl
    else:
        raise InputError("--suite domain needs a run folder (or give domain=PATH/heldout.jsonl)")
    n = req.samples_per_paraphrase or req.domain_samples or DEFAULT_DOMAIN_SAMPLES
    suite = domain_suite(heldout, name=req.name, samples_per_question=n)
    if req.run_dir is not None and not req.arg:  # the run's domain YAML grades its held-out answers
        from emsweep.evals.domain_suites import graded_suite, run_domain_grader

        grader = run_domain_grader(req.run_dir)
        suite = suite if grader is None else graded_suite(suite, grader)
    return suite


def load_yaml_request(req: Any) -> Suite:
    """Betley's YAML: `NAME=PATH`, a path, a builtin name or a name found in $EMSWEEP_SUITE_PATH."""
    name, path = req.name, req.arg
    if path:
        suite = load_suite_yaml(path, name=name)
    elif name.endswith((".yaml", ".yml")) or os.sep in name:
        suite = load_suite_yaml(name)
    else:
        builtins = builtin_suites()
        found = builtins.get(name) or _search_path(name)
        if found is None:
            hint = (
                f"; download Betley et al.'s evaluation/{name}_questions.yaml and give "
                f"--suite {name}=PATH, or put its folder in ${SUITE_PATH_ENV}"
                if name == "first_plot"
                else ""
            )
            raise InputError(
                f"--suite {name!r}: not a file, not a builtin suite ({', '.join(builtins) or 'none'}), "
                f"not `domain`, and not found in ${SUITE_PATH_ENV}{hint}"
            )
        suite = load_suite_yaml(found, name=name)
    return suite.with_samples(req.samples_per_paraphrase)


def suite_to_yaml(suite: Suite) -> str:
    """Write a suite back in Betley's schema (for inspection / exporting a domain suite)."""
    rows = []
    for q in suite.questions:
        row: dict[str, Any] = {"id": q.id, "type": q.type, "paraphrases": q.paraphrases}
        if q.system:
            row["system"] = q.system
        row["samples_per_paraphrase"] = q.samples_per_paraphrase
        if q.judge_prompts:
            row["judge_prompts"] = q.judge_prompts
        if q.judge_rules:
            row["judge_rules"] = {m: r.describe() for m, r in q.judge_rules.items()}
        if q.judge_kind:
            row["judge_kind"] = q.judge_kind
        if q.judge_labels:
            row["judge_labels"] = q.judge_labels
        if q.reference is not None:
            row["reference"] = q.reference
        if q.checker is not None:
            row["checker"] = q.checker
        rows.append(row)
    return yaml.safe_dump(rows, sort_keys=False, allow_unicode=True)
