"""Batched evaluation vs one-sample-at-a-time generation (the LLaVA eval scripts' loop), side by side.

Usage: ``python benchmarks/eval_throughput.py --profile quick --dataset vqav2 --n 200``

Both paths use the same pre-trained tiny model, test items and greedy decoding; the script prints items/s of each,
their ratio (paired per round: median [min-max] of ``--repeats`` rounds, wall clock and main-thread CPU time), for
one and two torch threads alternating in the same process, and checks the predictions are identical.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mllm_study.config import load_params  # noqa: E402
from mllm_study.data import Collator, load_dataset_info, load_split  # noqa: E402
from mllm_study.evaluate import generate_predictions  # noqa: E402
from mllm_study.models import load_model  # noqa: E402
from mllm_study.runs import resolve_dataset  # noqa: E402


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


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--cache", default=None, help="world/model cache folder (default: the profile's paths.cache)")
    ap.add_argument("--dataset", default="vqav2")
    ap.add_argument("--n", type=int, default=200, help="test items")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each alternates the paths and thread counts")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, min(2, os.cpu_count() or 1)],
                    help="torch thread counts to measure (alternating inside each round)")
    args = ap.parse_args(argv)
    params = load_params(profile=args.profile, overrides={"paths.cache": args.cache} if args.cache else {})
    model, processor = load_model("tiny-llava", params)
    ds = resolve_dataset(args.dataset, params)
    info = load_dataset_info(ds)
    records = load_split(ds, "test")[: args.n]
    max_new = info.get("max_new_tokens", 16)
    thread_counts = list(dict.fromkeys(args.threads))
    paths = ("batched", "one-at-a-time")
    times = {(t, k): [] for t in thread_counts for k in paths}
    cpu = {(t, k): [] for t in thread_counts for k in paths}
    same: list[int] = []
    from mllm_study.data import clear_encoding_cache

    print(f"start: {_load()}")
    for _ in range(args.repeats):
        for n in thread_counts:
            torch.set_num_threads(n)
            preds = {}
            for k in paths:
                clear_encoding_cache()  # both paths start cold: each repeat pre-processes every item again
                t, c = time.perf_counter(), time.thread_time()
                if k == "batched":
                    preds[k] = generate_predictions(model, processor, records, max_new, args.batch_size,
                                                    progress=False)
                else:
                    preds[k] = one_at_a_time(model, processor, records, max_new)
                times[(n, k)].append(time.perf_counter() - t)
                cpu[(n, k)].append(time.thread_time() - c)
            same.append(sum(a == b for a, b in zip(preds["batched"], preds["one-at-a-time"])))
    print(f"dataset {args.dataset}, {len(records)} items, max_new_tokens {max_new}, batch {args.batch_size}, "
          f"{args.repeats} rounds (paths and thread counts alternating); median [min-max]")
    out: dict = {"identical": min(same), "n": len(records)}
    for n in thread_counts:
        for k in paths:
            rates = sorted(len(records) / s for s in times[(n, k)])
            print(f"  {n} thread{'s' if n > 1 else ' '} {k:14s} {statistics.median(rates):8.1f} items/s "
                  f"[{rates[0]:.1f}-{rates[-1]:.1f}]")
        ratio = sorted(o / b for b, o in zip(times[(n, "batched")], times[(n, "one-at-a-time")]))  # paired per round
        cpu_ratio = sorted(o / b for b, o in zip(cpu[(n, "batched")], cpu[(n, "one-at-a-time")]))
        print(f"  {n} thread{'s' if n > 1 else ' '} ratio batched / one-at-a-time: {statistics.median(ratio):.1f}x "
              f"[{ratio[0]:.1f}-{ratio[-1]:.1f}]  (main thread CPU-s: {statistics.median(cpu_ratio):.1f}x "
              f"[{cpu_ratio[0]:.1f}-{cpu_ratio[-1]:.1f}])")
        out[n] = {"ratio": (statistics.median(ratio), ratio[0], ratio[-1]),
                  "cpu_ratio": (statistics.median(cpu_ratio), cpu_ratio[0], cpu_ratio[-1])}
    print(f"  identical predictions: {min(same)}/{len(records)} (worst round)")
    print(f"end: {_load()}")
    return out


if __name__ == "__main__":
    main()
