"""`emsweep openai eval`: evaluate the API checkpoints of OpenAI cells with the evaluation stage's own code.

Why a separate entry point: OpenAI cells have no weights, their checkpoints come from `openai_checkpoints.json`,
and a researcher wants the Batch API (half price) and a cost line for paid evaluations. Generation, judging and
the files written (`eval/<checkpoint>/<suite>/{samples,judgments}.jsonl`, `metrics.json`) are exactly those of the
open-model arm (`evals.run.evaluate_run`), so the report reads gpt-4o cells like Qwen and Llama cells.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from emsweep.io import InputError
from emsweep.layout import read_api_checkpoints
from emsweep.openai_ft.jobs import select_cells
from emsweep.openai_ft.ledger import Ledger
from emsweep.openai_ft.prices import PriceTable, load_prices

log = logging.getLogger(__name__)


def _cell_dirs(target: Any, cells: Sequence[str] | None) -> tuple[Path, list[tuple[str, Path, Any]]]:
    """(ledger folder, [(cell id, cell dir, recipe or None)]) for a loaded sweep, a sweep folder or a cell folder.

    A sweep or recipe YAML is loaded by the caller (`emsweep.launch.openai_arm.load_target`)."""
    if hasattr(target, "cells"):
        return target.root, [(c.id, c.root, c.recipe) for c in select_cells(target, cells)]
    p = Path(target)
    if p.is_file():
        raise InputError(f"{p}: load a sweep or recipe YAML with emsweep.launch.openai_arm.load_target first")
    if p.is_dir():
        if (p / "openai_checkpoints.json").exists():  # a single cell folder
            return p.parent, [(p.name, p, None)]
        ledger = Ledger(p).read()["cells"]
        rows = [(cid, Path(rec["cell_dir"]), None) for cid, rec in ledger.items() if rec.get("cell_dir")]
        if cells:
            rows = [r for r in rows if r[0] in cells]
        return p, rows
    raise InputError(f"{p}: no such sweep or cell folder")


def usage_cost(usage: dict[str, dict[str, int]], prices: PriceTable, *, batch: bool) -> float | None:
    total = 0.0
    for model, u in usage.items():
        c = prices.inference_cost(model, u["prompt_tokens"], u["completion_tokens"], batch=batch)
        if c is None:
            return None
        total += c
    return total


def batch_is_cheaper(prices: PriceTable, models: Sequence[str]) -> bool:
    """`--batch auto`: the Batch API when the table prices every model (OpenAI's models) and discounts batches."""
    if prices.batch_discount >= 1.0:
        return False
    return all(prices.inference_cost(m, 1000, 1000) is not None for m in models)


def evaluate_cells(
    target: Any,
    *,
    cells: Sequence[str] | None = None,
    suites: Sequence[str] | None = None,
    checkpoints: str | None = None,
    judge_model: str | None = None,
    samples_per_paraphrase: int | None = None,
    use_batch: bool | str = False,
    pending: bool = False,
    today: Any = None,
    lifecycle_path: str | Path | None = None,
    batch_poll_s: float = 30.0,
    batch_wait_s: float | None = None,
    concurrency: int = 8,
    prices_path: str | Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[Any]:
    """Evaluate every OpenAI cell of `target` (a loaded sweep, a sweep folder or a cell folder) whose checkpoints
    are registered; returns evaluate_run results.

    `use_batch`: True, False, or "auto" (the Batch API where it is cheaper: every model priced in the table with a
    batch discount). `pending`: only checkpoints with a suite still unevaluated, cells ordered by their base model's
    retirement date (soonest first); a checkpoint whose base model is past its retirement date is skipped with a
    message (the API no longer serves it)."""
    from emsweep.evals.judging import default_cache_path
    from emsweep.evals.run import evaluate_run
    from emsweep.evals.units import select_checkpoints
    from emsweep.generate.openai_api import BATCH_MAX_REQUESTS, OpenAIChatBackend
    from emsweep.judge import Judge, JudgeCache

    folder, rows = _cell_dirs(target, cells)
    if not rows:
        raise InputError(f"{getattr(target, 'source', target)}: no OpenAI cells found")
    prices = load_prices(prices_path)
    ledger = Ledger(folder)
    results = []
    skip: set[tuple[str, str]] = set()
    if pending:
        from emsweep.openai_ft import lifecycle as lc
        from emsweep.openai_ft.winddown import inventory

        day = lc.today(today)
        inv = inventory([folder], lc.load_lifecycle(lifecycle_path), day, list(suites) if suites else None)
        order = {cid: i for i, cid in enumerate(dict.fromkeys(r.cell for r in inv if r.pending))}
        for r in inv:
            if not r.pending:
                skip.add((r.cell, r.checkpoint))
            elif r.retired:
                skip.add((r.cell, r.checkpoint))
                echo(
                    f"cell {r.cell}: {r.checkpoint} ({r.model}) not evaluated, and its base model {r.base_model} "
                    f"was scheduled to retire on {r.retirement}; skipped ({r.retirement_source})"
                )
        rows = sorted((r for r in rows if r[0] in order), key=lambda r: order[r[0]])
        todo = sum(1 for r in inv if r.pending and not r.retired)
        echo(f"{todo} checkpoint(s) with unevaluated suites in {folder} (soonest base retirement first)")
    for cid, cell_dir, recipe in rows:
        refs = read_api_checkpoints(cell_dir, cid)
        if not refs:
            echo(
                f"cell {cid}: no registered checkpoints yet (job not succeeded? run `emsweep openai poll`); skipped"
            )
            continue
        ev = recipe.eval if recipe is not None else None
        chosen = select_checkpoints(refs, checkpoints or (ev.checkpoints if ev else "all"))
        chosen = [r for r in chosen if (cid, r.name) not in skip]
        if not chosen:
            continue
        suite_names = list(suites or (ev.suites if ev else ["alignment_mini"]))
        jmodel = judge_model or (ev.judge.model if ev else "gpt-4o-2024-08-06")
        if use_batch == "auto":
            use_batch_cell = batch_is_cheaper(prices, [*(r.model or r.base_model for r in chosen), jmodel])
            echo(f"cell {cid}: {'Batch API' if use_batch_cell else 'online requests'} (--batch auto)")
        else:
            use_batch_cell = bool(use_batch)
        batch_root = cell_dir / "openai" / "batches"
        common = dict(
            concurrency=concurrency,
            use_batch=use_batch_cell,
            batch_poll_s=batch_poll_s,
            batch_wait_s=batch_wait_s,
        )
        backend = OpenAIChatBackend(refs[0].base_model, batch_dir=batch_root / "generate", **common)
        judge_backend = OpenAIChatBackend(jmodel, batch_dir=batch_root / "judge", **common)
        # with the Batch API one backend call = one batch: hand it whole suites, not the online path's small chunks
        chunk = BATCH_MAX_REQUESTS if use_batch_cell else None
        judge = Judge(
            judge_backend,
            cache=JudgeCache(default_cache_path(cell_dir)),
            progress=progress,
            **({"chunk_size": chunk} if chunk else {}),
        )
        try:
            res = evaluate_run(
                cell_dir,
                suite_names,
                checkpoints=chosen,
                backend=backend,
                judge=judge,
                recipe=recipe,
                cell=cid,
                samples_per_paraphrase=samples_per_paraphrase,
                progress=progress,
                **({"chunk_size": chunk} if chunk else {}),
            )
        finally:
            backend.close()
            judge_backend.close()
        gen, jud = backend.usage_summary(), judge_backend.usage_summary()
        cost_g = usage_cost(gen, prices, batch=use_batch_cell)
        cost_j = usage_cost(jud, prices, batch=use_batch_cell)
        rec = ledger.cell(cid)
        spent = dict(rec.get("eval_spend") or {})
        for key, val in (("generation_usd", cost_g), ("judge_usd", cost_j)):
            if val is not None:
                spent[key] = round(spent.get(key, 0.0) + val, 6)
        ledger.update_cell(cid, cell_dir=rec.get("cell_dir") or str(cell_dir), eval_spend=spent)
        echo(
            f"{res.summary()}; this run cost ~${(cost_g or 0) + (cost_j or 0):.4f}"
            + (" (Batch API prices)" if use_batch_cell else "")
        )
        results.append(res)
    return results
