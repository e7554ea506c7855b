"""Sweeps: expansion, skipping finished runs, atomic claims, failures recorded and skipped over, the results table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mllm_study.config import ConfigError, load_params
from mllm_study.results import collect_results
from mllm_study.sweep import claim_run, expand_sweep, parse_shard, plan_sweep, release_run, run_sweep


def _params(tmp_path, smoke_params, sweep_yaml: str, runs="runs"):
    f = tmp_path / "sweep.yaml"
    f.write_text("profile: smoke\nrun:\n  test_size: 8\n  train_size: 16\n" + sweep_yaml)
    return load_params(f, overrides={"paths.cache": smoke_params.paths.cache, "paths.runs": str(tmp_path / runs)})


def test_expand_grid_and_grids(tmp_path, smoke_params):
    p = _params(tmp_path, smoke_params, "sweep:\n  grids:\n    - {method: [lora], method_params: [{r: 2}, {r: 4}]}\n"
                                        "    - {method: [none], seed: [1, 2, 1]}\n")
    runs = expand_sweep(p)
    assert [(r.run.method, r.run.method_params, r.run.seed) for r in runs] == [
        ("lora", {"r": 2}, 42), ("lora", {"r": 4}, 42), ("none", {}, 1), ("none", {}, 2)]  # duplicate seed dropped


@pytest.mark.parametrize("yaml_text, message", [
    ("sweep:\n  grid: {methd: [lora]}\n", r"unknown run key 'methd'.*Did you mean 'method'"),
    ("sweep:\n  grid: {seed: 3}\n", r"sweep.grid.seed must be a non-empty list"),
    ("sweep:\n  grid: {connector: [frozen, half]}\n", r"sweep combination \{'connector': 'half'\}"),
    ("sweep:\n  cross: {seed: [1]}\n", r"sweep: unknown key"),
])
def test_bad_sweeps_are_clear(tmp_path, smoke_params, yaml_text, message):
    with pytest.raises(ConfigError, match=message):
        expand_sweep(_params(tmp_path, smoke_params, yaml_text))


def test_shards_partition_the_sweep(tmp_path, smoke_params, smoke_model_dir):
    p = _params(tmp_path, smoke_params, "sweep:\n  grid: {method: [none], seed: [1, 2, 3, 4, 5]}\n")
    all_ids = [rid for rid, _ in plan_sweep(p)]
    parts = [[rid for rid, _ in plan_sweep(p, (i, 2))] for i in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(all_ids) and not set(parts[0]) & set(parts[1])
    assert parse_shard("1/3") == (1, 3)
    with pytest.raises(ConfigError, match="need 0 <= i < n"):
        parse_shard("3/3")


def test_claims_are_exclusive_and_dead_claims_are_taken_over(tmp_path):
    assert claim_run(tmp_path, "r1")
    assert not claim_run(tmp_path, "r1")  # held by a live process (us)
    release_run(tmp_path, "r1")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import platform

    (tmp_path / ".claims" / "r2").write_text(json.dumps({"pid": int(dead.stdout), "host": platform.node()}))
    assert claim_run(tmp_path, "r2")  # its holder is gone


def test_sweep_runs_skips_and_survives_a_failing_run(tmp_path, smoke_params, smoke_model_dir):
    # the second lr diverges (loss or weights -> inf/NaN): recorded as failed with its step, the sweep goes on
    import io
    import re

    p = _params(tmp_path, smoke_params, "sweep:\n  grid: {method: [lora], epochs: [3], lr: [1.0e-3, 1.0e30]}\n")
    lines = io.StringIO()
    summary = run_sweep(p, progress=False, stream=lines)
    assert len(summary.ran) == 1 and len(summary.failed) == 1
    # one progress line per run: done/total over the sweep, the run's seconds and score (or failure), elapsed, ETA
    out = [x for x in lines.getvalue().splitlines() if x.startswith("[")]
    assert len(out) == 2 and "\r" not in lines.getvalue()
    assert [x[:5] for x in out] == ["[1/2]", "[2/2]"]  # ended runs, failures included, in either order
    ok = next(x for x in out if "failed" not in x)
    assert re.fullmatch(r"\[\d/2\] \S+ \d+\.\d s, iconqa_txt accuracy \d\.\d{3} "
                        r"\| elapsed \d+:\d\d, ETA \d+:\d\d", ok), ok
    assert re.fullmatch(r"\[\d/2\] \S+ \d+\.\d s, failed: TrainingDiverged: .* \| elapsed \d+:\d\d, ETA \d+:\d\d",
                        next(x for x in out if "failed" in x))
    (bad,) = summary.failed
    status = json.loads((tmp_path / "runs" / bad / "status.json").read_text())
    assert status["status"] == "failed" and "TrainingDiverged" in status["reason"] and status["step"] >= 1
    again = run_sweep(p, progress=False)
    assert again.skipped == summary.ran and set(again.failed) == {bad}  # done skipped, failed retried
    table, report = collect_results(tmp_path / "runs")
    assert report.used == 1 and report.skipped == {bad: "failed"}
    assert set(table["metric"]) == {"accuracy"} and table["lr"].tolist() == [1e-3]
    assert not (tmp_path / "runs" / ".claims" / bad).exists()


def test_sweep_cli_prints_status_and_table(tmp_path, smoke_params, smoke_model_dir, capsys):
    from mllm_study.cli import main

    f = tmp_path / "s.yaml"
    f.write_text("profile: smoke\nrun:\n  test_size: 8\nsweep:\n  grid: {method: [none], dataset: [vqav2, ocrvqa]}\n")
    args = ["sweep", str(f), "--quiet", "--set", f"paths.cache={smoke_params.paths.cache}",
            "--set", f"paths.runs={tmp_path / 'runs'}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sweep done 0, failed 0, running 0, remaining 2" in out
    assert "sweep done 2, failed 0, running 0, remaining 0" in out
    assert "vqa_score" in out and "ocrvqa" in out
    assert main(args + ["--status"]) == 0
    assert "sweep done 2" in capsys.readouterr().out


def test_sweep_command_uses_the_profile_block_of_a_research_question_file():
    from mllm_study.config import load_params
    from mllm_study.study import rq_params, sweep_params

    path = "params/rq1_main.yaml"
    runs = expand_sweep(sweep_params(path, "smoke", {}))
    assert [r.run for r in runs] == [r.run for r in expand_sweep(rq_params(path, "smoke"))]
    assert len(runs) == 12  # the smoke block: lora x2 connectors x2 datasets + ia3/adapter/prefix/none x2 datasets
    assert len(runs) != len(expand_sweep(load_params(path, "smoke")))  # the file's top-level (paper) design
    assert all(r.run.train_size == 16 for r in runs)


def test_run_cost_ranks_the_quick_studys_per_epoch_evaluations_as_the_long_runs_they_are():
    """Workers take runs longest first by :func:`run_cost`. RQ6's 12-epoch runs evaluate six columns after every
    epoch (29-38 s measured) and must rank above RQ1's plain LoRA runs (24 s), and RQ1's Flickr30k runs (POPE and
    captions after each of 16 epochs, 63 s) above both; with the evaluation counted once, RQ6's ran last."""
    from mllm_study import study
    from mllm_study.config import PARAMS_DIR
    from mllm_study.sweep import expand_sweep, run_cost

    def runs(name):
        return expand_sweep(study.rq_params(PARAMS_DIR / f"{name}.yaml", "quick"))

    rq6 = [p for p in runs("rq6_generalization") if p.run.method == "lora"]
    rq1 = runs("rq1_main")
    plain = [p for p in rq1 if p.run.method == "lora" and not p.run.eval_every_epoch]
    flickr = [p for p in rq1 if p.run.method == "lora" and p.run.dataset == "flickr30k"]
    assert rq6 and plain and flickr
    assert min(map(run_cost, rq6)) > max(map(run_cost, plain))
    assert min(map(run_cost, flickr)) > max(map(run_cost, rq6))
    zero_shot = [p for p in rq1 if p.run.method == "none"]
    assert max(map(run_cost, zero_shot)) < min(run_cost(p) for p in rq1 if p.run.method != "none")
