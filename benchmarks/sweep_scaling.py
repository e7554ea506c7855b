"""Does a study keep both cores busy? Throughput of a sweep of equal runs with one worker vs two, side by side.

Usage: ``python benchmarks/sweep_scaling.py [--profile quick] [--runs 8] [--rounds 2]``

Each round trains the same ``--runs`` LoRA runs (one per seed, the profile's train/test sizes on ``--dataset``)
into a fresh runs folder, once with one worker process and once with two (the study's default on two cores: one
torch thread each), alternating which goes first. It prints runs per minute of each side and their ratio per round,
then the median and [min-max] over rounds. The base model is pre-trained (or reused) first, in this process, as the
study does; it does not count. Issue 18's goal is a ratio >= 1.8 on two cores; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mllm_study.config import load_params  # noqa: E402
from mllm_study.models import ensure_world, pretrain_tiny_llava  # noqa: E402
from mllm_study.sweep import run_sweeps  # noqa: E402


def _sweep(profile: str, cache: str, runs: Path, n: int, dataset: str, test_size: int | None):
    overrides = {"paths.cache": cache, "paths.runs": str(runs), "run.method": "lora", "run.dataset": dataset}
    if test_size:
        overrides["run.test_size"] = test_size
    params = load_params(profile=profile, overrides=overrides)
    return dataclasses.replace(params, sweep={"grid": {"seed": list(range(1, n + 1))}})


def timed(params, workers: int) -> float:
    """Seconds to finish every run of ``params.sweep`` with ``workers`` processes (failures are an error)."""
    start = time.perf_counter()
    (summary,) = run_sweeps([params], workers, progress=False, stream=io.StringIO())
    seconds = time.perf_counter() - start
    if summary.failed or len(summary.ran) != len(params.sweep["grid"]["seed"]):
        raise RuntimeError(f"sweep did not finish cleanly: ran {len(summary.ran)}, failed {summary.failed}")
    return seconds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--cache", default=None, help="cache with the world and base model (default: the profile's)")
    ap.add_argument("--runs", type=int, default=8, help="equal runs per sweep (one per seed)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of 1 worker vs 2")
    ap.add_argument("--dataset", default="iconqa_txt")
    ap.add_argument("--test-size", type=int, default=None, help="test items per run (default: the profile's)")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLLM_STUDY_THREADS", "1")
    base = load_params(profile=args.profile, overrides={"paths.cache": args.cache} if args.cache else None)
    cache = str(Path(base.paths.cache).resolve())
    pretrain_tiny_llava(base, ensure_world(base, progress=False), progress=False)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {args.runs} LoRA runs on {args.dataset} per sweep "
          f"({args.profile} profile)")
    ratios, per_minute = [], {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="sweep-scaling-") as tmp:
        for r in range(args.rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            seconds = {}
            for workers in order:
                runs = Path(tmp) / f"r{r}-w{workers}"
                seconds[workers] = timed(_sweep(args.profile, cache, runs, args.runs, args.dataset, args.test_size),
                                         workers)
                per_minute[workers].append(60 * args.runs / seconds[workers])
            ratios.append(seconds[1] / seconds[2])
            print(f"round {r + 1}: 1 worker {seconds[1]:.1f} s, 2 workers {seconds[2]:.1f} s, "
                  f"ratio {ratios[-1]:.2f}")
    med = statistics.median(ratios)
    print(f"runs per minute: 1 worker {statistics.median(per_minute[1]):.2f}, "
          f"2 workers {statistics.median(per_minute[2]):.2f}; throughput ratio 2 / 1 workers: median {med:.2f} "
          f"[{min(ratios):.2f}-{max(ratios):.2f}] over {args.rounds} rounds (goal >= 1.8)")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return {"ratios": ratios, "median": med, "per_minute": per_minute}


if __name__ == "__main__":
    main()
