"""What keeping freed memory in the process (:func:`mllm_study.process.keep_freed_memory`) buys a whole run.

Usage: ``python benchmarks/allocator.py --repeats 3`` (after ``mllm-study pretrain --profile quick``)

Each sample is one ``mllm-study run`` in its own process (the quick profile's LoRA on IconQA-txt, 600 training
records, connector tuned, the validation split: what a calibration run does), with glibc's default allocator
behaviour (``MLLM_STUDY_KEEP_FREED_MEMORY=0``) or with the project's setting, alternating (A B A B ...). Two
layouts: ``solo`` (one run at a time, the other core idle) and ``pair`` (two runs at once, one per core, as a
study's two workers run). Printed per variant: the training seconds the run recorded (``metrics.json``:
``train.seconds``), the process's minor page faults and its wall time, each the median of the repeats with
[min-max], and the ratio default / kept per repeat (median).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _command(args, runs_dir: Path, seed: int) -> list[str]:
    exe = Path(sys.executable).with_name("mllm-study")
    return [str(exe), "run", "--profile", args.profile, "--quiet", "--dataset", args.dataset, "--method", args.method,
            "--connector", "tuned", "--train-size", str(args.train_size), "--test-size", "200",
            "--seed", str(seed), "--set", "run.eval_split=val", "--set", f"paths.runs={runs_dir}", "--force"]


def _launch(args, keep: bool, seed: int, scratch: Path) -> tuple[subprocess.Popen, Path, float]:
    runs_dir = Path(tempfile.mkdtemp(dir=scratch))
    env = {**os.environ, "MLLM_STUDY_KEEP_FREED_MEMORY": "1" if keep else "0", "MLLM_STUDY_THREADS": "1"}
    with open(runs_dir / "stderr.txt", "w") as err:  # a file, not a pipe: a full pipe would block the child
        proc = subprocess.Popen(_command(args, runs_dir, seed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=err)
    return proc, runs_dir, time.perf_counter()


def _finish(proc: subprocess.Popen, runs_dir: Path, started: float) -> dict:
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the run failed:\n{(runs_dir / 'stderr.txt').read_text()[-2000:]}")
    metrics = json.loads(next(runs_dir.glob("*/metrics.json")).read_text())
    return {"train": metrics["train"]["seconds"], "faults": usage.ru_minflt, "wall": wall}


def sample(args, keep: bool, layout: str, scratch: Path) -> dict:
    """One measurement: one run (solo) or two at once (pair, the figures averaged over the two)."""
    seeds = [42] if layout == "solo" else [21, 63]
    launched = [_launch(args, keep, s, scratch) for s in seeds]
    results = [_finish(*item) for item in launched]
    return {k: statistics.mean(r[k] for r in results) for k in results[0]}


def _spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--dataset", default="iconqa_txt")
    ap.add_argument("--method", default="lora")
    ap.add_argument("--train-size", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layouts", nargs="+", default=["solo", "pair"], choices=["solo", "pair"])
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="allocator-") as tmp:
        scratch = Path(tmp)
        for layout in args.layouts:
            got: dict[bool, list[dict]] = {False: [], True: []}
            for _ in range(args.repeats):
                for keep in (False, True):
                    got[keep].append(sample(args, keep, layout, scratch))
            what = "one run" if layout == "solo" else "two runs at once"
            print(f"\n{args.method} on {args.dataset}, {layout} ({what}), median [min-max] of {args.repeats}")
            for keep, label in ((False, "glibc default"), (True, "freed memory kept")):
                rows = got[keep]
                print(f"  {label:18s} train {_spread([r['train'] for r in rows], '.2f')} s, "
                      f"minor faults {_spread([r['faults'] / 1000 for r in rows], '.0f')}k, "
                      f"wall {_spread([r['wall'] for r in rows], '.1f')} s")
            ratios = [a["train"] / b["train"] for a, b in zip(got[False], got[True])]
            print(f"  training-time ratio default / kept: median {statistics.median(ratios):.3f} "
                  f"[{min(ratios):.3f}-{max(ratios):.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
