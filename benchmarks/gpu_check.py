"""GPU check: LLaVA-1.5-7B's architecture with random bfloat16 weights, per method: training tokens/s, peak memory,
achieved FLOP/s (and its share of the device's peak), and batched vs one-at-a-time generation.

    python benchmarks/gpu_check.py                       # on a GPU: the real 7B shapes (needs ~40 GB for full FT)
    python benchmarks/gpu_check.py --methods lora,ia3 --steps 10 --batch-size 8 --peak-tflops 989
    python benchmarks/gpu_check.py --tiny                # seconds on a CPU (the test suite runs this)

The architecture comes from ``mllm_study/configs/llava-1.5-7b.json`` (the hub config, no download); ``--tiny``
scales it down (hidden 64, 2 layers, 28-pixel images) keeping every module type. Weights are random: this measures
speed and memory, not quality. Trainable weights are fp32 master weights over the bf16 base (as in a run).

FLOPs per trained token (the convention of mllm_study/accounting.py, Kaplan et al.): forward ``2 N`` plus a backward
``2 N`` for the activation gradients and ``2 N_trainable`` for the weight gradients (N = language-model parameters;
the vision tower's share is per image and left out, so the figure is a lower bound). Achieved share = achieved FLOP/s
over ``--peak-tflops`` (default: H100/H200 dense bf16, 989 TFLOP/s; on CPU no share is reported).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("lora", "ia3", "prefix", "adapter", "full")


def build(tiny: bool, dtype: torch.dtype, device: str):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from mllm_study.accounting import load_model_config

    config = load_model_config("llava-1.5-7b")
    if tiny:
        config = LlavaConfig(
            vision_config=dict(image_size=28, patch_size=14, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=2, projection_dim=32),
            text_config=dict(model_type="llama", vocab_size=320, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                             max_position_embeddings=512),
            image_token_index=300, pad_token_id=0, vision_feature_layer=-2,
            vision_feature_select_strategy="default", projector_hidden_act="gelu")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype)
    return model, config


def batch_for(config, batch_size: int, text_len: int, device: str) -> dict[str, torch.Tensor]:
    """Random prompts: image tokens (as the processor expands them) + text; labels on the last 8 tokens."""
    vision = config.vision_config
    n_image = (vision.image_size // vision.patch_size) ** 2
    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, min(config.text_config.vocab_size, config.image_token_index) - 1,
                         (batch_size, text_len), generator=g)
    ids = torch.cat([torch.full((batch_size, n_image), config.image_token_index), text], dim=1)
    labels = torch.full_like(ids, -100)
    labels[:, -8:] = ids[:, -8:]
    pixels = torch.randn(batch_size, 3, vision.image_size, vision.image_size, generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "pixel_values": pixels.to(device), "labels": labels.to(device)}


def _peak(device: str) -> tuple[float, str]:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_rss"


def check_method(method: str, args, device: str) -> dict:
    from mllm_study.methods.registry import apply_method
    from mllm_study.train import forward_inputs, precision_context

    model, config = build(args.tiny, torch.bfloat16, device)
    params = {"num_virtual_tokens": 4} if args.tiny and method == "prefix" else {}
    if args.tiny and method == "lora":
        params = {"r": 8, "alpha": 16}
    if args.tiny and method == "adapter":
        params = {"bottleneck_size": 16}
    model = apply_method(model, method, params, connector="tuned" if method not in ("full", "prefix") else "frozen")
    if args.gradient_checkpointing and method != "prefix":
        from mllm_study.train import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_lm = sum(p.numel() for n, p in model.named_parameters() if "language_model" in n or "lm_head" in n)
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    batch = batch_for(config, args.batch_size, args.text_len, device)
    tokens_per_step = int(batch["attention_mask"].sum())
    model.train()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = 0.0
    for step in range(args.warmup + args.steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with precision_context(model):
            loss = model(**forward_inputs(model, batch)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= args.warmup:
            seconds += time.perf_counter() - start
    if not torch.isfinite(loss):
        raise RuntimeError(f"{method}: loss became {float(loss)}")
    peak, kind = _peak(device)
    tokens = tokens_per_step * args.steps
    flops = tokens * (4 * n_lm + 2 * n_trainable)
    row = {"method": method, "trainable": n_trainable, "lm_params": n_lm, "tokens_per_second": tokens / seconds,
           "peak_memory_mb": round(peak, 1), "peak_memory_kind": kind, "tflops_per_second": flops / seconds / 1e12,
           "final_loss": loss.item()}
    if device.startswith("cuda"):
        row["achieved_share"] = row["tflops_per_second"] / args.peak_tflops
    row.update(generation(model, config, args, device))
    return row


@torch.no_grad()
def generation(model, config, args, device: str) -> dict:
    """Greedy generation of ``--gen-tokens`` for ``--gen-batch`` prompts: one batched call vs one call each."""
    from mllm_study.train import precision_context

    model.eval()
    batch = batch_for(config, args.gen_batch, args.text_len, device)
    batch.pop("labels")
    kwargs = {"max_new_tokens": args.gen_tokens, "min_new_tokens": args.gen_tokens, "do_sample": False,
              "pad_token_id": 0}
    timings = {}
    for mode in ("batched", "one_at_a_time"):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with precision_context(model):
            if mode == "batched":
                model.generate(**batch, **kwargs)
            else:
                for i in range(args.gen_batch):
                    model.generate(**{k: v[i:i + 1] for k, v in batch.items()}, **kwargs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        timings[mode] = time.perf_counter() - start
    return {"generate_batched_s": timings["batched"], "generate_one_at_a_time_s": timings["one_at_a_time"],
            "generate_speedup": timings["one_at_a_time"] / timings["batched"]}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the scaled-down architecture (CPU, seconds)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--gen-batch", type=int, default=8)
    parser.add_argument("--gen-tokens", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 peak")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        print("no GPU: the 7B shapes would take hours on a CPU; pass --tiny for the scaled-down check",
              file=sys.stderr)
        return []
    rows = []
    print(f"device {device}, {'tiny' if args.tiny else 'LLaVA-1.5-7B'} architecture, random bf16 weights, "
          f"batch {args.batch_size} x {args.text_len} text tokens, {args.steps} steps")
    print(f"{'method':8} {'trainable':>12} {'tok/s':>10} {'peak MiB':>10} {'TFLOP/s':>9} {'share':>7} "
          f"{'gen batched s':>14} {'gen 1-by-1 s':>13} {'speedup':>8}")
    for method in args.methods.split(","):
        row = check_method(method, args, device)
        rows.append(row)
        share = f"{row['achieved_share']:.1%}" if "achieved_share" in row else "-"
        print(f"{method:8} {row['trainable']:>12,} {row['tokens_per_second']:>10.1f} {row['peak_memory_mb']:>10.1f} "
              f"{row['tflops_per_second']:>9.4f} {share:>7} {row['generate_batched_s']:>14.3f} "
              f"{row['generate_one_at_a_time_s']:>13.3f} {row['generate_speedup']:>7.2f}x")
        if device == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
