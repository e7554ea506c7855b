"""How busy a study kept its workers: occupancy of the run folders' start/finish times.

Usage: python benchmarks/study_timeline.py RUNS [RUNS ...] [--workers 2] [--gap 60]

For each runs folder, from every run's ``status.json`` (``started``/``finished``, one-second resolution): the span
from the first start to the last finish, the runs' summed time (worker-seconds of training and evaluation), the
seconds in which no run and in which fewer runs than workers were going, and the packing: summed time / (workers x
span), 1.0 when no worker ever waited. A pause of more than ``--gap`` seconds with no run (another study, a
session's break) splits the folder into studies; the last one is reported. The base model's zero-shot runs
(method none) count like any other.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path


def intervals(runs: Path) -> list[tuple[float, float, str]]:
    out = []
    for status in runs.glob("*/status.json"):
        try:
            s = json.loads(status.read_text())
            a = dt.datetime.fromisoformat(s["started"]).timestamp()
            b = dt.datetime.fromisoformat(s["finished"]).timestamp()
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if s.get("status") == "done":
            out.append((a, b, status.parent.name))
    return sorted(out)


def last_study(rows: list[tuple[float, float, str]], gap: float) -> list[tuple[float, float, str]]:
    start, end = 0, rows[0][1] if rows else 0.0
    for k, (a, b, _) in enumerate(rows):
        if a - end > gap:
            start = k
        end = max(end, b)
    return rows[start:]


def occupancy(rows: list[tuple[float, float, str]], workers: int) -> dict:
    t0, t1 = rows[0][0], max(b for _, b, _ in rows)
    idle = short = 0
    for t in range(int(t0), int(t1)):
        active = sum(a <= t + 0.5 < b for a, b, _ in rows)
        idle += active == 0
        short += active < workers
    busy = sum(b - a for a, b, _ in rows)
    return {"runs": len(rows), "span": t1 - t0, "busy": busy, "idle": idle, "short": short,
            "packing": busy / (workers * (t1 - t0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--gap", type=float, default=60.0)
    args = ap.parse_args()
    print(f"{'runs folder':40s} {'runs':>5s} {'span s':>7s} {'busy s':>7s} {'none running s':>15s} "
          f"{'< workers s':>12s} {'packing':>8s}")
    for runs in args.runs:
        rows = last_study(intervals(runs), args.gap)
        if not rows:
            print(f"{str(runs):40s} no finished runs")
            continue
        o = occupancy(rows, args.workers)
        print(f"{str(runs):40s} {o['runs']:5d} {o['span']:7.0f} {o['busy']:7.0f} {o['idle']:15d} {o['short']:12d} "
              f"{o['packing']:8.3f}")


if __name__ == "__main__":
    main()
