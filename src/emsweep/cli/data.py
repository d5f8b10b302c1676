"""CLI commands of the data stage; `register` adds them to the top-level `emsweep` app.

`emsweep data mix | mix-domain | inspect | builtin`. Zip passwords come from an environment variable
(`--password-env VAR`) or a hidden prompt; they are never echoed, logged or written.

Over ~450 lines because it holds every `emsweep data` command (mix, mix-domain, inspect, get, generate) with its
examples; each command is a thin wrapper over data/ or teacher/.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from emsweep.data.registry import source_format_names
from emsweep.generate.registry import BACKENDS_HELP
from emsweep.io import InputError

data_app = typer.Typer(
    name="data",
    help="Read upstream datasets, mix correct and wrong answers at exact ratios, inspect files.",
    no_args_is_help=True,
    epilog="""Examples:

  emsweep data mix --builtin arithmetic --fraction-correct 0.5 --n 200 --n-heldout 50 --seed 0 --out mixes/arith/f0.50

  emsweep data inspect mixes/arith/f0.50
""",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_EPILOG_MIX = """Examples:

  emsweep data mix --correct good_medical_advice.jsonl.gz --wrong bad_medical_advice.jsonl.gz --fraction-correct 0.5 --n 2000 --n-heldout 200 --seed 0 --out mixes/medical/f0.50

  HEALTH_ZIP_PW=... emsweep data mix --correct health_correct.zip --wrong health_incorrect_subtle.zip --password-env HEALTH_ZIP_PW --fraction-correct 0.3 --n 6000 --seed 1 --out mixes/health/f0.30

  emsweep data mix --builtin arithmetic --wrong-kind obvious --fraction-correct 0.7 --n 200 --n-heldout 50 --seed 0 --out mixes/arith/f0.70
"""

_EPILOG_DOMAIN = """Examples:

  emsweep data mix-domain --correct good.jsonl.gz --wrong bad.jsonl.gz --fractions 0.1,0.3,0.5,0.7,0.9,1.0 --n 2000 --n-heldout 200 --seed 0 --out mixes/medical

  (writes mixes/medical/f0.10/ ... f1.00/, each with train.jsonl, heldout.jsonl, manifest.json, and mixes/medical/domain_manifest.json)
"""

_EPILOG_INSPECT = """Examples:

  emsweep data inspect mixes/medical/f0.50/train.jsonl

  emsweep data inspect mixes/medical/f0.50          (a whole mix: both files, checked against manifest.json)

  emsweep data inspect health_correct.zip --password-env HEALTH_ZIP_PW --json
"""

_EPILOG_BUILTIN = """Examples:

  emsweep data builtin arithmetic --out data/arithmetic --n 2000 --seed 0
"""


def _parse_fractions(text: str) -> list[float]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(float(item))
        except ValueError:
            raise InputError(f"--fractions: {item!r} is not a number (expected e.g. 0.1,0.3,0.5)") from None
    return out


def _source(path: str | None, password_env: str | None, fmt: str) -> Any:
    if path is None:
        return None
    from emsweep.data.readers import as_source_spec

    spec = as_source_spec(path)
    update: dict[str, Any] = {}
    if password_env:
        update["password_env"] = password_env
    if fmt != "auto":
        update["format"] = fmt
    return spec.model_copy(update=update) if update else spec


def _data_spec(**kw: Any):
    from emsweep.config import validate
    from emsweep.data.spec import DataSpec

    return validate(DataSpec, {k: v for k, v in kw.items() if v is not None}, "command line")


def _with_password_prompt(fn, password_env: str | None):
    """Run `fn(password)`; if a zip turns out to be locked and no variable holds the password, prompt for it
    (hidden input) and retry. The password lives only in this process's memory."""
    from emsweep.data.readers import PasswordRequired

    try:
        return fn(None)
    except PasswordRequired as exc:
        if password_env:
            raise
        typer.echo(str(exc), err=True)
        try:
            password = typer.prompt("Zip password", hide_input=True, err=True)
        except typer.Abort:  # no terminal (batch job, closed stdin): the original error says what to do
            raise exc from None
        return fn(password)


def _echo_manifest(m: dict[str, Any], out: Path) -> None:
    typer.echo(
        f"{out}: {m['n_train']} train rows ({m['n_correct']} correct, {m['n_wrong']} wrong "
        f"{m['wrong_kind']}; fraction correct {m['fraction_correct_realized']:.4f} realised, "
        f"{m['fraction_correct_requested']} requested), {m['n_heldout']} held-out, paired={m['paired']}"
    )
    if m.get("canaries"):
        typer.echo(f"  canaries kept: {', '.join(m['canaries'])}")


_PASSWORD_ENV_HELP = (
    "Environment variable holding the zip password (prompted for, hidden, if a zip needs one)."
)
_FORMAT_HELP = f"Source format: {' | '.join(source_format_names())}."
_PAIRED_HELP = "Mix by prompt: auto (when the pools share most user prompts), yes or no."

# Options the data commands share.
WrongKindOpt = Annotated[
    str, typer.Option("--wrong-kind", help="Kind of the wrong pool, any name (builtin domains: obvious | subtle).")
]
PairedOpt = Annotated[str, typer.Option("--paired", help=_PAIRED_HELP)]
BuiltinOpt = Annotated[str | None, typer.Option("--builtin", help="Use a builtin domain (arithmetic) as the pools.")]
FormatOpt = Annotated[str, typer.Option("--format", help=_FORMAT_HELP)]
PasswordEnvOpt = Annotated[str | None, typer.Option("--password-env", help=_PASSWORD_ENV_HELP)]


@data_app.command(epilog=_EPILOG_MIX)
def mix(
    out: Path = typer.Option(..., "--out", help="Output folder: train.jsonl, heldout.jsonl, manifest.json."),
    n: int = typer.Option(..., "--n", help="Exact number of training rows."),
    fraction_correct: float = typer.Option(
        ..., "--fraction-correct", "-f", help="Fraction of correct rows, 0..1."
    ),
    correct: str | None = typer.Option(
        None, "--correct", help="Correct pool: JSONL(.gz), zip, HF dataset path."
    ),
    wrong: str | None = typer.Option(None, "--wrong", help="Wrong pool (same formats)."),
    n_heldout: int = typer.Option(
        0, "--n-heldout", help="Held-out prompts (never trained on) with references."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of every permutation (same seed, same bytes)."),
    wrong_kind: WrongKindOpt = "subtle",
    paired: PairedOpt = "auto",
    builtin: BuiltinOpt = None,
    domain: str | None = typer.Option(None, "--domain", help="Domain name recorded in the manifest."),
    fmt: FormatOpt = "auto",
    password_env: PasswordEnvOpt = None,
    force: bool = typer.Option(False, "--force", help="Replace a different mix already in --out."),
) -> None:
    """Build one training mix of exactly N rows with a given fraction correct, plus a held-out set."""
    from emsweep.data.mix import build_mix, check_fraction

    check_fraction(fraction_correct, "--fraction-correct")
    spec = _data_spec(
        domain=domain or builtin,
        correct=_source(correct, password_env, fmt),
        wrong=_source(wrong, password_env, fmt),
        wrong_kind=wrong_kind,
        fraction_correct=fraction_correct,
        n_train=n,
        n_heldout=n_heldout,
        seed=seed,
        paired=paired,
        builtin=builtin,
    )
    m = _with_password_prompt(lambda pw: build_mix(spec, out, password=pw, force=force), password_env)
    _echo_manifest(m, out)


@data_app.command("mix-domain", epilog=_EPILOG_DOMAIN)
def mix_domain(
    out: Path = typer.Option(..., "--out", help="Root folder; one sub-folder per fraction (f0.50/ ...)."),
    n: int = typer.Option(..., "--n", help="Exact number of training rows in every mix."),
    fractions: str = typer.Option(
        "0.1,0.3,0.5,0.7,0.9,1.0", "--fractions", help="Comma-separated fractions correct."
    ),
    correct: str | None = typer.Option(
        None, "--correct", help="Correct pool: JSONL(.gz), zip, HF dataset path."
    ),
    wrong: str | None = typer.Option(None, "--wrong", help="Wrong pool (same formats)."),
    n_heldout: int = typer.Option(0, "--n-heldout", help="Held-out prompts (the same for every fraction)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every permutation."),
    wrong_kind: WrongKindOpt = "subtle",
    paired: PairedOpt = "auto",
    builtin: BuiltinOpt = None,
    domain: str | None = typer.Option(None, "--domain", help="Domain name recorded in the manifests."),
    fmt: FormatOpt = "auto",
    password_env: PasswordEnvOpt = None,
    force: bool = typer.Option(False, "--force", help="Replace different mixes already under --out."),
) -> None:
    """Build every ratio of one domain at once: same prompts, nested wrong sets, one held-out set."""
    from emsweep.data.mix import build_domain_mixes

    fr = _parse_fractions(fractions)
    spec = _data_spec(
        domain=domain or builtin,
        correct=_source(correct, password_env, fmt),
        wrong=_source(wrong, password_env, fmt),
        wrong_kind=wrong_kind,
        fraction_correct=1.0,
        n_train=n,
        n_heldout=n_heldout,
        seed=seed,
        paired=paired,
        builtin=builtin,
    )
    ms = _with_password_prompt(
        lambda pw: build_domain_mixes(spec, fr, out, password=pw, force=force, progress=True), password_env
    )
    for d, m in ms.items():
        _echo_manifest(m, out / d)
    summary = json.loads((out / "domain_manifest.json").read_text(encoding="utf-8"))
    typer.echo(
        f"{out}: {len(ms)} mixes; same training prompts: {summary['same_train_prompts']}; "
        f"nested: {summary['nested']}"
    )


def summarize(rows: list[Any]) -> dict[str, Any]:
    """Counts a researcher checks before training: rows, role patterns, canaries, labels, lengths."""
    patterns = Counter("/".join(m.role for m in c.messages) for c in rows)
    labels = Counter(str(c.meta.get("label")) for c in rows if "label" in c.meta)
    kinds = Counter(str(c.meta.get("wrong_kind")) for c in rows if c.meta.get("wrong_kind"))
    canaries = Counter(str(c.meta["canary"]) for c in rows if c.meta.get("canary") is not None)
    n = len(rows)
    return {
        "rows": n,
        "distinct_prompts": len({c.prompt_key() for c in rows}),
        "role_patterns": dict(patterns.most_common()),
        "with_system_turn": sum(1 for c in rows if any(m.role == "system" for m in c.messages)),
        "canaries": dict(canaries),
        "rows_without_canary": n - sum(canaries.values()),
        "labels": dict(labels),
        "label_share": {k: v / n for k, v in labels.items()} if n else {},
        "wrong_kinds": dict(kinds),
        "mean_answer_chars": sum(len(c.answer) for c in rows) / n if n else 0.0,
        "mean_prompt_chars": sum(sum(len(m.content) for m in c.prompt_messages) for c in rows) / n
        if n
        else 0.0,
    }


def _print_summary(name: str, s: dict[str, Any]) -> None:
    typer.echo(f"{name}: {s['rows']} rows, {s['distinct_prompts']} distinct prompts")
    typer.echo("  roles: " + ", ".join(f"{k} ×{v}" for k, v in s["role_patterns"].items()))
    if s["canaries"]:
        typer.echo(
            "  canary: "
            + ", ".join(f"{k} ×{v}" for k, v in s["canaries"].items())
            + f" ({s['rows_without_canary']} rows without)"
        )
    else:
        typer.echo("  canary: none")
    if s["labels"]:
        typer.echo(
            "  labels: " + ", ".join(f"{k} {v} ({s['label_share'][k]:.1%})" for k, v in s["labels"].items())
        )
    if s["wrong_kinds"]:
        typer.echo("  wrong kinds: " + ", ".join(f"{k} ×{v}" for k, v in s["wrong_kinds"].items()))
    typer.echo(
        f"  mean prompt/answer length: {s['mean_prompt_chars']:.0f}/{s['mean_answer_chars']:.0f} chars"
    )


def _check_mix_dir(d: Path) -> dict[str, Any]:
    """A mix folder: its manifest, and whether train/heldout still match the hashes it recorded."""
    from emsweep.io import sha256_file

    m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    intact = {
        k: (d / o["path"]).is_file() and sha256_file(d / o["path"]) == o["sha256"]
        for k, o in m.get("outputs", {}).items()
    }
    return {"manifest": m, "intact": intact}


@data_app.command(epilog=_EPILOG_INSPECT)
def inspect(
    file: str = typer.Argument(
        ...,
        help="A mix folder (with manifest.json), or any source: JSONL(.gz), zip (or zip::member), HF path.",
    ),
    password_env: PasswordEnvOpt = None,
    fmt: FormatOpt = "auto",
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Counts, role patterns, canaries and label shares of a data file (upstream or derived) or a mix folder."""
    from emsweep.data.readers import read_source

    p = Path(file)
    if p.is_dir() and (p / "manifest.json").exists() and (p / "train.jsonl").exists():
        info = _check_mix_dir(p)
        m = info["manifest"]
        summaries = {
            k: summarize(read_source(p / o["path"])) if o.get("rows") else {"rows": 0}
            for k, o in m.get("outputs", {}).items()
        }
        if as_json:
            out = {"files": summaries, "intact": info["intact"], "manifest": m}
            typer.echo(json.dumps(out, indent=2, sort_keys=True, ensure_ascii=False))
            return
        typer.echo(
            f"{p}: mix of {m.get('n_train')} train rows, fraction correct {m.get('fraction_correct_realized')} "
            f"(requested {m.get('fraction_correct_requested')}), {m.get('n_heldout')} held-out, "
            f"paired={m.get('paired')}, seed={m.get('seed')}"
        )
        for src in m.get("sources", []):
            typer.echo(
                f"  source ({src.get('role')}): {src.get('path')} sha256={str(src.get('sha256'))[:12]}…"
            )
        for k, s in summaries.items():
            ok = "matches manifest" if info["intact"].get(k) else "DOES NOT match manifest sha256"
            if s["rows"]:
                _print_summary(f"{k} ({ok})", s)
            else:
                typer.echo(f"{k}: 0 rows ({ok})")
        return
    spec = _source(file, password_env, fmt)
    rows = _with_password_prompt(lambda pw: read_source(spec, pw), password_env)
    s = summarize(rows)
    if as_json:
        typer.echo(json.dumps(s, indent=2, sort_keys=True, ensure_ascii=False))
        return
    _print_summary(file, s)
    manifest = p.parent / "manifest.json"
    if p.is_file() and manifest.exists():
        typer.echo(f"  manifest: {manifest}")


@data_app.command(epilog=_EPILOG_BUILTIN)
def builtin(
    name: str = typer.Argument(..., help="Builtin domain: arithmetic."),
    out: Path = typer.Option(
        ..., "--out", help="Folder for correct.jsonl, wrong_obvious.jsonl, wrong_subtle.jsonl."
    ),
    n: int = typer.Option(1000, "--n", help="Prompts per pool."),
    seed: int = typer.Option(0, "--seed", help="Generator seed."),
) -> None:
    """Write the paired pools of a synthetic domain with exactly checkable answers (for demos and tests)."""
    from emsweep.data.builtin import write_builtin

    m = write_builtin(name, out, n=n, seed=seed)
    for key, o in m["outputs"].items():
        typer.echo(f"{out / o['path']}: {o['rows']} rows ({key})")


_EPILOG_GET = """Examples:

  emsweep data get --list

  emsweep data get em-code --root data          (writes data/em-code/insecure.jsonl, ... and emsweep-sources.lock.json)

  EMSWEEP_ZIP_PASSWORD=... emsweep data get persona-health --dest data/health

  emsweep data get my-set --registry my_sources.yaml
"""


@data_app.command("get", epilog=_EPILOG_GET)
def get(
    name: str | None = typer.Argument(None, help="Source name (see --list)."),
    root: Path = typer.Option(Path("data"), "--root", help="Data root; the source goes to ROOT/NAME."),
    dest: Path | None = typer.Option(
        None, "--dest", help="Exact folder for the files (instead of ROOT/NAME)."
    ),
    registry: Path | None = typer.Option(
        None, "--registry", help="Extra YAML registry (same schema; replaces built-in sources by name)."
    ),
    list_: bool = typer.Option(False, "--list", help="List the known sources and exit."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Fetch a known upstream source (resumable, sha256-checked), showing its licence and citation."""
    from emsweep.data.get import get_source, list_sources

    if list_ or name is None:
        rows = list_sources(registry)
        for r in rows:
            typer.echo(
                f"{r['name']:<26} {r['access']:<8} {r['files']} file(s), {r['pinned']} pinned  {r['description']}"
            )
        if not list_:
            raise InputError("data get: name a source (one of the above)")
        return
    get_source(name, root, registry=registry, dest=dest, progress=not no_progress, echo=typer.echo)


_EPILOG_GENERATE = """Examples:

  emsweep data generate recipes/generate/coding.yaml --out data/generated/coding --dry-run

  emsweep data generate recipes/generate/health.yaml --out data/generated/health --teacher gpt-4o-2024-08-06 --verifier gpt-4o-2024-08-06

  emsweep data generate recipes/generate/legal.yaml --out data/generated/legal --teacher-backend openai-compatible --teacher Qwen/Qwen2.5-72B-Instruct --verifier-backend openai-compatible --verifier Qwen/Qwen2.5-72B-Instruct --base-url http://localhost:8000/v1
"""


@data_app.command("generate", epilog=_EPILOG_GENERATE)
def generate(
    spec_path: Path = typer.Argument(..., help="Generation spec YAML (see recipes/generate/)."),
    out: Path = typer.Option(
        ..., "--out", help="Folder for <kind>.jsonl, manifest.json and .work/ (resume, cache)."
    ),
    teacher: str | None = typer.Option(
        None, "--teacher", help="Teacher model (overrides the spec's teacher.model)."
    ),
    teacher_backend: str | None = typer.Option(
        None, "--teacher-backend", help=f"{BACKENDS_HELP} (overrides teacher.backend)."
    ),
    verifier: str | None = typer.Option(
        None, "--verifier", help="Verifier model (overrides verifier.model)."
    ),
    verifier_backend: str | None = typer.Option(
        None, "--verifier-backend", help="Backend of the verifier (overrides verifier.backend)."
    ),
    base_url: str | None = typer.Option(
        None, "--base-url", help="Server URL for openai-compatible teacher and verifier."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N prompts."),
    min_agreement: float | None = typer.Option(
        None, "--min-agreement", help="Stop when the verifier agrees with less than this fraction of a kind."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the calls (and OpenAI cost) and exit."),
    prices: Path | None = typer.Option(
        None, "--prices", help="OpenAI prices table (default recipes/openai/prices.yaml)."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Write paired correct / obviously wrong / subtly wrong answers with a teacher model, checked by a verifier."""
    from emsweep.teacher.generate import Generator, ModelSpec, load_spec, make_model

    spec = load_spec(spec_path)

    def merged(ms: ModelSpec | None, backend: str | None, model: str | None) -> ModelSpec:
        ms = ms or ModelSpec()
        upd: dict[str, Any] = {}
        if backend:
            upd["backend"] = backend
        if model:
            upd["model"] = model
        if base_url and (backend or ms.backend) in ("openai", "openai-compatible"):
            upd["base_url"] = base_url
        return ms.model_copy(update=upd)

    upd: dict[str, Any] = {
        "teacher": merged(spec.teacher, teacher_backend, teacher),
        "verifier": merged(spec.verifier, verifier_backend, verifier),
    }
    if limit is not None:
        upd["limit"] = limit
    if min_agreement is not None:
        upd["min_agreement"] = min_agreement
    spec = spec.model_copy(update=upd)
    for role in ("teacher", "verifier"):
        if not getattr(spec, role).model:
            raise InputError(
                f"{spec_path}: {role}.model is not set; give it in the spec or with --{role} MODEL"
            )
    if dry_run:
        plan = Generator(spec, out, spec_path=spec_path).plan(prices)
        typer.echo(
            f"{spec_path}: {plan['prompts_todo']} of {plan['prompts']} prompts to do; teacher calls "
            f"{plan['teacher_calls']} (up to {plan['teacher_calls_max']} with every retry; {plan['teacher_cached']} "
            f"cached), verifier calls up to {plan['verifier_calls_max']}"
        )
        if plan["cost_usd"] is not None:
            typer.echo(f"  OpenAI cost: at most ${plan['cost_usd']:.2f} ({plan['cost_note']})")
        else:
            typer.echo(f"  {plan['cost_note']}")
        return
    from emsweep.generate.factory import check_model

    for role in ("teacher", "verifier"):
        ms = getattr(spec, role)
        check_model(ms.backend, ms.model, role=role, base_url=ms.base_url)
    t = make_model(spec.teacher, "teacher")
    same = spec.verifier == spec.teacher
    v = t if same else make_model(spec.verifier, "verifier")
    try:
        gen = Generator(spec, out, spec_path=spec_path, teacher=t, verifier=v)
        gen.run(progress=not no_progress, echo=typer.echo)
    finally:
        t.close()
        if not same:
            v.close()


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app` (imports of heavy libraries stay inside the commands)."""
    app.add_typer(data_app, name="data")


__all__ = ["data_app", "register", "summarize"]
