"""Registries as the single source (issue 17, item 3): a method's metadata lives in its own file, a metric's direction
in its registration, a run's factors in one definition, a paper finding in one entry; everything else reads them."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from mllm_study import (accounting, config, contrasts, datasize, findings, method_info, plots, report, results, study,
                        validity)
from mllm_study.config import PARAMS_DIR, RUN_FACTORS, RunConfig
from mllm_study.errors import ConfigError, DataError
from mllm_study.metrics import metric_higher_is_better

BUILT_IN = ["none", "lora", "ia3", "prefix", "adapter", "full"]


# ---- method metadata: declared once, in the method's file ------------------------------------------------------
def test_the_report_side_reads_method_metadata_without_torch():
    code = ("import sys\nimport mllm_study.report, mllm_study.findings, mllm_study.validity, mllm_study.plots\n"
            "from mllm_study import method_info\n"
            "print(method_info.method_order(), 'torch' in sys.modules, 'peft' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-2:] == ["False", "False"]
    assert all(name in " ".join(out) for name in BUILT_IN)


def test_the_methods_files_and_the_registry_agree():
    """What the report side reads from the source is exactly what registering the method declared."""
    from mllm_study.methods import METHODS

    scanned = method_info.scanned_methods()
    for name in BUILT_IN:
        assert scanned[name] == METHODS[name].info, name
        assert (METHODS[name].lr, METHODS[name].default_placement) == (scanned[name].lr,
                                                                        scanned[name].default_placement)
        knob = scanned[name].size_knob
        assert knob is None or knob in METHODS[name].defaults
    assert method_info.method_order()[:len(BUILT_IN)] == BUILT_IN
    assert method_info.study_methods() == ["lora", "ia3", "prefix", "adapter"]


def test_the_readers_show_what_the_methods_declare():
    assert list(plots.METHOD_ORDER)[:len(BUILT_IN)] == BUILT_IN
    assert plots.METHOD_ORDER.index("adapter") == 4 and "lora" in plots.METHOD_ORDER
    assert list(findings.PEFT_METHODS) == list(validity.PEFT_METHODS) == ["lora", "ia3", "prefix", "adapter"]
    assert list(accounting.PAPER_METHODS) == [("lora", {}, "both"), ("ia3", {}, "both"), ("prefix", {}, None),
                                              ("adapter", {}, "mlp")]
    labels = {m: report.size_label({"method": m, "method_params": json.dumps(p)}) for m, p in (
        ("lora", {"r": 16, "alpha": 32}), ("adapter", {"bottleneck_size": 32}), ("prefix", {"num_virtual_tokens": 10}),
        ("ia3", {}), ("peft:loha", {"r": 8}))}
    assert labels == {"lora": "r=16", "adapter": "bottleneck=32", "prefix": "tokens=10", "ia3": "-",
                      "peft:loha": "r=8"}
    assert plots.method_display("lora") == "LoRA" and plots.method_display("peft:loha") == "peft:loha"
    assert method_info.paper_lr("prefix") == 1e-5 and method_info.paper_lr("peft:vera") == method_info.PASSTHROUGH_LR


def test_non_literal_metadata_is_refused_with_the_place():
    source = 'COLOR = "red"\n@register_method("x", defaults={}, color=COLOR)\ndef apply(m, *a):\n    return m\n'
    with pytest.raises(ConfigError, match=r"methods/x.py:2 color=.*literal"):
        method_info.scan_source(source, "methods/x.py")
    got = method_info.scan_source(source.replace("color=COLOR", 'color="red", save=_save'), "methods/x.py")
    assert got == [method_info.MethodInfo(name="x", color="red")]  # non-metadata arguments need not be literals


TOY = textwrap.dedent('''
    """A throwaway method: one file, nothing else edited."""
    from mllm_study.methods.registry import register_method


    @register_method("toy", defaults={"k": 4, "alpha": 1.0}, lr=1e-3, default_placement="mlp",
                     description="a throwaway method", display="Toy", order=35, color="#17becf", size_knob="k",
                     size_label="width", study=True)
    def apply_toy(model, params, placement, connector, layers=None):
        return model
''')


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    """Method ``toy`` registered from its own file (a module outside the package), unregistered afterwards."""
    from mllm_study.methods import METHODS, unregister_method

    (tmp_path / "toy_method.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import toy_method  # noqa: F401  (registers itself)

    yield METHODS["toy"]
    unregister_method("toy")
    sys.modules.pop("toy_method", None)


def test_adding_a_method_is_one_file(toy_method, tmp_path):
    """A method registered from its file shows in the plot order and colours, the size labels, the findings' and
    validity's method lists, the placement claims and the paper's accounting table, with none of them edited."""
    from matplotlib.colors import to_rgb

    assert toy_method.info == method_info.scan_source(TOY)[0]  # the same record from the source
    order = list(plots.METHOD_ORDER)
    assert order.index("prefix") < order.index("toy") < order.index("adapter")  # order=35
    assert sorted(["adapter", "toy", "lora"], key=plots.method_key) == ["lora", "toy", "adapter"]
    assert tuple(plots.method_colors(["toy", "lora"])["toy"]) == to_rgb("#17becf")
    assert tuple(plots.method_colors()["toy"]) == to_rgb("#17becf")
    others = plots.method_colors(["peft:loha", "peft:vera", "x", "y", "z", "w"])
    assert to_rgb("#17becf") not in {tuple(c) for c in others.values()}  # no other name wears toy's colour
    assert report.size_label({"method": "toy", "method_params": '{"alpha": 1.0, "k": 8}'}) == "width=8"
    assert list(findings.PEFT_METHODS) == ["lora", "ia3", "prefix", "toy", "adapter"]
    assert "toy" in validity.PEFT_METHODS
    assert ("toy", {}, "mlp") in list(accounting.PAPER_METHODS)
    assert config.Params(run=RunConfig(method="toy")).resolved_lr() == 1e-3  # the paper LR, through method_info
    # the placement finding tests toy's default placement like the others'
    w = _PlacementWorld()
    for placement, p in (("mlp", 0.9), ("both", 0.5)):
        w.run("toy", placement, p)
    f = findings.finding_placement(*w.table())
    assert "toy: mlp - both" in set(f.details["comparison"])
    # and it is gone again afterwards (see the fixture), leaving the built-in methods as they were
    from mllm_study.methods import unregister_method

    unregister_method("toy")
    assert "toy" not in plots.METHOD_ORDER and list(findings.PEFT_METHODS) == ["lora", "ia3", "prefix", "adapter"]


def test_a_new_method_file_is_found_by_reading_the_folder(tmp_path):
    (tmp_path / "toy.py").write_text(TOY)
    (tmp_path / "helpers.py").write_text("X = 1\n")  # no register_method call: no method
    assert list(method_info.scanned_methods(tmp_path)) == ["toy"]
    assert method_info.scanned_methods(tmp_path)["toy"].size_label == "width"


class _PlacementWorld:
    def __init__(self, n: int = 60):
        self.rows, self.items, self.n = [], [], n

    def run(self, method, placement, p, dataset="sqa", seed=42):
        rid = f"{method}-{placement}-{dataset}-{seed}"
        k = int(round(p * self.n))
        scores = np.r_[np.ones(k), np.zeros(self.n - k)]
        np.random.default_rng(0).shuffle(scores)
        self.rows.append({"run_id": rid, "model": "tiny-llava", "method": method, "method_params": "{}",
                          "placement": placement, "layers": "all", "connector": "frozen", "vision": "frozen",
                          "train_dataset": dataset, "train_size": 100, "seed": seed, "lr": 1e-3, "connector_lr": 1e-4,
                          "epochs": 1.0, "dataset": dataset, "family": dataset, "group": "unseen", "split": "test",
                          "epoch": None, "metric": "accuracy", "value": float(scores.mean()), "n": self.n})
        self.items += [{"run_id": rid, "dataset": dataset, "split": "test", "epoch": -1, "metric": "accuracy",
                        "id": f"{dataset}-{i}", "score": float(s), "prediction": "", "references": [""]}
                       for i, s in enumerate(scores)]
        return rid

    def table(self):
        t = pd.DataFrame(self.rows)
        for col in ("train_size", "seed", "epoch"):
            t[col] = t[col].astype("Int64")
        return t, pd.DataFrame(self.items)


# ---- metric direction: rankings read the registered direction --------------------------------------------------
def _ranked(values: dict[str, list[float]], metrics: list[str]) -> pd.DataFrame:
    """Scores of methods (keys) on blocks (one per metric in ``metrics``)."""
    rows = []
    for method, vals in values.items():
        for b, (v, metric) in enumerate(zip(vals, metrics)):
            rows.append({"method": method, "dataset": f"d{b}", "split": "test", "run_id": f"{method}-{b}",
                         "metric": metric, "value": v})
    return pd.DataFrame(rows)


def test_metric_directions_are_registered():
    assert metric_higher_is_better("accuracy") and metric_higher_is_better("cider")
    assert not metric_higher_is_better("chair")
    with pytest.raises(ConfigError, match="no registered direction"):
        metric_higher_is_better("chair.recall")  # better high, unlike chair: no inherited direction
    with pytest.raises(ConfigError, match="unknown metric"):
        metric_higher_is_better("bleu")


def test_friedman_ranks_a_lower_is_better_metric_lowest_first():
    chair = _ranked({"lora": [0.1, 0.2, 0.1, 0.15, 0.12], "ia3": [0.3, 0.4, 0.35, 0.3, 0.33],
                     "adapter": [0.5, 0.6, 0.55, 0.5, 0.52]}, ["chair"] * 5)
    res, _ = report.friedman_ranks(chair)
    assert res.extra["average_ranks"] == {"adapter": 3.0, "ia3": 2.0, "lora": 1.0}  # the fewest hallucinations
    flipped, _ = report.friedman_ranks(chair, higher_is_better=True)  # an explicit direction overrides
    assert flipped.extra["average_ranks"]["lora"] == 3.0
    # blocks of both directions: each ranked its own way (accuracy high = good, CHAIR low = good)
    mixed = _ranked({"lora": [0.9, 0.8, 0.9, 0.1, 0.2], "ia3": [0.5, 0.5, 0.5, 0.3, 0.4],
                     "adapter": [0.1, 0.2, 0.1, 0.5, 0.6]}, ["accuracy"] * 3 + ["chair"] * 2)
    res, _ = report.friedman_ranks(mixed)
    assert res.extra["average_ranks"]["lora"] == 1.0 and res.extra["average_ranks"]["adapter"] == 3.0
    assert res.statistic == pytest.approx(10.0)  # every block agrees: chi2 = n (k - 1), W = 1
    with pytest.raises(DataError, match="no 'metric' column"):
        report.friedman_ranks(chair.drop(columns="metric"))


def test_winners_pick_the_lowest_chair_and_the_highest_accuracy():
    rows, items = [], []
    rng = np.random.default_rng(0)
    for method, chair_p, acc_p in (("lora", 0.6, 0.3), ("ia3", 0.4, 0.5), ("adapter", 0.1, 0.9)):
        for dataset, metric, p in (("flickr30k", "chair", chair_p), ("sqa", "accuracy", acc_p)):
            s = (rng.random(80) < p).astype(float)
            rid = f"{method}-{dataset}"
            rows.append({"run_id": rid, "method": method, "dataset": dataset, "split": "test", "metric": metric,
                         "value": float(s.mean())})
            items += [{"run_id": rid, "dataset": dataset, "split": "test", "epoch": -1, "metric": metric,
                       "id": f"{dataset}-{i}", "score": float(x)} for i, x in enumerate(s)]
    win = contrasts.winners(pd.DataFrame(rows), pd.DataFrame(items)).set_index("dataset")
    assert win.loc["flickr30k", "best"] == "adapter" and win.loc["flickr30k", "runner_up"] == "ia3"
    assert win.loc["flickr30k", "estimate"] < 0  # best - runner-up: fewer hallucinations
    assert win.loc["sqa", "best"] == "adapter" and win.loc["sqa", "estimate"] > 0
    assert report.winners is contrasts.winners


# ---- run factors: one definition, layers included ---------------------------------------------------------------
def test_the_factor_lists_come_from_one_definition_and_include_layers():
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert set(RUN_FACTORS) <= fields and "layers" in RUN_FACTORS
    assert results.FACTOR_COLUMNS == ["run_id", *RUN_FACTORS.values()]
    assert contrasts.MATCH_KEYS[:-2] == list(RUN_FACTORS.values()) and contrasts.MATCH_KEYS[-2:] == ["dataset", "split"]
    assert set(study.DESIGN_FACTORS) >= set(RUN_FACTORS) and "layers" in datasize.SETTING_KEYS


def test_a_run_records_its_layers_and_runs_on_other_layers_do_not_pair():
    run = {**dataclasses.asdict(RunConfig(method="lora", layers=[1, 0], dataset="data/my_set")), "lr": 1e-3}
    row = config.factor_row(run)
    assert row["layers"] == "[0, 1]" and row["train_dataset"] == "my_set" and row["placement"] == "default"
    assert config.factor_row({k: v for k, v in run.items() if k != "vision"})["vision"] == "frozen"  # older spec
    assert config.factor_row({**run, "layers": None})["layers"] == "all"
    assert list(results._factor_row("r1", {"run": run})) == results.FACTOR_COLUMNS
    base = {"model": "m", "method_params": "{}", "placement": "both", "connector": "frozen", "vision": "frozen",
            "train_dataset": "sqa", "train_size": 10, "seed": 1, "lr": 1e-3, "connector_lr": 1e-4, "epochs": 1.0,
            "dataset": "sqa", "split": "test"}
    scores = pd.DataFrame([{**base, "run_id": "a", "method": "lora", "layers": "all", "value": 0.5},
                           {**base, "run_id": "b", "method": "ia3", "layers": "[0]", "value": 0.4},
                           {**base, "run_id": "c", "method": "ia3", "layers": "all", "value": 0.3}])
    pairs = contrasts.pair_runs(scores, "method", "lora", "ia3")
    assert list(zip(pairs["run_a"], pairs["run_b"])) == [("a", "c")]


def test_design_tables_list_the_layers():
    table = study.design_table(PARAMS_DIR / "rq1_main.yaml", "smoke").set_index("factor")
    assert table.loc["layers", "values"] == "all" and table.loc["layers", "levels"] == 1
    assert list(table.index[:len(RUN_FACTORS)]) == list(RUN_FACTORS)


# ---- paper findings: one entry each -----------------------------------------------------------------------------
def test_each_paper_finding_is_one_entry_and_the_old_names_still_read_it():
    assert list(findings.FINDINGS) == ["adapter_best", "connector_unseen", "placement", "data_size", "adapter_stable",
                                       "adapter_hallucination"]
    for key, f in findings.FINDINGS.items():
        assert findings.PAPER_FINDINGS[key] == (f.rq, f.paper) and findings.CHECKS[key] is f.check
    assert list(findings.PAPER_FINDINGS) == list(findings.CHECKS) == list(findings.FINDINGS)
    assert findings.CHECKS["placement"] is findings.finding_placement


def test_a_new_finding_is_one_decorated_function():
    @findings.paper_finding("toy_finding", "rq9_toy", "Toy methods are fine.")
    def finding_toy(table, items, flags=None):
        return findings.Finding("toy_finding", "rq9_toy", "Toy methods are fine.", "measured", "supported", "-")

    try:
        assert findings.PAPER_FINDINGS["toy_finding"] == ("rq9_toy", "Toy methods are fine.")
        found = {f.key: f for f in findings.evaluate_findings({})}
        assert found["toy_finding"].verdict == "inconclusive" and "rq9_toy" in found["toy_finding"].ours
        table = pd.DataFrame({"metric": ["accuracy"]})
        assert {f.key: f for f in findings.evaluate_findings({"rq9_toy": (table, table)})}["toy_finding"].verdict \
            == "supported"
    finally:
        findings.FINDINGS.pop("toy_finding")
    assert "toy_finding" not in findings.CHECKS
