"""Learning-rate calibration: the rate ladder, the validation split carved from train, and a smoke calibration.

Usage: ``.venv/bin/python -m pytest tests/test_calibration.py -q``
"""

from __future__ import annotations

import json

import pytest

from mllm_study.calibration import (Calibration, _collapse, _item_variance, _val_rows, calibrate, has_calibration,
                                    lr_grid, rung, stored_overrides)
from mllm_study.config import ConfigError
from mllm_study.data import load_split, val_size


def test_ladder_and_grid():
    assert lr_grid(1e-3) == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    assert lr_grid(3e-2, 3) == [1e-2, 3e-2, 1e-1]
    assert rung(3e-4) == rung(1e-4) + 1 == rung(1e-3) - 1
    with pytest.raises(ConfigError, match="not on the calibration ladder"):
        rung(2e-4)
    assert has_calibration("quick") and has_calibration("smoke") and not has_calibration("paper-llava-1.5-7b")


def test_val_split_is_carved_from_train_and_disjoint(smoke_world):
    folder = smoke_world / "iconqa_txt"
    train = load_split(folder, "train")
    val, rest = load_split(folder, "val"), load_split(folder, "train_minus_val")
    assert len(val) == val_size(len(train)) > 0 and len(val) + len(rest) == len(train)
    assert {r["id"] for r in val}.isdisjoint(r["id"] for r in rest)
    assert {r["id"] for r in val} | {r["id"] for r in rest} == {r["id"] for r in train}
    test_ids = {r["id"] for r in load_split(folder, "test")}
    assert test_ids.isdisjoint(r["id"] for r in val)


def test_calibration_verdicts():
    cal = Calibration(profile="p", columns=["a", "b"], presets={"lora": 1e-3, "ia3": 3e-3})
    cal.curves = {"lora": {1e-3: {"a": 0.6, "b": 0.4}}, "ia3": {1e-2: {"a": 0.7, "b": 0.7}}}
    cal.chosen = {"lora": 1e-3, "ia3": 1e-2}
    cal.doubled = {"lora": {"a": 0.01, "b": -0.01}, "ia3": {"a": 0.05, "b": 0.03}}
    cal.doubled_at = {"lora": 1e-3, "ia3": 1e-2}
    assert cal.mean("lora", 1e-3) == pytest.approx(0.5)
    assert cal.mismatches() == ["ia3"] and cal.unconverged() == ["ia3"] and not cal.ok
    # the study adopts a chosen rate that differs from the preset: an override, not a failure
    assert cal.overrides() == ["run.method_presets.ia3.lr=0.01"]
    text = "\n".join(cal.lines())
    assert "CALIBRATED ia3: chose 0.01, not the profile's preset 0.003" in text and "NOT CONVERGED ia3" in text
    assert "ia3      twice the epochs at 0.01: a +0.050, b +0.030" in text
    cal.doubled["ia3"] = {"a": 0.0}
    assert cal.ok and cal.overrides() == ["run.method_presets.ia3.lr=0.01"]
    cal.presets["ia3"] = 1e-2
    assert cal.ok and cal.overrides() == []
    cal.presets["ia3"] = 3e-3  # the values for some methods only: what a study queues once their rates are final
    assert cal.overrides(["lora"]) == [] and cal.overrides(["ia3", "lora"]) == ["run.method_presets.ia3.lr=0.01"]


@pytest.mark.slow
def test_calibration_on_a_shared_pool_reports_final_rates_before_its_retry(smoke_params, smoke_model_dir, tmp_path):
    """On a study's pool the calibration hands a method over as soon as its rate is final (before the retry
    phase, which trains only methods that did not converge), and gives the same result as with its own workers."""
    from mllm_study.workers import WorkerPool

    calls = []
    with WorkerPool(2) as pool:
        cal = calibrate("smoke", cache=smoke_params.paths.cache, runs=str(tmp_path / "runs"), pool=pool,
                        on_final=lambda c, methods: calls.append((sorted(c.chosen), methods)))
    assert calls == [(["lora"], [] if "lora" in cal.reselected else ["lora"])]
    alone = calibrate("smoke", cache=smoke_params.paths.cache, runs=str(tmp_path / "alone"), workers=1)
    assert alone.curves == cal.curves and alone.chosen == cal.chosen and alone.doubled == cal.doubled


def test_calibrated_rates_reach_the_runs_through_nested_overrides():
    from mllm_study.calibration import _ladder_text
    from mllm_study.config import load_params, parse_overrides

    assert [_ladder_text(x) for x in (3e-5, 1e-4, 0.003, 0.1, 1.0, 3.0)] == ["0.00003", "0.0001", "0.003", "0.1",
                                                                           "1", "3"]
    cal = Calibration(profile="quick", columns=["a"], presets={"ia3": 3e-2, "adapter": 3e-3},
                      chosen={"ia3": 1e-1, "adapter": 3e-5})
    p = load_params(profile="quick", overrides=parse_overrides(cal.overrides()))
    presets = load_params(profile="quick").run.method_presets
    assert p.run.method_presets["ia3"] == {"lr": 0.1} and p.run.method_presets["adapter"]["lr"] == 3e-5
    assert p.run.method_presets["adapter"]["bottleneck_size"] == presets["adapter"]["bottleneck_size"]
    assert p.run.method_presets["lora"] == presets["lora"]  # other methods keep their presets
    p.run.method = "ia3"
    assert p.resolved_lr() == pytest.approx(0.1)


def _predictions(folder, pairs, split="val", dataset="vizwiz"):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"dataset": dataset, "split": split, "epoch": None, "prediction": p, "references": [g]} for p, g in pairs]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _collapsed(folder):
    return _collapse(_val_rows(folder, "vizwiz"))


def test_collapsed_points_are_flagged_and_never_chosen(tmp_path):
    # 'yes' to 9 of 10 items: collapsed (gold's top share 0.5, so the bound is 0.6)
    gold = ["yes", "no"] * 5
    assert _collapsed(_predictions(tmp_path / "a", zip(["Yes "] * 9 + ["no"], gold))) == "'yes' 9/10"
    assert _collapsed(_predictions(tmp_path / "b", zip(["yes"] * 6 + ["no"] * 4, gold))) is None
    # a column whose gold is itself 'yes' 70% of the time allows up to 0.8
    skewed = ["yes"] * 14 + ["no"] * 6
    assert _collapsed(_predictions(tmp_path / "c", zip(["yes"] * 15 + ["no"] * 5, skewed))) is None
    assert _collapsed(_predictions(tmp_path / "d", zip(["yes"] * 17 + ["no"] * 3, skewed))) == "'yes' 17/20"
    # only the validation rows of the run's own column count
    assert _collapsed(_predictions(tmp_path / "e", zip(["yes"] * 10, gold), split="test")) is None
    assert _collapsed(tmp_path / "missing") is None
    cal = Calibration(profile="p", columns=["vizwiz"], presets={"prefix": 1.0})
    cal.curves = {"prefix": {1.0: {"vizwiz": 0.5}, 3.0: {"vizwiz": 0.51}}}
    cal.collapsed = {"prefix": {3.0: {"vizwiz": "'yes' 200/200"}}}
    cal.chosen = {"prefix": 1.0}
    text = "\n".join(cal.lines())
    assert "3: 0.510!" in text and "! prefix at 3 collapsed (not chosen): vizwiz answers 'yes' 200/200" in text
    assert cal.to_dict()["collapsed"] == {"prefix": {"3": {"vizwiz": "'yes' 200/200"}}}
    assert cal.best("prefix", [1.0, 3.0], preset=1.0) == 1.0  # the higher score collapsed: not chosen
    cal.collapsed = {}
    assert cal.best("prefix", [1.0, 3.0], preset=1.0) == 3.0
    cal.curves["prefix"][3.0] = {"vizwiz": 0.5}
    assert cal.best("prefix", [1.0, 3.0], preset=1.0) == 1.0  # a tie goes to the rate nearest the preset


def test_one_standard_error_rule(tmp_path):
    cal = Calibration(profile="p", columns=["a"], presets={"ia3": 3e-2})
    cal.curves = {"ia3": {1e-2: {"a": 0.52}, 3e-2: {"a": 0.571}, 1e-1: {"a": 0.575}, 3e-1: {"a": 0.581}}}
    rates = sorted(cal.curves["ia3"])
    assert cal.best("ia3", rates, preset=3e-2) == 3e-1  # no standard errors known: the best mean
    cal.se = {"ia3": {lr: 0.024 for lr in rates}}
    assert cal.best("ia3", rates, preset=3e-2) == 3e-2  # 0.571 >= 0.581 - 0.024: the preset stays
    assert cal.best("ia3", rates, preset=1e-2) == 3e-2  # 0.52 is below the bar: the nearest rate above it
    cal.se["ia3"][3e-1] = 0.005
    assert cal.best("ia3", rates, preset=3e-2) == 3e-1  # a clear winner moves the rate
    # the variance of the item scores, as statistics.variance computes it
    import statistics

    scores = [1.0, 0.0, 0.3, 1.0, 0.6]
    folder = _predictions(tmp_path / "v", [("x", "y")] * len(scores))
    rows = [dict(json.loads(line), score=v) for line, v in zip(
        (folder / "predictions.jsonl").read_text().splitlines(), scores)]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    var, n = _item_variance(_val_rows(folder, "vizwiz"))
    assert n == 5 and var == pytest.approx(statistics.variance(scores))


@pytest.mark.slow
def test_smoke_calibration_runs_on_val_and_is_cached(smoke_params, smoke_model_dir, tmp_path):
    runs = tmp_path / "runs"
    first = calibrate("smoke", cache=smoke_params.paths.cache, runs=str(runs), workers=1)
    assert set(first.curves) == {"lora"} and first.columns == ["iconqa_txt"]
    grid = sorted(first.curves["lora"])
    assert {1e-3, 3e-3, 1e-2} <= set(grid) and first.chosen["lora"] in grid
    assert first.chosen["lora"] not in (grid[0], grid[-1]) or len(grid) == 3 + 3  # an edge optimum extends
    assert set(first.doubled["lora"]) == {"iconqa_txt"} and first.doubled_at["lora"] == first.chosen["lora"]
    done = [json.loads((d / "spec.json").read_text()) for d in runs.iterdir() if (d / "spec.json").exists()]
    assert done and all(s["run"]["eval_split"] == "val" for s in done)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in runs.iterdir() if (d / "metrics.json").exists()]
    assert all(row["split"] == "val" for m in metrics for row in m["results"])
    # the convergence check trained at the chosen rate with twice the epochs, wherever the preset is
    doubled = sorted(s["run"]["lr"] for s in done if s["run"]["epochs"] == 2)
    r = first.reselected.get("lora")  # an unconverged choice also checks the band's next rate
    assert doubled == ([first.chosen["lora"]] if r is None else sorted([r["from"], r["tried"]]))
    kept = first.chosen["lora"] if r is None else (r["to"] or r["from"])
    assert first.doubled_at["lora"] == first.chosen["lora"] == kept
    written = json.loads((runs / "calibration-smoke.json").read_text())
    assert written["chosen"]["lora"] == first.chosen["lora"]
    # what a re-rendering study (train=False) adopts from the file: the chosen rate where it is not the preset
    assert stored_overrides(runs, "smoke") == first.overrides()
    written["chosen"]["lora"], written["presets"]["lora"] = 1e-2, 3e-3
    (runs / "calibration-smoke.json").write_text(json.dumps(written))
    assert stored_overrides(runs, "smoke") == ["run.method_presets.lora.lr=0.01"]
    assert stored_overrides(tmp_path / "nowhere", "smoke") == []
    (runs / "calibration-smoke.json").write_text(json.dumps({**written, "chosen": first.chosen,
                                                             "presets": first.presets}))
    n_runs = len(list(runs.iterdir()))
    again = calibrate("smoke", cache=smoke_params.paths.cache, runs=str(runs), workers=1)
    assert again.curves == first.curves and len(list(runs.iterdir())) == n_runs  # every run reused


@pytest.mark.slow
def test_calibrate_command_applies_set_overrides_to_every_run(smoke_params, smoke_model_dir, tmp_path, capsys):
    """``mllm-study calibrate --set run.warmup_ratio=...``: every calibration run (grid and doubled budget) trains
    with the override, in run folders of their own."""
    from mllm_study.cli import main

    runs = tmp_path / "runs"
    rc = main(["calibrate", "--profile", "smoke", "--cache", smoke_params.paths.cache, "--runs", str(runs),
               "--workers", "1", "--quiet", "--set", "run.warmup_ratio=0.25"])
    assert rc in (0, 1) and "lora" in capsys.readouterr().out
    specs = [json.loads((d / "spec.json").read_text()) for d in runs.iterdir() if (d / "spec.json").exists()]
    assert len(specs) >= 4 and {s["run"]["warmup_ratio"] for s in specs} == {0.25}
    assert {s["run"]["epochs"] for s in specs} == {1, 2}


def test_a_change_of_exactly_the_tolerance_is_not_more_than_it():
    """Scores are k / 200: 0.665 - 0.645 is 0.020000000000000018 in floats, a move of exactly 0.02 (four items),
    which "moves the score by more than 0.02" does not describe; 0.025 does (calibration and validate alike)."""
    from mllm_study.validity import exceeds

    assert 0.665 - 0.645 > 0.02 and not exceeds(0.665 - 0.645, 0.02) and exceeds(0.67 - 0.645, 0.02)
    cal = Calibration(profile="p", columns=["a"])
    cal.doubled = {"ia3": {"a": 0.665 - 0.645}, "prefix": {"a": 0.625 - 0.645}, "lora": {"a": 0.67 - 0.645}}
    assert cal.unconverged() == ["lora"]


def test_an_unconverged_choice_tries_the_band_s_next_rate_on_the_helpful_side():
    """The quick calibration's own curves (2026-12-04, IconQA-txt validation, SE about 0.034): the adapter chose its
    preset 3e-3 (0.620), inside the band of the best (1e-2, 0.635), and moved +0.035 with twice the epochs: under-
    trained, so the band's next higher rate is checked. LoRA's band has no higher rate (1e-2 scored 0.515), IA3
    converged, and a fall with twice the epochs (over-training) looks at lower rates."""
    cal = Calibration(profile="quick", columns=["iconqa_txt"])
    cal.curves = {"adapter": {3e-4: {"c": 0.595}, 1e-3: {"c": 0.585}, 3e-3: {"c": 0.620}, 1e-2: {"c": 0.635},
                              3e-2: {"c": 0.585}},
                  "lora": {3e-4: {"c": 0.600}, 1e-3: {"c": 0.655}, 3e-3: {"c": 0.665}, 1e-2: {"c": 0.515},
                           3e-2: {"c": 0.120}},
                  "ia3": {1e-2: {"c": 0.590}, 3e-2: {"c": 0.620}, 1e-1: {"c": 0.630}}}
    cal.se = {m: {lr: 0.034 for lr in c} for m, c in cal.curves.items()}
    cal.collapsed = {"lora": {3e-2: {"c": "'yes' 200/200"}}}
    assert cal.band("adapter") == [3e-3, 1e-2] and cal.band("lora") == [1e-3, 3e-3]
    assert cal.best("adapter", list(cal.curves["adapter"]), 3e-3) == 3e-3  # the preset, inside the band
    cal.doubled_at = {"adapter": 3e-3, "lora": 3e-3, "ia3": 3e-2}
    cal.doubled = {"adapter": {"c": 0.035}, "lora": {"c": 0.130}, "ia3": {"c": 0.665 - 0.645}}
    assert cal.convergence_alternative("adapter") == 1e-2
    assert cal.convergence_alternative("lora") is None  # no higher rate in its band
    assert cal.convergence_alternative("ia3") is None  # converged (exactly the tolerance)
    cal.doubled["adapter"] = {"c": -0.035}
    assert cal.convergence_alternative("adapter") is None  # lower rates of the band: none (1e-3 scored 0.585)
    cal.doubled["lora"] = {"c": -0.05}
    assert cal.convergence_alternative("lora") == 1e-3
    cal.chosen = {"adapter": 1e-2}
    cal.reselected = {"adapter": {"from": 3e-3, "doubled_from": 0.035, "tried": 1e-2, "doubled_tried": 0.01,
                                  "to": 1e-2}}
    text = "\n".join(cal.lines())
    assert "RESELECTED adapter: 0.003 moved +0.035 with twice the epochs; 0.01, in the band, moved +0.010: " \
           "chosen instead" in text
