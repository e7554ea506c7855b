"""The fair Trainer baseline of benchmarks/train_throughput.py: same tensors, same optimizer, steady-state clock."""

import importlib.util
import math
from pathlib import Path

import pytest


def _bench(name: str):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_clock_and_spread():
    bench = _bench("train_throughput")
    clock = bench.StepClock(lambda records: records)
    clock.marks = [(float(i), 2.0 * i) for i in range(12)]  # one call per step (+1 look-ahead), 1 s / 2 CPU-s each
    assert clock.per_step(skip=2, steps=10) == (1.0, 2.0)
    assert all(math.isnan(x) for x in clock.per_step(skip=9, steps=10))  # too short: no steady state
    assert bench.spread([3.0, float("nan"), 1.0, 2.0]) == (2.0, 1.0, 3.0)


@pytest.mark.slow
def test_fair_baseline_same_batches_and_optimizer(smoke_params, smoke_model_dir, capsys):
    bench = _bench("train_throughput")
    summary = bench.main(["--profile", "smoke", "--cache", smoke_params.paths.cache, "--methods", "ia3",
                          "--steps", "3", "--long-steps", "6", "--skip", "1", "--batch-size", "4", "--records", "16",
                          "--held-out", "4", "--repeats", "1", "--log-every", "1"])
    out = capsys.readouterr().out
    assert "steady" in out and "out of box" in out
    row = summary["ia3"]
    assert row["same_batches"] is True  # the per-batch processor and the prepared collator: identical tensors
    opt = row["optimizer"]
    assert opt["project"] == opt["fair"] and "fused=None" in opt["fair"]  # same AdamW class and settings
    assert "fused=True" in opt["oob"]  # Trainer's default on torch >= 2.8
    for key in ("short", "long", "steady"):
        med, lo, hi = row[key]["wall"]
        assert lo <= med <= hi and med > 0
    assert row["held_out"]["trainer"] == pytest.approx(row["held_out"]["trainer"])


@pytest.mark.slow
def test_eval_benchmark_medians_and_identical_predictions(smoke_params, smoke_model_dir, capsys):
    bench = _bench("eval_throughput")
    out = bench.main(["--profile", "smoke", "--cache", smoke_params.paths.cache, "--n", "4", "--repeats", "2",
                      "--threads", "1"])
    assert "ratio batched / one-at-a-time" in capsys.readouterr().out
    assert out["identical"] == out["n"] == 4  # batched and one-at-a-time greedy decoding agree item for item
    med, lo, hi = out[1]["ratio"]
    assert 0 < lo <= med <= hi


@pytest.mark.slow
def test_sweep_scaling_benchmark_times_both_sides(smoke_params, smoke_model_dir, capsys):
    bench = _bench("sweep_scaling")
    out = bench.main(["--profile", "smoke", "--cache", smoke_params.paths.cache, "--runs", "2", "--rounds", "1",
                      "--test-size", "4"])
    printed = capsys.readouterr().out
    assert len(out["ratios"]) == 1 and out["ratios"][0] > 0 and len(out["per_minute"][2]) == 1
    assert "throughput ratio 2 / 1 workers: median" in printed
