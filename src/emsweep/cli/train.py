"""CLI commands of the train stage; `register` adds them to the top-level `emsweep` app.

`emsweep model init` builds offline models; `emsweep train` runs TRL's SFTTrainer on a recipe.
"""

from __future__ import annotations

from pathlib import Path

import typer

model_app = typer.Typer(
    help="Offline model folders (random weights, offline tokenizer) for tests and benchmarks.",
    no_args_is_help=True,
    epilog="""Examples:

  emsweep model init --shape tiny --out models/tiny

  emsweep model shapes
""",
)

_EX_INIT = """Examples:

  emsweep model init --shape tiny --out models/tiny    (seconds, a few MB: tests and the demo)

  emsweep model init --shape Qwen2.5-7B-Instruct --out models/qwen7b-random --dtype bfloat16    (benchmarks)
"""

_EX_SHAPES = """Example:

  emsweep model shapes
"""

_EX_TRAIN = """Examples:

  emsweep train recipes/demo/tiny-lora.yaml --output-dir runs/tiny-lora    (CPU, the tiny model, seconds)

  emsweep train recipes/models/qwen2.5-7b-instruct-lora.yaml --set data.fraction_correct=0.25

  emsweep train recipes/models/qwen2.5-7b-instruct-full.yaml --set sft.learning_rate=2e-5 --no-resume

Several GPUs: accelerate launch --config_file recipes/accelerate/zero3.yaml scripts/train.py RECIPE.yaml
"""

_EX_CHECK = """Examples:

  emsweep check-accelerate recipes/accelerate/zero3.yaml    (says to install the deepspeed extra if it is missing)

  emsweep check-accelerate recipes/accelerate/fsdp2.yaml recipes/accelerate/multi_gpu.yaml
"""


@model_app.command("init", epilog=_EX_INIT)
def model_init_cmd(
    shape: str = typer.Option(
        ...,
        "--shape",
        help="tiny, tiny-llama, Qwen2.5-0.5B-Instruct, Qwen2.5-1.5B-Instruct, Qwen2.5-7B-Instruct, "
        "Llama-3.1-8B-Instruct",
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write (config, safetensors, tokenizer)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
    dtype: str = typer.Option(
        None, "--dtype", help="float32 | bfloat16 | float16 (default: float32 tiny, bfloat16 real shapes)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder."),
) -> None:
    """Write a model folder with random weights and an offline tokenizer, from a named shape (no hub access)."""
    from emsweep.train.model_init import init_model

    path = init_model(shape, out, seed=seed, dtype=dtype, overwrite=overwrite)
    typer.echo(str(path))


@model_app.command("shapes", epilog=_EX_SHAPES)
def model_shapes_cmd() -> None:
    """List the known shapes and their sizes."""
    from emsweep.train.shapes import SHAPES

    for s in SHAPES.values():
        typer.echo(
            f"{s.name:24s} {s.model_type:6s} hidden={s.hidden_size} layers={s.num_hidden_layers} "
            f"heads={s.num_attention_heads}/{s.num_key_value_heads} vocab={s.vocab_size or 'tokenizer'}"
        )


def train_cmd(
    recipe: Path = typer.Argument(..., help="Recipe YAML (see recipes/models/, recipes/demo/)."),
    set_: list[str] = typer.Option(
        None, "--set", help="Override a recipe key, e.g. --set sft.learning_rate=2e-5 (repeatable)."
    ),
    output_dir: Path = typer.Option(None, "--output-dir", help="Run folder (default: recipe output_dir)."),
    no_resume: bool = typer.Option(
        False, "--no-resume", help="Start from scratch even if complete checkpoints exist."
    ),
    create_openai_jobs: bool = typer.Option(
        False,
        "--create-openai-jobs",
        help="`method: openai`: create the OpenAI fine-tuning job if there is none (spends money; `emsweep openai "
        "finetune RECIPE --dry-run` shows the cost).",
    ),
) -> None:
    """Fine-tune with TRL's SFTTrainer (lora / qlora / full), saving checkpoints on the recipe's schedule.

    Resumes from the last complete checkpoint; a finished run is skipped. On SIGUSR1/SIGTERM it saves a checkpoint
    and exits with code 99 (EXIT_PREEMPTED) so a SLURM job can requeue itself.

    A `method: openai` recipe is a one-cell sweep trained by OpenAI (as `emsweep openai finetune RECIPE`): the mix
    is written here, a job is created with --create-openai-jobs, and each rerun polls it once until it has succeeded
    (its checkpoints are then registered); while it runs the command exits 75.
    """
    from emsweep.recipe import load_recipe

    r = load_recipe(recipe, set_ or [])
    if r.method == "openai":
        _train_openai(r, recipe, output_dir, create_openai_jobs)
        return
    from emsweep.train.runner import run_training

    out = run_training(r, output_dir, resume=not no_resume)
    typer.echo(str(out))


def _train_openai(r, recipe: Path, output_dir: Path | None, create_openai_jobs: bool) -> None:
    """The executor's route for one `method: openai` recipe: mix, then the OpenAI arm's train stage."""
    from emsweep.generate.openai_api import OpenAIArmError
    from emsweep.launch.openai_arm import recipe_sweep
    from emsweep.launch.runner import EXIT_PENDING, run_cell
    from emsweep.openai_ft.cell import OpenAIJobFailed

    sweep = recipe_sweep(r, recipe, output_dir)
    (cell,) = sweep.cells
    try:
        res = run_cell(sweep, cell, ["mix", "train"], create_openai_jobs=create_openai_jobs)
    except OpenAIJobFailed as exc:  # the user acts on it: one line, no traceback
        raise OpenAIArmError(str(exc)) from exc
    if res.get("train") == "pending":
        typer.echo(f"{cell.root}: training on OpenAI; rerun `emsweep train {recipe}` to continue", err=True)
        raise typer.Exit(EXIT_PENDING)
    typer.echo(str(cell.root))


def check_accelerate_cmd(
    configs: list[Path] = typer.Argument(..., help="accelerate config YAMLs (see recipes/accelerate/)."),
) -> None:
    """Check accelerate configs before a multi-GPU launch: each parses with accelerate's loader, names only settings
    accelerate knows, and its backend (DeepSpeed, FSDP2, DDP) is installed here; if not, says which extra to install.
    """
    from emsweep.train.accelerate_check import check_accelerate_config

    for path in configs:
        info = check_accelerate_config(path)
        typer.echo(f"{path!s:40s} {info.distributed_type:10s} {info.backend:9s} ok")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app` (imports of heavy libraries stay inside the commands)."""
    app.add_typer(model_app, name="model")
    app.command("train", epilog=_EX_TRAIN)(train_cmd)
    app.command("check-accelerate", epilog=_EX_CHECK)(check_accelerate_cmd)
