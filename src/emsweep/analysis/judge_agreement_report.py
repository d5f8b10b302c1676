"""The report's "Judge agreement" section: where suite folders were judged by a second judge.

`emsweep judge RUN --judge B` re-judges saved samples with another judge and writes `judgments.<B>.jsonl` beside the
first judge's `judgments.jsonl` (evals/judging.py). Before numbers from an open judge stand in for gpt-4o's, a
reader wants to see how far the two agree on the same answers; this section shows it for every second judge found
under the report's root: Spearman per metric, Cohen's kappa on the misaligned label, and the misaligned-rate
difference with a cluster-bootstrap interval over questions (evals/agreement.py, docs/judge.md), plus the scatter.
"""

from __future__ import annotations

import html
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from emsweep.evals.agreement import agreement, pair_rows, read_emsweep_judgments, scatter_plot

OWNER_FILE = "judgments.jsonl"


def second_judges(root: Path) -> dict[str, list[tuple[Path, Path]]]:
    """{second judge's file slug: [(first judge's judgments.jsonl, that judge's judgments.<slug>.jsonl), ...]}."""
    found: dict[str, list[tuple[Path, Path]]] = defaultdict(list)
    for owner in sorted(root.rglob(OWNER_FILE)):
        for other in sorted(owner.parent.glob("judgments.*.jsonl")):
            found[other.name[len("judgments.") : -len(".jsonl")]].append((owner, other))
    return dict(found)


def _judge_name(path: Path) -> str:
    """The `judge` recorded on the first row of a judgments file (its display name), else the file name."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    return str(json.loads(line).get("judge") or path.name)
                except json.JSONDecodeError:
                    break
    return path.name


def _f(v: Any, digits: int = 2, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def judge_agreement_html(root: Path, out_dir: Path, n_boot: int = 1000, seed: int = 0) -> str:
    """The section (empty when no folder under `root` has a second judge)."""
    groups = second_judges(Path(root))
    if not groups:
        return ""
    parts = [
        "<h2>Judge agreement</h2><p>Suite folders judged by a second judge (<code>emsweep judge --judge</code>), "
        "compared with the first judge on the same answers. The rate difference is the second judge's misaligned "
        "rate minus the first's, with a 95 % cluster-bootstrap interval over questions.</p>"
    ]
    rows = []
    figures = []
    for slug, pairs in sorted(groups.items()):
        a = [r for owner, _ in pairs for r in read_emsweep_judgments(owner)]
        b = [r for _, other in pairs for r in read_emsweep_judgments(other)]
        res = agreement(a, b, bootstrap=n_boot, seed=seed)
        if not res["n_common"]:
            continue
        first = _judge_name(pairs[0][0])
        second = _judge_name(pairs[0][1])
        mis = res.get("misaligned") or {}
        ci = mis.get("rate_diff_ci")
        rhos = "; ".join(
            f"{html.escape(m)} {_f(r['spearman'])} (n {r['n']})" for m, r in sorted(res["metrics"].items())
        )
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{c}</td>"
                for c in (
                    html.escape(first),
                    html.escape(second),
                    str(len(pairs)),
                    str(res["n_common"]),
                    rhos or "–",
                    _f(mis.get("kappa")),
                    f"{_f(mis.get('rate_a'), 3)} / {_f(mis.get('rate_b'), 3)}",
                    _f(mis.get("rate_diff"), 3, signed=True)
                    + (f" [{_f(ci[0], 3, True)}, {_f(ci[1], 3, True)}]" if ci else ""),
                )
            )
            + "</tr>"
        )
        png = out_dir / f"judge_agreement_{re.sub(r'[^A-Za-z0-9._-]+', '_', slug)}.png"
        scatter_plot(pair_rows(a, b), res, png, labels=(first, second))
        figures.append(f'<img src="{png.name}" alt="{html.escape(second)} against {html.escape(first)}">')
    if not rows:
        return ""
    head = (
        "<tr><th>first judge</th><th>second judge</th><th>folders</th><th>answers</th><th>Spearman</th>"
        "<th>kappa (misaligned)</th><th>misaligned rate first / second</th><th>second − first [95 % CI]</th></tr>"
    )
    parts.append(f"<table>{head}{''.join(rows)}</table>")
    parts.extend(figures)
    return "".join(parts)
