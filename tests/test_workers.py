"""The study's persistent worker pool (mllm_study.workers): one task per run id, priorities, a dead worker."""

import dataclasses
import json
import os
import signal
import time

import pytest

from mllm_study.config import load_params
from mllm_study.sweep import collect_runs, plan_sweep, submit_runs
from mllm_study.workers import WorkerDied, WorkerPool


def _runs(smoke_params, tmp_path, grid: dict, **run):
    """(run id, sweep-less params) of a smoke sweep on the session's world and base model."""
    params = load_params(profile="smoke", overrides={"paths.cache": smoke_params.paths.cache,
                                                     "paths.runs": str(tmp_path / "runs"),
                                                     "run.train_size": 32, "run.test_size": 8,
                                                     **{f"run.{k}": v for k, v in run.items()}})
    params = dataclasses.replace(params, sweep={"grid": grid})
    return [(rid, dataclasses.replace(p, sweep={})) for rid, p in plan_sweep(params)], params


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("MLLM_STUDY_THREADS", "1")


@pytest.mark.slow
def test_pool_runs_each_run_id_once_and_higher_priority_first(tmp_path, smoke_params, smoke_model_dir):
    runs, _ = _runs(smoke_params, tmp_path, {"method": ["none"], "dataset": ["vqav2", "okvqa", "iconqa_txt"]})
    order = []
    with WorkerPool(1) as pool:
        (a, pa), (b, pb), (c, pc) = runs
        first = pool.submit(pa, a, priority=1)  # dispatched at once: the worker is free
        later = pool.submit(pb, b, priority=1)
        urgent = pool.submit(pc, c, priority=0)  # overtakes b, which is still pending
        again = pool.submit(pa, a, priority=0)
        assert again is first  # one task per run id
        for rid, fut in ((a, first), (b, later), (c, urgent)):
            fut.add_done_callback(lambda _f, rid=rid: order.append(rid))
        summaries = [f.result(timeout=300) for f in (first, later, urgent)]
    assert order == [a, c, b]
    assert [s.ran for s in summaries] == [[a], [b], [c]]
    dirs = sorted(d.name for d in (tmp_path / "runs").iterdir() if not d.name.startswith("."))
    assert dirs == sorted([a, b, c])
    for d in dirs:
        assert json.loads((tmp_path / "runs" / d / "status.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_sweeps_on_a_pool_share_runs_and_count_each_once(tmp_path, smoke_params, smoke_model_dir):
    _, one = _runs(smoke_params, tmp_path, {"method": ["none"], "dataset": ["vqav2", "okvqa"]})
    _, two = _runs(smoke_params, tmp_path, {"method": ["none"], "dataset": ["okvqa", "iconqa_txt"]})
    with WorkerPool(2) as pool:
        summaries = collect_runs(submit_runs(pool, [plan_sweep(one), plan_sweep(two)]), time.perf_counter())
    assert [s.total for s in summaries] == [2, 2]
    ran = [set(s.ran) for s in summaries]
    assert len(ran[0] | ran[1]) == 3 and not ran[0] & ran[1]  # the shared okvqa run trained once, counted once
    assert len(summaries[1].skipped) == 1 and summaries[1].skipped[0] in ran[0]


@pytest.mark.slow
def test_a_killed_worker_fails_its_run_and_the_pool_goes_on(tmp_path, smoke_params, smoke_model_dir):
    (long_run,), _ = _runs(smoke_params, tmp_path, {"method": ["lora"]}, epochs=40)
    (short,), _ = _runs(smoke_params, tmp_path, {"method": ["none"], "dataset": ["vqav2"]})
    with WorkerPool(1) as pool:
        doomed = pool.submit(long_run[1], long_run[0])
        after = pool.submit(short[1], short[0])
        end = time.time() + 120
        while (pid := pool.worker_of(long_run[0])) is None and time.time() < end:
            time.sleep(0.05)
        assert pid, "the worker never started the run"
        time.sleep(1.0)  # inside the run
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerDied, match="exit code -9"):
            doomed.result(timeout=120)
        assert after.result(timeout=300).ran == [short[0]]  # a new worker took the next run
    status = json.loads((tmp_path / "runs" / short[0] / "status.json").read_text())
    assert status["status"] == "done"


def test_study_timeline_counts_idle_seconds_and_packing(tmp_path):
    """benchmarks/study_timeline.py on run folders with known times: two workers, one idle for 10 s in the
    middle, both idle for 5 s; an older study more than --gap seconds before is left out."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "study_timeline.py"
    spec = importlib.util.spec_from_file_location("study_timeline", path)
    timeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timeline)

    def run(name, start, end):
        d = tmp_path / name
        d.mkdir()
        stamp = lambda t: f"2026-12-08T04:{t // 60:02d}:{t % 60:02d}+00:00"  # noqa: E731
        (d / "status.json").write_text(json.dumps({"status": "done", "started": stamp(start), "finished": stamp(end)}))

    run("old", 0, 10)  # another study, 200 s before
    run("a", 210, 240)
    run("b", 210, 230)  # worker 2 waits 230-240
    run("c", 245, 265)  # both wait 240-245
    run("d", 245, 265)
    rows = timeline.last_study(timeline.intervals(tmp_path), gap=60)
    assert sorted(r[2] for r in rows) == ["a", "b", "c", "d"]
    o = timeline.occupancy(rows, workers=2)
    assert o["span"] == 55 and o["busy"] == 30 + 20 + 20 + 20 and o["idle"] == 5 and o["short"] == 15
    assert o["packing"] == pytest.approx(90 / 110)
