"""Which skills the pre-trained tiny base model has, on its own pre-training items (README, "Base model").

Usage: ``python benchmarks/probe_base_model.py --profile quick``  (the profile's cached world and base model)

Prints exact-match accuracy of greedy answers on the seen families' pre-training split: VQAv2 per question type
(plain format) and the lettered-options format of VQAv2 and OKVQA (answer = the option letter). These are items the
model was trained on, so accuracy near chance means the skill was not learned at all, not that it fails to
generalise.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mllm_study.config import load_params  # noqa: E402
from mllm_study.data import load_split  # noqa: E402
from mllm_study.evaluate import generate_predictions  # noqa: E402
from mllm_study.models import ensure_world, load_checkpoint, pretrain_tiny_llava  # noqa: E402


def _kind(rec: dict) -> str:
    q = rec["scene"]["query"]
    return q["type"] + (f"/{q['sub']}" if "sub" in q else "")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--model", help="base model folder (default: the profile's pre-trained tiny-llava)")
    ap.add_argument("--n", type=int, default=600, help="plain VQAv2 items; 200 lettered items per family")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    params = load_params(profile=args.profile)
    world = ensure_world(params, progress=False)
    model, processor = load_checkpoint(args.model or pretrain_tiny_llava(params, world, progress=False))
    plain = [r for r in load_split(world / "vqav2", "pretrain") if "format" not in r][: args.n]
    preds = generate_predictions(model, processor, plain, 4, progress=False)
    hits = collections.defaultdict(list)
    for rec, pred in zip(plain, preds):
        hits[_kind(rec)].append(pred.strip().lower() == rec["conversations"][1]["value"].lower())
    print(f"VQAv2 pre-training items (plain format), exact match, n={len(plain)}")
    for kind in sorted(hits):
        print(f"  {kind:18s} n={len(hits[kind]):3d}  accuracy {sum(hits[kind]) / len(hits[kind]):.3f}")
    for family in ("vqav2", "okvqa"):
        letters = [r for r in load_split(world / family, "pretrain") if r.get("format") == "letters"][:200]
        preds = generate_predictions(model, processor, letters, 4, progress=False)
        acc = sum(p.strip().upper() == r["conversations"][1]["value"] for p, r in zip(preds, letters)) / len(letters)
        chance = sum(1 / len(r["choices"]) for r in letters) / len(letters)
        print(f"{family} lettered options (pre-training items): accuracy {acc:.3f}, chance {chance:.3f}, "
              f"n={len(letters)}")


if __name__ == "__main__":
    main()
