"""Batched evaluation vs one-sample-at-a-time generation (the LLaVA eval scripts' loop), side by side.

Usage: ``python benchmarks/eval_throughput.py --profile quick --dataset vqav2 --n 200``

Both paths use the same pre-trained tiny model, test items and greedy decoding; the script prints items/s of each,
their ratio, and checks the predictions are identical.
"""

from __future__ import annotations

import argparse
import time

import torch

from mllm_study.config import load_params
from mllm_study.data import Collator, load_dataset_info, load_split
from mllm_study.evaluate import generate_predictions
from mllm_study.models import load_model
from mllm_study.runs import resolve_dataset


@torch.no_grad()
def one_at_a_time(model, processor, records, max_new_tokens):
    """The reference loop: process one item, generate, decode, next (as LLaVA's model_vqa.py does)."""
    collator = Collator(processor, mode="generate", cache=False)
    tok = processor.tokenizer
    out = []
    for rec in records:
        batch = collator([rec])
        ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=collator.pad_id, eos_token_id=tok.eos_token_id, use_cache=True)
        out.append(tok.decode(ids[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--dataset", default="vqav2")
    ap.add_argument("--n", type=int, default=200, help="test items")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="alternate the two paths this many times")
    ap.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(profile=args.profile)
    model, processor = load_model("tiny-llava", params)
    ds = resolve_dataset(args.dataset, params)
    info = load_dataset_info(ds)
    records = load_split(ds, "test")[: args.n]
    max_new = info.get("max_new_tokens", 16)
    times = {"batched": [], "one-at-a-time": []}
    preds = {}
    from mllm_study.data import clear_encoding_cache

    for _ in range(args.repeats):
        clear_encoding_cache()  # both paths start cold: each repeat pre-processes every item again
        t = time.perf_counter()
        preds["batched"] = generate_predictions(model, processor, records, max_new, args.batch_size, progress=False)
        times["batched"].append(time.perf_counter() - t)
        t = time.perf_counter()
        preds["one-at-a-time"] = one_at_a_time(model, processor, records, max_new)
        times["one-at-a-time"].append(time.perf_counter() - t)
    rate = {k: len(records) / min(v) for k, v in times.items()}
    same = sum(a == b for a, b in zip(preds["batched"], preds["one-at-a-time"]))
    print(f"dataset {args.dataset}, {len(records)} items, max_new_tokens {max_new}, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()} (best of {args.repeats})")
    for k, r in rate.items():
        print(f"  {k:14s} {r:8.1f} items/s")
    print(f"  ratio batched / one-at-a-time: {rate['batched'] / rate['one-at-a-time']:.1f}x")
    print(f"  identical predictions: {same}/{len(records)}")


if __name__ == "__main__":
    main()
