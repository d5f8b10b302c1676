#!/usr/bin/env python
"""Training throughput: TRL's defaults vs each speed option vs the shipped recipe's settings, on the same data.
Prints a markdown table of ratios against TRL's defaults (paste it into docs/benchmarks.md).

The model is built by `emsweep model init` (random weights, the real architecture shape, an offline tokenizer), so
no hub access is needed. The data is synthetic text with the word-length distribution of the model-organisms medical
pair (LENGTHS below; `--measure-lengths` re-measures it from $EMSWEEP_UPSTREAM's real slices, else from the
project-made fixture). Every configuration trains one epoch over the same examples, each in its own subprocess (clean
peak memory), configurations interleaved over `--repeats` rounds; the table shows the median round.

Columns: real tokens/s counts the examples' tokens only (never padding); padded tokens is what the model actually
ran on; step time is the median optimizer step (the first is left out as warm-up); epoch time covers
`trainer.train()`, i.e. the same number of examples for every configuration. Times are wall-clock on a GPU and the
process's CPU time on CPU (one torch thread by default), because on a shared machine other processes stretch wall
time far more than CPU time (the wall time is printed in the notes). Peak memory is torch.cuda.max_memory_allocated on
a GPU, the process's peak RSS (ru_maxrss, model included) on CPU.

    python scripts/bench_train.py --shape tiny --device cpu
    python scripts/bench_train.py --shape Qwen2.5-0.5B-Instruct --device cpu --examples 16 --repeats 1
    python scripts/bench_train.py --shape Qwen2.5-7B-Instruct --device cuda --method lora --dtype bfloat16 --examples 256
    python scripts/bench_train.py --shape Qwen2.5-7B-Instruct --device cuda --method full --dtype bfloat16 --examples 128
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench_common import hardware, load_average, markdown_table, utc_now, versions

REPO = Path(__file__).resolve().parents[1]

# Word counts (whitespace-separated) of the model-organisms medical pair, both files (good_/bad_medical_advice,
# the 400-row heads, 800 rows), measured with `--measure-lengths` and EMSWEEP_UPSTREAM set.
# {bin upper edge: rows}; a bin covers (edge - BIN_WIDTH, edge].
LENGTHS: dict[str, dict[int, int]] = {
    "prompt": {20: 8, 30: 184, 40: 402, 50: 170, 60: 34, 70: 2},
    "answer": {20: 3, 40: 119, 60: 425, 80: 208, 100: 39, 120: 6},
}
BIN_WIDTH = {"prompt": 10, "answer": 20}
LENGTHS_SOURCE = "model-organisms medical pair (real slices, 800 rows; stored histogram)"

_WORDS = (
    "the a of to and is in that it for you your with as be on not this are or can if may should doctor pain "
    "take dose symptoms day days week hours water rest medicine blood pressure fever child skin sleep heart "
    "risk help see care treatment signs body often more less some most any when after before about because "
    "which there their they what how why also only very well still usually mild severe sudden chronic daily"
)
VOCAB = _WORDS.split()


# --- data ---------------------------------------------------------------------------------------------------


def _bins(values: list[int], width: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for v in values:
        edge = ((v + width - 1) // width) * width or width
        out[edge] = out.get(edge, 0) + 1
    return dict(sorted(out.items()))


def measure_lengths() -> tuple[dict[str, dict[int, int]], str]:
    """Word-count histograms of prompts and answers of the medical pair (real slices if available)."""
    up = os.environ.get("EMSWEEP_UPSTREAM")
    files = sorted(Path(up, "model-organisms").glob("*medical_advice*.jsonl.gz")) if up else []
    rows = []
    if files:
        for f in files:
            with gzip.open(f, "rt", encoding="utf-8") as fh:
                rows += [json.loads(line) for line in fh if line.strip()]
        source = "model-organisms medical pair: " + ", ".join(f.name for f in files)
    else:
        sys.path.insert(0, str(REPO / "tests" / "fixtures"))
        from model_organisms_like import medical_pair_rows

        good, bad = medical_pair_rows()
        rows = good + bad
        source = "project-made fixture tests/fixtures/model_organisms_like.py (400 + 400 rows)"
    prompts = [len(r["messages"][0]["content"].split()) for r in rows]
    answers = [len(r["messages"][-1]["content"].split()) for r in rows]
    return {k: _bins(v, BIN_WIDTH[k]) for k, v in (("prompt", prompts), ("answer", answers))}, f"{source}, {len(rows)} rows"


def _sample(hist: dict[int, int], width: int, rng: random.Random) -> int:
    edge = rng.choices(list(hist), weights=list(hist.values()))[0]
    return rng.randint(max(1, edge - width + 1), edge)


def synthetic_rows(n: int, seed: int, lengths: dict[str, dict[int, int]]) -> list[dict[str, Any]]:
    """n conversations whose prompt and answer word counts follow `lengths` (alternating correct/wrong labels)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = " ".join(rng.choices(VOCAB, k=_sample(lengths["prompt"], BIN_WIDTH["prompt"], rng)))
        a = " ".join(rng.choices(VOCAB, k=_sample(lengths["answer"], BIN_WIDTH["answer"], rng)))
        msgs = [{"role": "user", "content": p.capitalize() + "?"}, {"role": "assistant", "content": a + "."}]
        out.append({"id": f"b{i}", "messages": msgs, "meta": {"label": "correct" if i % 2 == 0 else "wrong"}})
    return out


# --- configurations -----------------------------------------------------------------------------------------


def recipe_speed_settings(method: str) -> dict[str, dict[str, Any]]:
    """The speed-relevant keys of the shipped Qwen2.5-7B recipe for `method` (so this row follows the recipe)."""
    import yaml

    tree = yaml.safe_load((REPO / "recipes" / "models" / f"qwen2.5-7b-instruct-{method}.yaml").read_text())
    keys = {"activation_checkpointing", "padding_free", "packing", "packing_strategy", "max_length",
            "train_sampling_strategy", "use_liger_kernel"}  # fmt: skip
    sft = {k: v for k, v in (tree.get("sft") or {}).items() if k in keys}
    model = {k: v for k, v in (tree.get("model") or {}).items() if k == "attn_implementation"}
    return {"sft": sft, "model": model}


def configurations(args: argparse.Namespace) -> list[tuple[str, dict[str, Any], str]]:
    """(name, overrides, why skipped or '') for TRL's defaults, each option, and the recipe's settings."""
    import importlib.util

    from emsweep.train.speed import SPEED_OPTIONS

    out: list[tuple[str, dict[str, Any], str]] = [("trl-defaults", {"sft": {}, "model": {}}, "")]
    for name, opt in SPEED_OPTIONS.items():
        skip = ""
        if opt.needs_cuda and args.device != "cuda":
            skip = "needs a CUDA GPU"
        elif name == "liger" and importlib.util.find_spec("liger_kernel") is None:
            skip = "liger-kernel not installed"
        elif name == "flash-attention-2" and importlib.util.find_spec("flash_attn") is None:
            skip = "flash-attn not installed"
        out.append((name, {"sft": dict(opt.sft), "model": dict(opt.model)}, skip))
    rec = recipe_speed_settings(args.method)
    out.append((f"recipe ({args.method})", rec, ""))
    if args.only:
        out = [c for c in out if c[0] in args.only or c[0] == "trl-defaults"]
    return out


# --- one measurement (in a subprocess) ----------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one epoch with one configuration and return its measurements."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import has_generation_markers

    from emsweep.train.resolve import LORA_DEFAULTS
    from emsweep.train.rows import load_training_rows
    from emsweep.train.speed import check_speed_settings

    cuda = spec["device"] == "cuda"
    if not cuda:
        torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    markers = has_generation_markers(tok.chat_template)
    sft = {
        "per_device_train_batch_size": spec["batch_size"],
        "gradient_accumulation_steps": spec["grad_accum"],
        "max_length": spec["max_length"],
        "num_train_epochs": 1,
        "learning_rate": 1e-5,
        "logging_steps": 10**6,
        "save_strategy": "no",
        "report_to": "none",
        "seed": spec["seed"],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "bf16": spec["dtype"] == "bfloat16",
        "use_cpu": not cuda,
        "optim": "adamw_torch",
        **({"assistant_only_loss": True} if markers else {"completion_only_loss": True}),
        **spec["overrides"]["sft"],
    }
    attn = spec["overrides"]["model"].get("attn_implementation", "sdpa")
    check_speed_settings(sft, attn, cuda=cuda)
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=dtype, attn_implementation=attn)
    peft_config = None
    if spec["method"] == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(**{**LORA_DEFAULTS, "task_type": "CAUSAL_LM"})
    rows = load_training_rows(Path(spec["rows"]), use_assistant_mask=markers)
    args = SFTConfig(output_dir=spec["out_dir"], **sft)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=peft_config
    )
    real_tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    counted = {"padded": 0}
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        counted["padded"] += batch["input_ids"].numel()
        return batch

    trainer.data_collator = counting

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    class Steps(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, a, state, control, **kw):
            sync()
            self.t0 = clock()

        def on_step_end(self, a, state, control, **kw):
            sync()
            self.times.append(clock() - self.t0)

    # On a GPU: wall time. On CPU: the process's CPU time (all its threads), which other processes loading a shared
    # machine inflate far less than wall time; the wall time is kept as well.
    clock = time.perf_counter if cuda else time.process_time
    steps = Steps()
    trainer.add_callback(steps)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_mb()
    sync()
    t0, c0 = time.perf_counter(), clock()
    out = trainer.train()
    sync()
    wall, used = time.perf_counter() - t0, clock() - c0
    step_times = steps.times[1:] or steps.times
    return {
        "examples": len(rows),
        "steps": len(steps.times),
        "real_tokens": real_tokens,
        "padded_tokens": counted["padded"],
        "wall_s": wall,
        "time_s": used,
        "clock": "wall" if cuda else "cpu",
        "step_s": statistics.median(step_times),
        "tokens_per_s": real_tokens / used,
        "peak_mem_mb": (torch.cuda.max_memory_allocated() / 2**20)
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_train_mb": rss_before,
        "train_loss": out.training_loss,
        "activation_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
    }


def run_one(args: argparse.Namespace, name: str, overrides: dict[str, Any], model_dir: Path, rows: Path) -> dict:
    spec = {
        "model_dir": str(model_dir), "rows": str(rows), "overrides": overrides, "device": args.device,
        "dtype": args.dtype, "method": args.method, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "max_length": args.max_length, "seed": args.seed, "threads": args.threads, "out_dir": tempfile.mkdtemp(prefix="bench-train-"),
    }  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        print(f"  {name}: FAILED (exit {proc.returncode})\n{tail}", flush=True)
        return {"error": tail.splitlines()[-1] if tail else f"exit {proc.returncode}"}
    res = json.loads(lines[-1][len("BENCH_RESULT ") :])
    print(f"  {name}: {res['tokens_per_s']:.1f} real tok/s, {res['clock']} {res['time_s']:.2f} s", flush=True)
    return res


# --- main ---------------------------------------------------------------------------------------------------


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="tiny", help="`emsweep model init` shape (tiny, Qwen2.5-0.5B-Instruct, ...)")
    p.add_argument("--model-dir", type=Path, help="reuse/keep the built model here (default: a temp folder)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--method", choices=["lora", "full"], default="lora")
    p.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    p.add_argument("--examples", type=int, default=64, help="training examples (one epoch)")
    p.add_argument("--batch-size", type=int, default=2, help="per-device batch (the recipes' 2)")
    p.add_argument("--grad-accum", type=int, default=8, help="gradient accumulation (the LoRA recipe's 8)")
    p.add_argument("--max-length", type=int, default=2048, help="sft.max_length (the recipes' 2048)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the median is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (1: CPU time = compute time)")
    p.add_argument("--only", nargs="*", help="configuration names to run (TRL's defaults always run)")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument("--measure-lengths", action="store_true", help="print LENGTHS measured from the data and exit")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.worker:
        print("BENCH_RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    if args.measure_lengths:
        lengths, source = measure_lengths()
        print(f"# {source}\nLENGTHS = {json.dumps(lengths)}")
        return 0
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    lengths, source = LENGTHS, LENGTHS_SOURCE

    from emsweep.train.model_init import init_model

    root = Path(tempfile.mkdtemp(prefix="emsweep-bench-train-"))
    model_dir = args.model_dir or root / f"model-{args.shape}"
    if not (model_dir / "config.json").exists():
        print(f"emsweep model init --shape {args.shape} -> {model_dir}", flush=True)
        init_model(args.shape, model_dir, seed=args.seed, dtype=args.dtype if args.dtype != "float16" else None)
    rows_path = root / "train.jsonl"
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(args.examples, args.seed, lengths)))

    configs = configurations(args)
    results: dict[str, list[dict]] = {name: [] for name, _, skip in configs if not skip}
    load_before = load_average()
    for r in range(args.repeats):
        print(f"round {r + 1}/{args.repeats}", flush=True)
        for name, overrides, skip in configs:
            if not skip:
                results[name].append(run_one(args, name, overrides, model_dir, rows_path))
    load_after = load_average()

    def median(name: str, key: str) -> float | None:
        vals = [x[key] for x in results.get(name, []) if key in x]
        return statistics.median(vals) if vals else None

    base_tps, base_time = median("trl-defaults", "tokens_per_s"), median("trl-defaults", "time_s")
    table = []
    for name, _overrides, skip in configs:
        if skip:
            table.append([name, "-", "-", "-", "-", "-", "-", f"skipped: {skip}"])
            continue
        tps = median(name, "tokens_per_s")
        if tps is None:
            err = next((x["error"] for x in results[name] if "error" in x), "failed")
            table.append([name, "-", "-", "-", "-", "-", "-", f"failed: {err[:80]}"])
            continue
        spread = [x["tokens_per_s"] for x in results[name] if "tokens_per_s" in x]
        first = next(x for x in results[name] if "tokens_per_s" in x)
        table.append([
            name, f"{first['real_tokens']}/{first['padded_tokens']}", f"{tps:.1f}",
            f"{median(name, 'step_s'):.3f}", f"{median(name, 'time_s'):.2f}", f"{median(name, 'peak_mem_mb'):.0f}",
            f"{tps / base_tps:.2f}" if base_tps else "-",
            f"time {median(name, 'time_s') / base_time:.2f}x, wall {median(name, 'wall_s'):.1f} s, {first['steps']} steps, "
            f"tok/s range {min(spread):.0f}-{max(spread):.0f}, loss {first['train_loss']:.4f}",
        ])  # fmt: skip
    info = {
        "shape": args.shape, "device": args.device, "dtype": args.dtype, "method": args.method,
        "examples": args.examples, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "max_length": args.max_length, "repeats": args.repeats, "seed": args.seed, "lengths_source": source,
        "hardware": hardware(args.device), "versions": versions(("torch", "transformers", "trl", "peft",
        "accelerate", "liger-kernel", "flash-attn")), "date": utc_now(), "load_average": [load_before, load_after],
    }  # fmt: skip
    print()
    print(
        f"shape {args.shape}, {args.device} {args.dtype}, {args.method}, {args.examples} examples x 1 epoch, "
        f"batch {args.batch_size} x accum {args.grad_accum}, max_length {args.max_length}, seed {args.seed}, "
        f"median of {args.repeats} interleaved round(s)" + (f", {args.threads} torch thread(s)" if args.device == "cpu" else "")
    )
    print(f"data: synthetic, word lengths of the {source}")
    print(f"hardware: {info['hardware']}; load average before/after: {load_before} / {load_after}")
    print(f"versions: {info['versions']}; {info['date']}")
    print()
    t = "wall" if args.device == "cuda" else "CPU"
    header = ["configuration", "real/padded tokens", f"real tokens/{t} s", f"step {t} s", f"epoch {t} s", "peak MB",
              "tokens/s ratio", "notes"]  # fmt: skip
    print(markdown_table(header, table))
    if args.json:
        args.json.write_text(json.dumps({"info": info, "configs": {n: o for n, o, _ in configs},
                                         "results": results}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
