"""Runs you can trust over time (issue 16): identity, integrity, claims without races, NaN and nonsense rejected,
exit codes. Each test fails on the code before the fix it checks."""

from __future__ import annotations

import json
import math
import re
import os
import types

import pytest
import torch

from mllm_study.config import ConfigError, load_params
from mllm_study.sweep import expand_sweep


def _sweep(tmp_path, smoke_params, text: str, runs="runs"):
    f = tmp_path / "sweep.yaml"
    f.write_text("profile: smoke\nrun:\n  test_size: 8\n  train_size: 16\n" + text)
    return load_params(f, overrides={"paths.cache": smoke_params.paths.cache, "paths.runs": str(tmp_path / runs)})


# ---- NaN and nonsense are config errors ------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    ({"run.lr": float("nan")}, r"'run.lr': must be a finite number, got nan"),
    ({"run.lr": "nan"}, r"'run.lr': must be a finite number, got nan"),
    ({"run.connector_lr": float("inf")}, r"'run.connector_lr': must be a finite number, got inf"),
    ({"run.method_params": {"alpha": float("nan")}}, r"run.method_params.alpha = nan: must be a finite number"),
    ({"pretrain.lr": float("nan")}, r"'pretrain.lr': must be a finite number"),
    ({"run.epochs": 0}, r"run.epochs must be positive \(got 0.0\)"),
])
def test_non_finite_and_zero_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_params(profile="smoke", overrides=overrides)


def test_grid_values_are_converted_and_checked_like_the_command_line(tmp_path, smoke_params):
    p = _sweep(tmp_path, smoke_params, "sweep:\n  grid: {epochs: [1, 5], lr: [1.0e9]}\n")
    runs = expand_sweep(p)
    assert [r.run.epochs for r in runs] == [1.0, 5.0] and all(type(r.run.epochs) is float for r in runs)
    assert [r.run.lr for r in runs] == [1e9, 1e9]  # YAML 1.1 reads 1.0e9 as a string
    one = load_params(profile="smoke", overrides={"run.epochs": 1.0}).run
    assert json.dumps(vars(runs[0].run) | {"lr": None}, sort_keys=True) == json.dumps(
        vars(one) | {"lr": None, "test_size": 8, "train_size": 16}, sort_keys=True)
    for grid, message in (("{seed: [42.5]}", r"sweep.grid.seed\[0\]: expected int, got float 42.5"),
                          ("{lr: [.nan]}", r"sweep.grid.lr\[0\]: must be a finite number"),
                          ("{epochs: [0]}", r"run.epochs must be positive")):
        with pytest.raises(ConfigError, match=message):
            expand_sweep(_sweep(tmp_path, smoke_params, f"sweep:\n  grid: {grid}\n"))


# ---- the training loop: first non-finite step, final weights --------------------------------------------------
class _Toy(torch.nn.Module):
    """loss = w * x, NaN from forward call ``nan_from`` on (records are shuffled, calls are not)."""

    def __init__(self, nan_from=None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.calls, self.nan_from = 0, nan_from

    def forward(self, input_ids, x, **kwargs):
        self.calls += 1
        if self.nan_from is not None and self.calls >= self.nan_from:
            x = x * math.nan
        return types.SimpleNamespace(loss=(self.w * x).sum())


def _toy_collate(records):
    return {"input_ids": torch.zeros(len(records), 1, dtype=torch.long),
            "x": torch.tensor([r["x"] for r in records])}


def _toy_train(xs, lr=1e-3, nan_from=None, **settings):
    from mllm_study.train import TrainSettings, train_model

    model = _Toy(nan_from)
    records = [{"x": x} for x in xs]
    return model, train_model(model, _toy_collate, records, [{"params": [model.w], "lr": lr}],
                              TrainSettings(batch_size=1, progress=False, warmup_steps=0, **settings))


def test_divergence_names_the_first_non_finite_step_not_the_log_point():
    from mllm_study.train import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 4$") as info:
        _toy_train([1.0] * 12, nan_from=4, max_steps=12)  # logged at step 10; the loss went NaN at step 4
    assert info.value.step == 4


def test_non_finite_weights_after_the_last_update_fail_the_training():
    from mllm_study.train import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"trained weights became nan at step 1"):
        _toy_train([1.0], lr=float("nan"), max_steps=1)  # the only loss (before the update) is finite
    model, result = _toy_train([1.0, 1.0], max_steps=2)
    assert result.steps == 2 and math.isfinite(result.final_loss)


# ---- claims without races --------------------------------------------------------------------------------------
def _dead_pid() -> int:
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def _claim_all(runs_dir, ids, barrier, out):
    from mllm_study.sweep import claim_run

    barrier.wait()  # every worker restarts at the same moment
    try:
        out.put((os.getpid(), [rid for rid in ids if claim_run(runs_dir, rid)], None))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out.put((os.getpid(), [], f"{type(exc).__name__}: {exc}"))


@pytest.mark.slow
def test_stale_claims_taken_over_by_workers_restarting_together_are_never_claimed_twice(tmp_path):
    import multiprocessing as mp
    import platform

    ctx = mp.get_context("fork")
    ids = [f"run-{i:03d}" for i in range(200)]
    dead = _dead_pid()
    for trial in range(10):
        runs = tmp_path / f"t{trial}"
        (runs / ".claims").mkdir(parents=True)
        for rid in ids:  # claims left by a worker killed with SIGKILL
            (runs / ".claims" / rid).write_text(json.dumps({"pid": dead, "host": platform.node(), "time": 0}))
        barrier, out = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_claim_all, args=(runs, ids, barrier, out)) for _ in range(3)]
        for p in procs:
            p.start()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert [err for _, _, err in results] == [None] * 3, results
        won = [rid for _, claimed, _ in results for rid in claimed]
        assert sorted(won) == ids, f"trial {trial}: {len(won) - len(set(won))} runs claimed twice"
        owners = {pid for pid, claimed, _ in results if claimed}
        for rid in ids:  # each claim names the worker that won it
            assert json.loads((runs / ".claims" / rid).read_text())["pid"] in owners


def test_release_checks_the_owner_and_status_checks_that_the_owner_lives(tmp_path, monkeypatch):
    import platform

    from mllm_study.sweep import claim_run, release_run, sweep_status

    claims = tmp_path / ".claims"
    claims.mkdir()
    other = {"pid": os.getppid(), "host": platform.node(), "time": 0}  # alive, not us
    (claims / "theirs").write_text(json.dumps(other))
    release_run(tmp_path, "theirs")
    assert (claims / "theirs").exists()  # not ours to release
    assert claim_run(tmp_path, "mine")
    release_run(tmp_path, "mine")
    assert not (claims / "mine").exists()
    (claims / "dead").write_text(json.dumps({"pid": _dead_pid(), "host": platform.node(), "time": 0}))
    state = sweep_status(tmp_path, ["theirs", "dead"])
    assert state["running"] == ["theirs"] and state["remaining"] == ["dead"]


# ---- run identity: same training, same id; changed code, new id -----------------------------------------------
def _rid(smoke_params, **run):
    from mllm_study.runs import resolve_spec, run_id

    over = {"paths.cache": smoke_params.paths.cache, "paths.runs": smoke_params.paths.runs,
            **{f"run.{k}": v for k, v in run.items()}}
    return run_id(resolve_spec(load_params(profile="smoke", overrides=over), progress=False))


@pytest.mark.parametrize("same", [
    [{"method": "lora"}, {"method": "lora", "placement": "both"}],
    [{"method": "adapter"}, {"method": "adapter", "placement": "mlp"}],
    [{"method": "ia3"}, {"method": "ia3", "placement": "both"}],
    [{"method": "prefix"}, {"method": "prefix", "placement": "both"}],
    [{"eval_batch_size": 2}, {"eval_batch_size": 1}, {"eval_batch_size": 32}],
    [{}, {"max_new_tokens": 6}],  # iconqa_txt's own limit (dataset.json)
    [{}, {"layers": [0, 1]}, {"layers": [1, 0, 1]}],  # the smoke model has 2 decoder blocks
    [{"method": "none"}, {"method": "none", "connector": "tuned", "lr": 0.1, "seed": 7, "epochs": 2,
                          "placement": "mlp", "train_size": 4}],
])
def test_settings_that_do_not_change_training_share_one_id(smoke_params, smoke_model_dir, same):
    ids = {_rid(smoke_params, **run) for run in same}
    assert len(ids) == 1, ids


def test_settings_that_change_training_or_predictions_change_the_id(smoke_params, smoke_model_dir):
    base = _rid(smoke_params)
    for run in ({"placement": "mlp"}, {"layers": [1]}, {"max_new_tokens": 3}, {"seed": 7}, {"lr": 0.1},
                {"method_params": {"r": 4}}, {"connector": "tuned"}):
        assert _rid(smoke_params, **run) != base, run
    with pytest.raises(ValueError, match=r"method 'prefix' has no placement .*got placement 'mlp'"):
        _rid(smoke_params, method="prefix", placement="mlp")  # refused when planning, not when the run starts


def test_a_grid_and_the_command_line_name_the_same_run(tmp_path, smoke_params, smoke_model_dir):
    from mllm_study.sweep import plan_sweep

    p = _sweep(tmp_path, smoke_params, "sweep:\n  grid: {epochs: [5], seed: [3]}\n")
    (rid, _), = plan_sweep(p)
    assert rid == _rid(smoke_params, epochs=5.0, seed=3, test_size=8, train_size=16)


def test_the_id_covers_the_code_that_shapes_training_but_not_the_metrics(tmp_path, monkeypatch):
    import shutil

    from mllm_study import identity

    pkg = tmp_path / "pkg"
    shutil.copytree(identity._PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(identity, "_PACKAGE", pkg)
    identity.code_fingerprint.cache_clear()
    try:
        before = identity.code_fingerprint()
        (pkg / "metrics.py").write_text((pkg / "metrics.py").read_text() + "\n# metrics are versioned separately\n")
        identity.code_fingerprint.cache_clear()
        assert identity.code_fingerprint() == before
        for name in ("data.py", "evaluate.py", "methods/lora.py", "world/__init__.py"):
            (pkg / name).write_text((pkg / name).read_text() + "\n# changed\n")
            identity.code_fingerprint.cache_clear()
            after = identity.code_fingerprint()
            assert after != before, name
            before = after
    finally:
        identity.code_fingerprint.cache_clear()


def test_lora_rank_above_the_layer_width_is_an_error(tmp_path, smoke_params, smoke_model_dir, capsys):
    from mllm_study.cli import main

    code = main(["run", "--profile", "smoke", "--quiet", "--method", "lora", "--method-params", "{r: 512}",
                 "--set", f"paths.cache={smoke_params.paths.cache}", "--set", f"paths.runs={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2 and re.search(r"error: method_params.r = 512 exceeds the width .* \(rank at most 128\)", err), err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


# ---- integrity: done means every file of the manifest exists and parses ---------------------------------------
def _none_sweep(tmp_path, smoke_params):
    return _sweep(tmp_path, smoke_params, "sweep:\n  grid: {method: [none], dataset: [vqav2, ocrvqa]}\n")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate_metrics", "delete_predictions", "truncate_status", "delete_adapter"])
def test_a_damaged_run_is_named_and_re_run_never_reused(tmp_path, smoke_params, smoke_model_dir, capsys, damage):
    import io
    import shutil

    from mllm_study.cli import main
    from mllm_study.results import collect_results
    from mllm_study.sweep import run_sweep, sweep_status

    if damage == "delete_adapter":
        p = _sweep(tmp_path, smoke_params, "sweep:\n  grid: {method: [lora], epochs: [1]}\n")
    else:
        p = _none_sweep(tmp_path, smoke_params)
    first = run_sweep(p, progress=False)
    rid = first.ran[0]
    d = tmp_path / "runs" / rid
    if damage == "truncate_metrics":
        (d / "metrics.json").write_text((d / "metrics.json").read_text()[:40])
    elif damage == "delete_predictions":
        (d / "predictions.jsonl").unlink()
    elif damage == "truncate_status":
        (d / "status.json").write_text('{"status": "do')
    else:
        shutil.rmtree(d / "adapter")
    table, report = collect_results(tmp_path / "runs")
    assert rid not in set(table["run_id"]) and rid in report.damaged and f"damaged run {rid}" in str(report)
    assert rid in sweep_status(tmp_path / "runs", [r for r in first.ran])["remaining"]
    code = main(["results", "--runs", str(tmp_path / "runs")])
    assert code == 1 and f"damaged run {rid}" in capsys.readouterr().err
    stream = io.StringIO()
    again = run_sweep(p, progress=False, stream=stream)
    assert again.ran == [rid] and set(again.damaged) == {rid} and f"{rid}: damaged (" in stream.getvalue()
    table, report = collect_results(tmp_path / "runs")
    assert report.used == len(first.ran) and not report.skipped


def test_json_errors_name_their_file(tmp_path):
    from mllm_study.runs import read_json

    (tmp_path / "status.json").write_text('{"status": ')
    with pytest.raises(ValueError, match=r"status.json: not valid JSON"):
        read_json(tmp_path / "status.json")


# ---- metrics are versioned: a changed metric re-scores stored predictions without retraining -------------------
def test_a_changed_metric_rescores_stored_predictions_without_retraining(tmp_path, smoke_params, smoke_model_dir,
                                                                          monkeypatch):
    import io

    from mllm_study import metrics as m
    from mllm_study.results import collect_results
    from mllm_study.sweep import run_sweep

    p = _sweep(tmp_path, smoke_params, "sweep:\n  grid: {method: [lora], epochs: [1], dataset: [ocrvqa]}\n")
    (rid,) = run_sweep(p, progress=False).ran
    d = tmp_path / "runs" / rid
    before = json.loads((d / "metrics.json").read_text())
    assert before["metric_versions"] == {"accuracy": m.get_metric("accuracy").version}
    log = (d / "train_log.jsonl").read_text()
    old = m.get_metric("accuracy")

    def every_item_right(predictions, references, variant=None, **options):  # the registry passes variant=
        return m.MetricResult(1.0, [1.0] * len(predictions))

    monkeypatch.setitem(m._REGISTRY, "accuracy", m.Metric("accuracy", True, old.reference, old.version + "-b",
                                                          every_item_right))
    stream = io.StringIO()
    summary = run_sweep(p, progress=False, stream=stream)
    assert summary.ran == [] and summary.rescored == {rid: ["accuracy"]} and "re-scored accuracy" in stream.getvalue()
    assert (d / "train_log.jsonl").read_text() == log  # not retrained
    after = json.loads((d / "metrics.json").read_text())
    assert after["value"] == 1.0 and after["metric_versions"]["accuracy"] == old.version + "-b"
    assert after["train"] == before["train"]
    items = [json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines()]
    assert items and all(i["score"] == 1.0 for i in items)
    table, report = collect_results(tmp_path / "runs")
    assert report.used == 1 and set(table.loc[table["metric"] == "accuracy", "value"]) == {1.0}
    assert run_sweep(p, progress=False).skipped == [rid]  # re-scored once
    monkeypatch.undo()  # the real metric again: `mllm-study rescore` brings the old scores back, still untrained
    from mllm_study.cli import main

    f = tmp_path / "sweep.yaml"
    assert main(["rescore", str(f), "--set", f"paths.cache={smoke_params.paths.cache}",
                 "--set", f"paths.runs={tmp_path / 'runs'}"]) == 0
    assert json.loads((d / "metrics.json").read_text())["results"] == before["results"]
    assert (d / "train_log.jsonl").read_text() == log


# ---- exit codes and one-line errors ----------------------------------------------------------------------------
def _cli_sweep(tmp_path, smoke_params, grid, *extra):
    from mllm_study.cli import main

    f = tmp_path / "s.yaml"
    f.write_text(f"profile: smoke\nrun:\n  test_size: 8\n  train_size: 16\nsweep:\n  grid: {grid}\n")
    return main(["sweep", str(f), "--quiet", "--set", f"paths.cache={smoke_params.paths.cache}",
                 "--set", f"paths.runs={tmp_path / 'runs'}", *extra])


def test_sweep_exits_non_zero_when_a_run_fails_before_writing_anything(tmp_path, smoke_params, smoke_model_dir,
                                                                       capsys):
    # r: 512 is refused when the run starts (after the base model is built): the other run still runs
    code = _cli_sweep(tmp_path, smoke_params, "{method: [lora], method_params: [{r: 512}, {r: 2}]}")
    out = capsys.readouterr()
    assert code == 1 and "1 ran" in out.out and "exceeds the width" in out.err


@pytest.mark.parametrize("grid, message", [
    ("{seed: [42.5]}", r"sweep.grid.seed\[0\]: expected int, got float 42.5"),
    ("{method: [prefix], placement: [mlp]}", r"method 'prefix' has no placement"),
    ("{lr: [.nan]}", r"must be a finite number"),
])
def test_sweep_config_errors_exit_2_with_one_line(tmp_path, smoke_params, smoke_model_dir, capsys, grid, message):
    code = _cli_sweep(tmp_path, smoke_params, grid)
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err) and len(err.strip().splitlines()) == 1, err


def test_missing_and_unwritable_folders_are_one_line_errors(tmp_path, smoke_params, smoke_model_dir, capsys):
    from mllm_study.cli import main

    assert main(["results", "--runs", str(tmp_path / "nonexistent")]) == 2
    err = capsys.readouterr().err
    assert err == f"mllm-study results: error: runs folder not found: {tmp_path / 'nonexistent'}\n"
    (tmp_path / "a-file").write_text("")  # a runs folder that cannot be created (root ignores read-only modes)
    code = main(["run", "--profile", "smoke", "--quiet", "--method", "none", "--test-size", "4",
                 "--set", f"paths.cache={smoke_params.paths.cache}",
                 "--set", f"paths.runs={tmp_path / 'a-file' / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mllm-study run: error: Not a directory: ") and len(err.splitlines()) == 1, err


def test_an_interrupt_escaping_main_still_exits_130_not_by_sigint():
    """The command's entry point (``mllm-study``, ``python -m mllm_study``): a ``KeyboardInterrupt`` that escapes
    ``main`` (a second Ctrl-C or SIGTERM while the first is reported) exits 130. Unhandled, Python would kill itself
    with SIGINT (return code -2), which is what CI once saw from the SIGTERM test below."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    code = ("from mllm_study import cli\n"
            "def interrupted(argv=None):\n    raise KeyboardInterrupt\n"
            "cli.main = interrupted\ncli.entry()\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(repo)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    plain = subprocess.run([sys.executable, "-c", "raise KeyboardInterrupt"], capture_output=True, timeout=60)
    assert plain.returncode == -2  # what the entry point prevents


@pytest.mark.slow
def test_sigterm_to_run_is_handled_like_ctrl_c(tmp_path, smoke_params, smoke_model_dir):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo), "MLLM_STUDY_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "mllm_study", "run", "--profile", "smoke", "--quiet", "--method", "lora",
           "--epochs", "50", "--train-size", "32", "--set", f"paths.cache={smoke_params.paths.cache}",
           "--set", f"paths.runs={runs}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.time() + 120
    while time.time() < end and proc.poll() is None and not list(runs.glob(".*.tmp-*/status.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err, err
    assert not list(runs.glob(".*.tmp-*")), "temporary run folder left behind"
    (status,) = [json.loads(p.read_text()) for p in runs.glob("*/status.json")]
    assert status["status"] == "failed" and "KeyboardInterrupt" in status["reason"]
