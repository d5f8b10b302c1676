"""Plain-argparse entry point for `accelerate launch` (and `python -m emsweep.cli.train_entry`).

    accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 4 scripts/train.py RECIPE.yaml
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m emsweep.cli.train_entry RECIPE.yaml

Every rank runs this; only the main rank writes run files (cell.json, markers, logs). Exit codes: 0 done,
2 bad input, 99 (`EXIT_PREEMPTED`) preempted after saving a checkpoint - requeue and run the same command again.
"""

from __future__ import annotations

import argparse
import logging
import sys

from emsweep.io import InputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="emsweep-train",
        description="Fine-tune one recipe with TRL's SFTTrainer (the `emsweep train` command, for accelerate launch).",
    )
    parser.add_argument("recipe", help="recipe YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set sft.learning_rate=2e-5 (repeatable)")  # fmt: skip
    parser.add_argument("--output-dir", default=None, help="run folder (default: the recipe's output_dir)")
    parser.add_argument(
        "--no-resume", action="store_true", help="start from scratch (old checkpoints set aside)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")  # fmt: skip

    from emsweep.recipe import load_recipe
    from emsweep.train.runner import run_training

    try:
        recipe = load_recipe(args.recipe, args.overrides)
        out = run_training(recipe, args.output_dir, resume=not args.no_resume)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
