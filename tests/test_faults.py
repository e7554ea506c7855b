"""Faults and bad input: SIGKILL and Ctrl-C mid-sweep, concurrent workers, submitit arrays, two-process training,
determinism, and the catalogue of bad inputs (one clear message, non-zero exit, nothing left behind)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mllm_study.cli import main
from mllm_study.config import load_params

REPO = Path(__file__).resolve().parent.parent


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "MLLM_STUDY_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _sweep_file(tmp_path, grid="{method: [lora], seed: [1, 2, 3]}", extra=""):
    f = tmp_path / "sweep.yaml"
    f.write_text("profile: smoke\nrun:\n  train_size: 32\n  test_size: 8\n  epochs: 2\n" + extra
                 + f"sweep:\n  grid: {grid}\n")
    return f


def _cli(smoke_params, tmp_path, *args):
    return [sys.executable, "-m", "mllm_study", *args, "--set", f"paths.cache={smoke_params.paths.cache}",
            "--set", f"paths.runs={tmp_path / 'runs'}"]


def _wait_for(predicate, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _check_complete(runs: Path, n: int):
    dirs = [d for d in runs.iterdir() if not d.name.startswith(".")]
    assert len(dirs) == n  # every run exactly once
    for d in dirs:
        assert json.loads((d / "status.json").read_text())["status"] == "done"
        json.loads((d / "metrics.json").read_text())  # not corrupt
    assert not list(runs.glob(".*.tmp-*")), "temporary run folders left behind"
    assert not list((runs / ".claims").iterdir()), "claims left behind"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_sweep_resumes_and_finishes_every_run_once(tmp_path, smoke_params, smoke_model_dir, sig):
    f = _sweep_file(tmp_path)
    cmd = _cli(smoke_params, tmp_path, "sweep", str(f), "--quiet")
    # SIGINT at its default in the sweep: a test run started in the background of a non-interactive shell inherits
    # SIGINT ignored, and Python then never raises KeyboardInterrupt (the sweep would finish and exit 0)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    runs = tmp_path / "runs"
    # kill it in the middle of a run (its temporary folder exists)
    assert _wait_for(lambda: bool(list(runs.glob(".*.tmp-*/status.json"))) or proc.poll() is not None)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        # a shell reports 130 either way: the CLI's own exit code, or (seen once in CI, after the CLI had printed its
        # message) the interpreter ending itself with SIGINT
        assert proc.returncode in (130, -signal.SIGINT), err
        assert "interrupted" in err
        failed = [json.loads(p.read_text()) for p in runs.glob("*/status.json")]
        assert any(s["status"] == "failed" and "KeyboardInterrupt" in s["reason"] for s in failed)
        assert not list((runs / ".claims").iterdir())  # released on Ctrl-C
    else:
        assert proc.returncode == -signal.SIGKILL
    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    _check_complete(runs, 3)


@pytest.mark.slow
def test_two_workers_never_train_the_same_run(tmp_path, smoke_params, smoke_model_dir):
    f = _sweep_file(tmp_path, grid="{method: [lora], seed: [1, 2, 3, 4]}")
    cmd = _cli(smoke_params, tmp_path, "sweep", str(f), "--quiet")
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    trained = [re.findall(r"^\[\d+/\d+\] (\S+) \d+\.\d s, ", err, re.M) for _, err in outs]
    assert len(trained[0]) + len(trained[1]) == 4
    assert not set(trained[0]) & set(trained[1])
    _check_complete(tmp_path / "runs", 4)


@pytest.mark.slow
def test_sweep_with_local_workers_ends_without_tracebacks(tmp_path, smoke_params, smoke_model_dir):
    """`sweep --workers 2` (the CLI's pool): both runs done, and no worker prints a KeyboardInterrupt traceback at
    exit (the pool used to be terminated, SIGTERMing workers still in their exit handlers)."""
    f = _sweep_file(tmp_path, grid="{method: [lora], seed: [1, 2]}")
    out = subprocess.run(_cli(smoke_params, tmp_path, "sweep", str(f), "--quiet", "--workers", "2"), env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "KeyboardInterrupt" not in out.stderr, out.stderr[-3000:]
    _check_complete(tmp_path / "runs", 2)


@pytest.mark.slow
def test_submitit_job_array_runs_one_run_per_task(tmp_path, smoke_params, smoke_model_dir):
    f = _sweep_file(tmp_path, grid="{method: [none], dataset: [vqav2, okvqa]}")
    os.environ["MLLM_STUDY_THREADS"] = "1"
    code = main(["sweep", str(f), "--slurm", "--slurm-local", "--wait", "--quiet",
                 "--set", f"paths.cache={smoke_params.paths.cache}", "--set", f"paths.runs={tmp_path / 'runs'}"])
    assert code == 0
    _check_complete(tmp_path / "runs", 2)
    assert len(list((tmp_path / "runs" / ".submitit").glob("*_log.out"))) == 2  # one task per run


@pytest.mark.slow
def test_one_run_on_two_processes_with_accelerate_launch(tmp_path, smoke_params, smoke_model_dir):
    # --multi_gpu launches through torchrun; without GPUs every process runs on the CPU (gloo): MULTI_CPU
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mllm_study", "run", "--profile", "smoke",
           "--quiet", "--method", "lora", "--train-size", "32", "--test-size", "8",
           "--set", f"paths.cache={smoke_params.paths.cache}", "--set", f"paths.runs={tmp_path / 'runs'}"]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = [d for d in (tmp_path / "runs").iterdir() if not d.name.startswith(".")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # 32 records, batch 8: 4 batches per epoch on one process, 2 per process on two
    assert metrics["train"]["steps"] == 2 and metrics["train"]["samples"] == 32


@pytest.mark.slow
def test_same_spec_and_seed_give_identical_metrics(tmp_path, smoke_params, smoke_model_dir):
    from mllm_study.runs import execute_run

    outs = []
    for name in ("a", "b"):
        p = load_params(profile="smoke", overrides={"paths.cache": smoke_params.paths.cache,
                                                    "paths.runs": str(tmp_path / name), "run.method": "lora",
                                                    "run.train_size": 32, "run.test_size": 16})
        d = execute_run(p, progress=False)
        outs.append((json.loads((d / "metrics.json").read_text()), (d / "predictions.jsonl").read_text(), d.name))
    (m1, p1, id1), (m2, p2, id2) = outs
    assert id1 == id2
    assert m1["results"] == m2["results"] and p1 == p2
    assert m1["train"]["final_loss"] == m2["train"]["final_loss"]


def _run(smoke_params, tmp_path, capsys, *args):
    code = main(["run", "--profile", "smoke", "--quiet", "--set", f"paths.cache={smoke_params.paths.cache}",
                 "--set", f"paths.runs={tmp_path / 'runs'}", *args])
    return code, capsys.readouterr().err


def _copy_dataset(smoke_world, tmp_path, family="iconqa_txt"):
    import shutil

    dst = tmp_path / family
    shutil.copytree(smoke_world / family, dst)
    return dst


@pytest.mark.parametrize("case", ["not_llava", "missing_image", "not_an_image", "empty", "too_large",
                                  "unknown_model", "no_module", "unknown_placement"])
def test_bad_input_catalogue(tmp_path, smoke_params, smoke_world, smoke_model_dir, capsys, case):
    args: list[str] = []
    if case in ("not_llava", "missing_image", "not_an_image", "empty", "too_large"):
        ds = _copy_dataset(smoke_world, tmp_path)
        train = json.loads((ds / "train.json").read_text())
        if case == "not_llava":
            (ds / "train.json").write_text(json.dumps({"questions": train}))
            expected = r"train.json: LLaVA conversation JSON must be a list of records, got dict"
        elif case == "missing_image":
            (ds / "images" / train[3]["image"]).unlink()
            expected = rf"id {train[3]['id']}\): image file not found: .*{train[3]['image']}"
        elif case == "not_an_image":
            (ds / "images" / train[0]["image"]).write_text("this is not a PNG")
            expected = rf"record {train[0]['id']}: cannot read image .*{train[0]['image']}"
        elif case == "empty":
            (ds / "train.json").write_text("[]")
            expected = r"train.json: the split is empty"
        else:
            args += ["--train-size", str(len(train) + 1)]
            expected = rf"asked for {len(train) + 1} records but the split has only {len(train)}"
        args += ["--dataset", str(ds)]
    elif case == "unknown_model":
        args += ["--model", str(tmp_path / "no-such-checkpoint")]
        expected = r"cannot load model .*no-such-checkpoint"
    elif case == "no_module":
        args += ["--set", "run.layers=[7]"]
        expected = r"run: error: layers \[7\] do not exist in the language model \(llava-hf: layers 0\.\.1\)$"
    else:
        args += ["--set", "run.placement=ffn"]  # (--placement ffn is refused by the option's choices)
        expected = r"run.placement must be attention, mlp or both \(got 'ffn'\)"
    code, err = _run(smoke_params, tmp_path, capsys, *args)
    assert code == 2, err
    assert err.startswith("mllm-study run: error: ") and re.search(expected, err), err
    assert len(err.strip().splitlines()) == 1  # one message, no traceback
    runs = tmp_path / "runs"
    assert not runs.exists() or not [d for d in runs.iterdir() if d.name != ".claims"], "partial result left"
