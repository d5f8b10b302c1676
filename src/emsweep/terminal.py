"""The terminal: one rich console for logs and live progress, known library warnings filtered, a findings summary.

Why: log lines written while a progress bar is live must go through the same console as the bar, or they glue to
it; library deprecation warnings that the user cannot act on drown the useful lines; and a run should end with
what it found, not only a path.
"""

from __future__ import annotations

import logging
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

# Library warnings that are not the user's to fix, filtered by their exact message (regex matched at the start).
# Where emsweep can fix the cause at the call site it does (the demo sets `activation_checkpointing`); these are
# what is left. Each names where it comes from, so it can go when the library changes.
KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # transformers 5 TrainingArguments: TRL's SFTConfig still sets the old name by default
    (r"`gradient_checkpointing` is deprecated and will be removed in v6", FutureWarning),
    # transformers 5 generate(): PEFT's generation path still passes the old keyword
    (r"`past_key_values` is deprecated", FutureWarning),
    # transformers 5 PreTrainedModel: PEFT/TRL still read the old property during generation and training
    (r"`is_gradient_checkpointing` is deprecated and will be removed in v6", FutureWarning),
)
# The same for library log records (logger name, message start): bitsandbytes on a CPU-only machine tries to
# fetch a 4-bit kernel from the hub at import and logs its failure; emsweep never uses 4-bit on CPU.
KNOWN_LOG_RECORDS: tuple[tuple[str, str], ...] = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
)


class _DropKnown(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not any(
            record.name.startswith(name) and msg.startswith(start) for name, start in KNOWN_LOG_RECORDS
        )


def filter_known_warnings() -> None:
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, _ in KNOWN_LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown())


@lru_cache(maxsize=1)
def console() -> Any:
    """The process's one rich Console (stderr), shared by the log handler and every progress display."""
    from rich.console import Console

    return Console(stderr=True)


def setup_logging(level: int = logging.INFO) -> None:
    """Log through rich on the shared console, so lines print above a live progress display instead of into it.
    Plain `logging.basicConfig` when stderr is not a terminal (files and CI logs keep timestamps and names)."""
    filter_known_warnings()
    logging.captureWarnings(True)
    root = logging.getLogger()
    if not console().is_terminal or os.environ.get("EMSWEEP_PLAIN_LOGS"):
        logging.basicConfig(
            level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
        )
        return
    from rich.logging import RichHandler

    for h in list(root.handlers):
        if isinstance(h, RichHandler):
            root.removeHandler(h)
    handler = RichHandler(
        console=console(), show_path=False, rich_tracebacks=False, log_time_format="%H:%M:%S"
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fmt(v: Any, digits: int = 2) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "–"
    return "–" if f != f else f"{f:.{digits}f}"


def _interval(r: Any, name: str) -> str:
    lo, hi = r.get(f"{name}_lo"), r.get(f"{name}_hi")
    return f"{_fmt(r.get(name))} [{_fmt(lo)}, {_fmt(hi)}]"


def print_summary(index: str | os.PathLike[str], *, seconds: float | None = None, con: Any = None) -> None:
    """A short table of the report's findings and its path: per group the final checkpoint's thresholds (grid
    threshold and refined crossing, each with its 95 % interval) against the fine-tune and the base model; the
    misalignment onsets when the report has them; the early-stopping summary."""
    import pandas as pd
    from rich.table import Table

    out = Path(index).parent
    con = con or console()
    thr_path = out / "thresholds.csv"
    if thr_path.exists():
        thr = pd.read_csv(thr_path)
        if "checkpoint" in thr:
            thr = thr[thr["checkpoint"] == "final"]
        table = Table(
            title="thresholds at the last checkpoint: lowest fraction correct that recovers the reference",
            title_justify="left",
        )
        cols = [c for c in ("wrong_kind", "method", "metric", "reference") if c in thr.columns]
        for c in cols:
            table.add_column({"reference": "vs"}.get(c, c.replace("_", " ")))
        table.add_column("threshold [95 %]", justify="right")
        table.add_column("crossing [95 %]", justify="right")
        table.add_column("values by fraction " + (str(thr["fractions"].iloc[0]) if len(thr) else ""))
        for _, r in thr.iterrows():
            th = "not reached" if pd.isna(r.get("threshold")) else _interval(r, "threshold")
            table.add_row(
                *[str(r[c]).replace("_", " ") for c in cols],
                th,
                _interval(r, "crossing") if "crossing" in thr else "–",
                str(r.get("values", "")),
            )
        con.print(table)
    for csv in sorted(out.glob("*.csv")):
        df = pd.read_csv(csv, nrows=10_000)
        if "onset_step" in df:
            found = df["onset_step"].dropna()
            con.print(
                f"misalignment onset ({csv.name}): found in {len(found)} of {len(df)} cells"
                + (f", median step {found.median():g}" if len(found) else "")
            )
    es_path = out / "early_stopping.csv"
    if es_path.exists():
        es = pd.read_csv(es_path)
        kept = es["retained"].dropna() if "retained" in es else pd.Series(dtype=float)
        stopped = int(es["stopped_early"].fillna(False).astype(bool).sum()) if "stopped_early" in es else 0
        if len(kept):
            con.print(
                f"early stopping: {stopped} of {len(es)} cells stop before their last checkpoint, keeping "
                f"{kept.mean() * 100:.1f} % of the final domain accuracy on average"
            )
    took = f" ({seconds / 60:.1f} min)" if seconds is not None else ""
    con.print(f"[bold]report{took}:[/bold] {Path(index)}")


# --- one live display for every stage ---------------------------------------------------------------------
# The sweep runner registers its rich Progress here; stages (training steps, generation, judging) add a task to
# it instead of opening their own tqdm bars, so everything stays under one display. With none registered (a
# stage run on its own), `stage_task` returns None and the stage keeps its usual bar.

_LIVE: list[Any] = []


class live_display:
    """Register `progress` (a rich Progress) as the display stages report to, for the `with` block."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress

    def __enter__(self) -> Any:
        _LIVE.append(self.progress)
        return self.progress

    def __exit__(self, *exc: object) -> None:
        _LIVE.remove(self.progress)


class StageTask:
    """A task line on the live display; removed when closed."""

    def __init__(self, progress: Any, description: str, total: float | None) -> None:
        self.progress = progress
        self.id = progress.add_task(description, total=total)

    def update(self, n: float = 1) -> None:
        self.progress.advance(self.id, n)

    def set(self, completed: float, total: float | None = None) -> None:
        self.progress.update(self.id, completed=completed, **({"total": total} if total is not None else {}))

    def close(self) -> None:
        self.progress.remove_task(self.id)


def stage_task(description: str, total: float | None = None) -> StageTask | None:
    """A task on the live display, or None when no display is live (then use your own bar)."""
    return StageTask(_LIVE[-1], description, total) if _LIVE else None
