"""`emsweep demo`: the embedded sweep, end to end on CPU, ending with the report's path.

The sweep ships inside the package (`emsweep/resources/sweeps/demo.yaml`, the same file as
`recipes/sweeps/demo.yaml`), so an installed copy runs it without the repository. Its model is made offline by
`emsweep model init --shape tiny` (random weights), its data is the builtin arithmetic domain, its judge is the
tiny model itself: every stage runs for real, and the numbers mean nothing about the science.
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from emsweep.io import atomic_write_text

log = logging.getLogger(__name__)


# --fast: LoRA only (half the cells), for CI smoke runs
FAST: dict[str, Any] = {"axes": {"method": ["lora"]}, "set": {}}


def demo_spec_text() -> str:
    return (resources.files("emsweep") / "resources" / "sweeps" / "demo.yaml").read_text(encoding="utf-8")


def demo_sweep_spec(out: str | os.PathLike[str], *, fast: bool = False) -> dict[str, Any]:
    """The packaged demo sweep, rooted under `out` (model, cells, report), optionally cut down for CI."""
    out = Path(out).resolve()
    spec = yaml.safe_load(demo_spec_text())
    spec["output_root"] = str(out)
    base = spec["base"]
    model = base["model"]
    original = model["path"]
    model["path"] = str(out / "models" / Path(original).name)
    judge = base.setdefault("eval", {}).setdefault("judge", {})
    if judge.get("model") == original:  # the tiny model judges itself
        judge["model"] = model["path"]
    if fast:
        spec["axes"].update(FAST["axes"])
        spec.setdefault("set", {}).update(FAST["set"])
        spec["name"] = spec["name"] + "-fast"
    return spec


def run_demo(
    out: str | os.PathLike[str] = "emsweep-demo", *, fast: bool = False, max_parallel: int = 1
) -> Path:
    """Write the resolved sweep to `out/demo-sweep.yaml`, run every cell here, build the report; return index.html."""
    from emsweep.analysis.report import build_report
    from emsweep.launch.runner import run_sweep_local
    from emsweep.launch.sweep import load_sweep

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = demo_sweep_spec(out, fast=fast)
    sweep_file = out / "demo-sweep.yaml"
    header = (
        "# The emsweep demo sweep, resolved for this folder by `emsweep demo` (rerun it with\n"
        f"# `emsweep sweep run {sweep_file}`). A tiny random-start model: the pipeline's shape, not the science.\n"
    )
    atomic_write_text(sweep_file, header + yaml.safe_dump(spec, sort_keys=False))
    sweep = load_sweep(sweep_file)
    log.info("demo: %d cells under %s", len(sweep.cells), sweep.root)
    run_sweep_local(sweep, max_parallel=max_parallel)
    return build_report(sweep.root, n_boot=500)
