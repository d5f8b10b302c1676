"""Synthetic sweep outputs (cell.json + metrics.json files) whose right answers are known by construction."""

from __future__ import annotations

from pathlib import Path

from emsweep.evals.schema import CheckpointMetrics
from emsweep.io import atomic_write_json
from emsweep.layout import CellPaths


def write_metrics(
    cell_root: Path,
    cell: str,
    step: int,
    *,
    domain: float | None,
    misaligned: float | None,
    n: int = 200,
) -> list[Path]:
    paths = CellPaths.of(cell_root)
    out = []
    ckpt = f"checkpoint-{step}"
    if domain is not None:
        m = CheckpointMetrics(
            cell=cell,
            checkpoint=ckpt,
            step=step,
            suite="arith_heldout",
            suite_kind="domain",
            n=n,
            n_samples=n,
            domain_accuracy=domain,
            domain_accuracy_ci=[max(0, domain - 0.05), min(1, domain + 0.05)],
            judge="synthetic",
            backend="hf",
        )
        p = paths.metrics(ckpt, "arith_heldout")
        atomic_write_json(p, m.model_dump())
        out.append(p)
    if misaligned is not None:
        m = CheckpointMetrics(
            cell=cell,
            checkpoint=ckpt,
            step=step,
            suite="first_plot",
            suite_kind="alignment",
            n=n,
            n_samples=n,
            misaligned_rate=misaligned,
            misaligned_rate_ci=[max(0, misaligned - 0.04), min(1, misaligned + 0.04)],
            aligned_mean=80.0,
            coherent_mean=90.0,
            judge="synthetic",
            backend="hf",
        )
        p = paths.metrics(ckpt, "first_plot")
        atomic_write_json(p, m.model_dump())
        out.append(p)
    return out


def write_cell(
    root: Path, cell: str, axes: dict, sweep: str = "synthetic", init_shape: str | None = None
) -> Path:
    cr = root / cell
    atomic_write_json(
        cr / "cell.json",
        {
            "cell": cell,
            "sweep": sweep,
            "axes": axes,
            "recipe": {"model": {"path": axes["model"], "init_shape": init_shape}},
        },
    )
    return cr


# Known answers, with domain tolerance 0.05 and misalignment tolerance 0.05:
#   final domain accuracy by fraction: 0.1->0.40, 0.25->0.60, 0.5->0.86, 0.75->0.88, 1.0->0.90  => threshold 0.5
#   final misaligned by fraction:      0.1->0.30, 0.25->0.20, 0.5->0.12, 0.75->0.04, 1.0->0.02  => threshold 0.75
#   each cell's steps 0, 10, 20, 40: base misaligned 0.02, and misalignment appears only at step 40 (late),
#   so early stopping picks step 20 for every cell with final misaligned > 0.07.
FRACTIONS = [0.1, 0.25, 0.5, 0.75, 1.0]
FINAL_DOMAIN = {0.1: 0.40, 0.25: 0.60, 0.5: 0.86, 0.75: 0.88, 1.0: 0.90}
FINAL_MIS = {0.1: 0.30, 0.25: 0.20, 0.5: 0.12, 0.75: 0.04, 1.0: 0.02}


def build_synthetic_sweep(root: Path, methods=("lora",), n: int = 400) -> dict[str, dict]:
    """Cells over fractions (and methods); returns {cell id: expectations}."""
    expect = {}
    for method in methods:
        for f in FRACTIONS:
            cid = f"arith_f{f:.2f}_subtle_{method}_s0"
            cr = write_cell(
                root,
                cid,
                {
                    "domain": "arithmetic",
                    "fraction_correct": f,
                    "wrong_kind": "subtle",
                    "method": method,
                    "seed": 0,
                    "model": "tiny",
                },
            )
            shift = 0.02 if method == "full" else 0.0
            fd, fm = FINAL_DOMAIN[f] - shift, FINAL_MIS[f]
            steps = {0: (0.10, 0.02), 10: (fd - 0.10, 0.02), 20: (fd - 0.02, 0.03), 40: (fd, fm)}
            for step, (d, m) in steps.items():
                write_metrics(cr, cid, step, domain=round(d, 4), misaligned=m, n=n)
            best = 20 if fm > 0.02 + 0.05 else 40
            expect[cid] = {
                "best_step": best,
                "retained": (steps[best][0] / fd),
                "final_domain": fd,
            }
    return expect
