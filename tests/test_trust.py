"""Runs you can trust over time (issue 16): identity, integrity, claims without races, NaN and nonsense rejected,
exit codes. Each test fails on the code before the fix it checks."""

from __future__ import annotations

import json
import math
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
