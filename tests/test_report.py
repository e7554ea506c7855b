"""Report helpers and the findings logic on synthetic tidy tables whose answers are known; params files; the index."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from mllm_study import contrasts, findings, report, study
from mllm_study.config import PARAMS_DIR
from mllm_study.metrics import compute_metric

ROOT = PARAMS_DIR.parent
GROUPS = {"sqa": "unseen", "iconqa_txt": "unseen", "vizwiz": "unseen", "okvqa": "seen", "vqav2": "seen",
          "flickr30k": "unseen", "pope": "probe"}


# ---- a synthetic tidy table + per-item scores ------------------------------------------------------------------
class World:
    """Builds rows shaped like results.collect_results and items shaped like report.load_items."""

    def __init__(self, n_items: int = 40):
        self.rows, self.items, self.n = [], [], n_items

    def run(self, method, dataset, p, *, connector="tuned", placement=None, train_size=300, seed=42, lr=1e-3,
            epochs=3.0, method_params=None, metric="accuracy", split="test", epoch=None, item_seed=0,
            scores=None, train_dataset=None):
        """One run x dataset row; items: exactly round(p * n) correct (deterministic), or ``scores``."""
        placement = placement or {"lora": "both", "ia3": "both", "adapter": "mlp"}.get(method, "default")
        params = json.dumps(method_params or {"size": method}, sort_keys=True)
        rid = f"{method}-{dataset}-{connector}-{placement}-{train_size}-{seed}-{lr}-{params}"
        if scores is None:
            k = int(round(p * self.n))
            scores = np.r_[np.ones(k), np.zeros(self.n - k)]
            np.random.default_rng(item_seed).shuffle(scores)
        self.rows.append({"run_id": rid, "model": "tiny-llava", "method": method, "method_params": params,
                          "placement": placement, "connector": connector, "train_dataset": train_dataset or dataset,
                          "train_size": train_size, "seed": seed, "lr": lr, "connector_lr": 1e-4, "epochs": epochs,
                          "dataset": dataset, "family": dataset, "group": GROUPS[dataset], "split": split,
                          "epoch": epoch, "metric": metric, "value": float(np.mean(scores)), "n": len(scores)})
        self.items += [{"run_id": rid, "dataset": dataset, "split": split, "epoch": -1 if epoch is None else epoch,
                        "metric": metric, "id": f"{dataset}-{split}-{i}", "score": float(s), "prediction": "",
                        "references": [""]} for i, s in enumerate(scores)]
        return rid

    def table(self):
        t = pd.DataFrame(self.rows)
        t["train_size"] = t["train_size"].astype("Int64")
        t["seed"] = t["seed"].astype("Int64")
        t["epoch"] = t["epoch"].astype("Int64")
        return t, pd.DataFrame(self.items)


# ---- verdict --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("est, p, expected, out", [
    ([0.1, 0.2], [0.01, 0.04], 1, "supported"),
    ([0.1, 0.2], [0.01, 0.20], 1, "inconclusive"),      # one comparison not significant
    ([0.1, -0.2], [0.01, 0.01], 1, "contradicted"),     # one significant the other way
    ([-0.1], [0.001], -1, "supported"),                 # lower is better (CHAIR)
    ([0.3, -0.3], [0.01, 0.01], [1, -1], "supported"),
    ([], [], 1, "inconclusive"),
])
def test_verdict_rule(est, p, expected, out):
    assert findings.verdict(est, p, expected) == out


# ---- statistics helpers ---------------------------------------------------------------------------------------
def test_stratified_mean_is_the_mean_of_block_means():
    a, b = np.ones(10), np.r_[np.ones(5), np.zeros(15)]  # means 1.0 and 0.25 -> 0.625 (not the pooled 0.5)
    iv = report.stratified_mean([a, b], n_resamples=500)
    assert iv.estimate == pytest.approx(0.625)
    assert iv.low <= 0.625 <= iv.high and iv.low >= 0.5  # block a never varies: its mean stays 1
    assert report.stratified_mean([a, b], n_resamples=500) == iv  # seeded


def test_stratified_contrast_weights_blocks_equally_and_tests_the_sign():
    # block 1: a - b = +1 on 10 items; block 2: a - b = 0 on 30 items -> estimate (1 + 0) / 2 = 0.5
    b1 = np.vstack([np.ones(10), np.zeros(10)])
    b2 = np.vstack([np.ones(30), np.ones(30)])
    c = report.stratified_contrast([b1, b2])
    assert c.estimate == pytest.approx(0.5) and c.n_items == 40 and c.n_blocks == 2
    assert c.p_value < 0.01 and c.ci_low > 0
    zero = report.stratified_contrast([b2])
    assert (zero.estimate, zero.p_value) == (0.0, 1.0)
    # a three-run contrast: (mid - low) - (high - mid) with scores 0, .6, .8 -> .6 - .2 = .4
    k = np.vstack([np.zeros(20), np.r_[np.ones(12), np.zeros(8)], np.r_[np.ones(16), np.zeros(4)]])
    c3 = report.stratified_contrast([k], weights=[-1, 2, -1])
    assert c3.estimate == pytest.approx(0.4)
    with pytest.raises(ValueError, match="must be a"):
        report.stratified_contrast([k], weights=[1, -1])


def test_pair_runs_matches_on_every_other_factor():
    w = World()
    w.run("lora", "sqa", 0.5, connector="tuned")
    w.run("lora", "sqa", 0.4, connector="frozen")
    w.run("lora", "sqa", 0.4, connector="frozen", seed=21)  # no tuned partner
    w.run("ia3", "sqa", 0.4, connector="frozen")  # no tuned partner
    table, _ = w.table()
    pairs = report.pair_runs(table, "connector", "tuned", "frozen")
    assert len(pairs) == 1 and pairs.loc[0, "method"] == "lora" and pairs.loc[0, "group"] == "unseen"
    assert pairs.loc[0, "value_a"] == pytest.approx(0.5)


def test_score_matrix_averages_and_cis():
    w = World()
    for ds, p in (("sqa", 0.5), ("iconqa_txt", 0.7), ("okvqa", 0.9)):
        w.run("lora", ds, p)
    table, items = w.table()
    scores = report.with_item_cis(report.primary_scores(table), items)
    m = report.score_matrix(scores, ["method"], items, text=False)
    assert m.loc[0, "Unseen avg"] == pytest.approx(0.6) and "Seen avg" not in m  # one seen column: no average
    assert m.loc[0, "Overall avg"] == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert list(m.columns[1:4]) == ["SQA (img)", "IconQA-txt", "OKVQA"]  # the paper's column order
    txt = report.score_matrix(scores, ["method"], items)
    assert txt.loc[0, "SQA (img)"].startswith("0.500 [")
    assert (scores["ci_low"] <= scores["value"]).all() and (scores["value"] <= scores["ci_high"]).all()


def test_pope_metrics_from_items():
    items = pd.DataFrame({"metric": "pope", "prediction": ["Yes", "no", "yes", "No.", "maybe", ""],
                          "references": [["yes"], ["no"], ["no"], ["yes"], ["no"], ["yes"]]})
    codes = report.pope_items(items)["code"].tolist()
    # yes/yes tp; no/no tn; yes/no fp; no/yes fn; unparsed "maybe" on a negative -> 5; empty on a positive -> 4
    assert codes == [0, 2, 1, 3, 5, 4]
    acc = report.pope_metric_ci(codes, "accuracy", n_resamples=200)
    assert acc.estimate == pytest.approx(2 / 6)
    assert report.pope_metric_ci(codes, "yes_ratio").estimate == pytest.approx(2 / 6)  # unparsed is not a yes
    assert report.pope_metric_ci(codes, "precision").estimate == pytest.approx(1 / 2)
    assert report.pope_metric_ci(codes, "recall").estimate == pytest.approx(1 / 3)  # 3 positive probes
    assert report.pope_metric_ci(codes, "parse_rate").estimate == pytest.approx(4 / 6)
    # the same figures as the metric itself
    res = compute_metric("pope", list(items["prediction"]), list(items["references"]))
    for name in ("accuracy", "yes_ratio", "precision", "recall", "f1", "parse_rate"):
        assert report.pope_metric_ci(codes, name, n_resamples=10).estimate == pytest.approx(res.extra[name])


def test_epoch_losses_read_the_train_log(tmp_path):
    log = [{"step": 1, "epoch": 0.5, "loss": 2.0}, {"step": 2, "epoch": 1.0, "loss": 1.0},
           {"step": 2, "epoch_end": 1, "held_out_loss": 1.5}, {"step": 3, "epoch": 1.5, "loss": 0.5},
           {"step": 4, "epoch": 2.0, "loss": 0.3}, {"step": 4, "epoch_end": 2, "held_out_loss": 1.7}]
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "train_log.jsonl").write_text("\n".join(json.dumps(e) for e in log))
    df = report.epoch_losses(tmp_path, ["r1", "missing"])
    assert df["train_loss"].tolist() == pytest.approx([1.5, 0.4])
    assert df["held_out_loss"].tolist() == [1.5, 1.7]
    assert len(report.train_logs(tmp_path, ["r1"])) == 4


# ---- findings on tables with known answers --------------------------------------------------------------------
def _main_table(adapter_p: float, others_p: float):
    w = World(n_items=60)
    for ds in ("sqa", "iconqa_txt", "okvqa", "vqav2"):
        for m in ("lora", "ia3", "prefix"):
            w.run(m, ds, others_p, item_seed=1)
        w.run("adapter", ds, adapter_p, item_seed=2)
    return w.table()


@pytest.mark.slow
def test_adapter_best_supported_and_contradicted():
    f = findings.finding_adapter_best(*_main_table(0.9, 0.4))
    assert f.verdict == "supported" and "best adapter" in f.ours
    # one comparison per other method and column (4 columns x 3 methods), never pooled across columns
    assert len(f.details) == 12 and (f.details["estimate"] > 0.4).all()
    assert set(f.details["column"]) == {"SQA (img)", "IconQA-txt", "OKVQA", "VQAv2"}
    assert "training randomness" in f.statistic  # one seed: the unit (test items) is said out loud
    assert findings.finding_adapter_best(*_main_table(0.2, 0.8)).verdict == "contradicted"
    assert findings.finding_adapter_best(*_main_table(0.5, 0.5)).verdict == "inconclusive"


def test_connector_helps_on_unseen():
    w = World(n_items=60)
    for m in ("lora", "adapter"):
        for ds in ("sqa", "iconqa_txt"):  # unseen: tuned much better
            w.run(m, ds, 0.8, connector="tuned", item_seed=3)
            w.run(m, ds, 0.3, connector="frozen", item_seed=4)
        w.run(m, "vqav2", 0.6, connector="tuned", item_seed=5)  # seen: no change
        w.run(m, "vqav2", 0.6, connector="frozen", item_seed=5)
    f = findings.finding_connector_unseen(*w.table())
    assert f.verdict == "supported"
    det = f.details.set_index("dataset")
    assert det.loc["sqa", "estimate"] == pytest.approx(0.5) and det.loc["vqav2", "estimate"] == 0
    assert det.loc["vqav2", "group"] == "seen" and det.loc["iconqa_txt", "group"] == "unseen"


def test_placement_finding():
    w = World(n_items=60)
    for m, best in (("lora", "both"), ("ia3", "both"), ("adapter", "mlp")):
        for pl in ("attention", "mlp", "both"):
            w.run(m, "vqav2", 0.9 if pl == best else 0.3, placement=pl, item_seed=6)
    f = findings.finding_placement(*w.table())
    assert f.verdict == "supported" and len(f.details) == 6  # 3 methods x 2 other placements x 1 column
    w2 = World(n_items=60)
    for pl in ("attention", "mlp", "both"):
        w2.run("lora", "vqav2", 0.9 if pl == "attention" else 0.3, placement=pl, item_seed=6)
    assert findings.finding_placement(*w2.table()).verdict == "contradicted"


def test_data_size_diminishing_returns():
    w = World(n_items=100)
    for m in ("lora", "adapter"):
        for n, p in ((100, 0.2), (300, 0.7), (1000, 0.8)):  # slopes: 0.5/200 >> 0.1/700
            w.run(m, "iconqa_txt", p, train_size=n, item_seed=7)
    f = findings.finding_data_size(*w.table())
    assert f.verdict == "supported" and "[100, 300, 1000]" in f.ours
    w2 = World(n_items=100)
    for n, p in ((100, 0.2), (300, 0.25), (1000, 0.9)):  # accelerating: the second step gains more per sample
        w2.run("lora", "iconqa_txt", p, train_size=n, item_seed=7)
    assert findings.finding_data_size(*w2.table()).verdict == "contradicted"


def test_adapter_stability():
    w = World()
    spread = {"adapter": [0.500, 0.501, 0.499, 0.500, 0.502], "lora": [0.3, 0.6, 0.45, 0.7, 0.2],
              "ia3": [0.4, 0.7, 0.2, 0.65, 0.35]}
    for m, values in spread.items():
        for seed, v in zip((21, 42, 63, 84, 105), values):
            w.run(m, "iconqa_txt", 0.0, seed=seed, scores=np.full(10, v))
    f = findings.finding_adapter_stable(*w.table())
    assert f.verdict == "supported" and "most stable: adapter" in f.ours
    spread["adapter"], spread["lora"] = spread["lora"], spread["adapter"]
    w2 = World()
    for m, values in spread.items():
        for seed, v in zip((21, 42, 63, 84, 105), values):
            w2.run(m, "iconqa_txt", 0.0, seed=seed, scores=np.full(10, v))
    assert findings.finding_adapter_stable(*w2.table()).verdict == "contradicted"


def test_adapter_hallucination():
    w = World(n_items=60)
    for m, acc, chair in (("adapter", 0.9, 0.1), ("lora", 0.5, 0.6), ("ia3", 0.5, 0.6)):
        for split in ("random", "popular", "adversarial"):
            w.run(m, "pope", acc, metric="pope", split=split, epoch=3, train_dataset="flickr30k", item_seed=8)
        w.run(m, "flickr30k", 0.5, metric="cider", epoch=3, item_seed=9)
        w.run(m, "flickr30k", chair, metric="chair", epoch=3, item_seed=10)
    f = findings.finding_adapter_hallucination(*w.table())
    assert f.verdict == "supported"
    assert sorted(f.details["expected"].tolist()) == [-1, -1] + [1] * 6  # CHAIR x 2 methods, POPE x 3 splits x 2


def test_evaluate_findings_reports_missing_rqs_as_not_measured():
    table, items = _main_table(0.9, 0.4)
    found = findings.evaluate_findings({"rq1_main": (table, items)})
    assert [f.key for f in found] == list(findings.CHECKS)
    by = {f.key: f for f in found}
    assert by["adapter_best"].verdict == "supported"
    assert by["placement"].verdict == "inconclusive" and by["placement"].ours.startswith("Not measured")
    tab = findings.findings_table(found)
    assert list(tab.columns) == ["RQ", "Paper's finding", "Our measurement", "Verdict", "Statistic"]
    assert len(findings.findings_details(found)) == 12


# ---- params files ---------------------------------------------------------------------------------------------
RQ_FILES = sorted(PARAMS_DIR.glob("rq*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("path", RQ_FILES, ids=lambda p: p.stem)
def test_rq_params_declare_their_design_and_expand_under_every_profile(path):
    from mllm_study.sweep import expand_sweep

    header = path.read_text().split("\nsweep:")[0]
    for word in ("Scientific factors", "Nuisance factors", "Fixed"):
        assert word in header, f"{path.name}: header must name the {word}"
    assert (ROOT / "notebooks" / f"{path.stem}.ipynb").exists()
    for profile in ("smoke", "quick", "full", "paper-llava-1.5-7b", "paper-llava-1.5-13b", "paper-qwen2-vl-7b"):
        runs = expand_sweep(study.rq_params(path, profile))
        assert runs, f"{path.name} declares no runs under {profile}"
        if profile.startswith("paper"):
            assert all(r.run.dataset.startswith("data/") for r in runs)
            assert all(all(str(d).startswith("data/") for d in r.run.eval_datasets) for r in runs)


def test_profile_blocks_override_and_replace_the_sweep(tmp_path):
    (tmp_path / "defaults.yaml").write_text((PARAMS_DIR / "defaults.yaml").read_text())
    (tmp_path / "real.yaml").write_text("_datasets: {sqa: data/scienceqa}\nrun: {model: some/model}\n")
    (tmp_path / "tiny.yaml").write_text("run: {epochs: 1}\n")
    rq = tmp_path / "rq9_x.yaml"
    rq.write_text(yaml.safe_dump({
        "sweep": {"grid": {"dataset": ["sqa", "vqav2"], "eval_datasets": [["sqa"]]}},
        "_report": {"n_ctx": 2048},
        "_profiles": {"tiny": {"run": {"train_size": 7}, "sweep": {"grid": {"seed": [1, 2]}},
                               "_report": {"n_ctx": 64}}}}))
    tiny = study.rq_params(rq, "tiny", runs="elsewhere", params_dir=tmp_path)
    # a relative folder is taken from the project root (notebooks run in notebooks/ and in the root alike)
    assert (tiny.run.train_size, tiny.run.epochs, tiny.paths.runs) == (7, 1.0, str(study.ROOT / "elsewhere"))
    assert tiny.sweep == {"grid": {"seed": [1, 2]}}
    real = study.rq_params(rq, "real", params_dir=tmp_path)
    assert real.run.model == "some/model" and real.run.train_size is None
    assert real.sweep["grid"] == {"dataset": ["data/scienceqa", "vqav2"], "eval_datasets": [["data/scienceqa"]]}
    assert study.report_options(rq, "tiny") == {"n_ctx": 64} and study.report_options(rq, "real") == {"n_ctx": 2048}


def test_embedded_profiles_share_the_run_settings_across_rq_files():
    # runs are shared between RQs only if the common settings agree (same spec -> same run id)
    for profile in ("smoke", "quick", "full"):
        seen = {}
        for path in RQ_FILES:
            p = study.rq_params(path, profile)
            for key in ("train_size", "test_size", "method_presets"):
                if path.stem in ("rq4_data_size",) and key == "train_size":
                    continue  # RQ4 varies it
                if path.stem == "rq6_generalization" and key == "test_size":
                    continue  # RQ6 runs are its own (per-epoch evaluation on six datasets)
                seen.setdefault(key, {})[path.stem] = json.dumps(getattr(p.run, key), sort_keys=True)
        for key, values in seen.items():
            assert len(set(values.values())) == 1, f"{profile}: run.{key} differs across RQ files: {values}"


# ---- rendering, index, caching --------------------------------------------------------------------------------
def test_write_index_lists_reports_with_parameters_and_version(tmp_path):
    for stem, status in (("rq1_main", "ok"), ("rq2_placement", "failed")):
        d = tmp_path / stem
        d.mkdir()
        (d / "quick.html").write_text("<html></html>")
        (d / "quick.json").write_text(json.dumps({
            "parameters": {"profile": "quick", "params_file": f"params/{stem}.yaml", "cache": "/x/.cache",
                           "runs": "/x/runs", "train": False},
            "status": status, "error": None if status == "ok" else "ValueError: boom in cell 3", "code_version": "0.1.0+gabc", "date": "2026-01-01T00:00:00+00:00", "seconds": 3.2,
            "key": "k"}))
    out = report.write_index(tmp_path)
    page = out.read_text()
    assert out == tmp_path / "index.html"
    assert 'href="rq1_main/quick.html"' in page and 'href="rq2_placement/quick.html"' in page
    assert "params/rq1_main.yaml" in page and "0.1.0+gabc" in page and "2026-01-01" in page
    assert "class='failed'" in page
    assert "boom in cell 3" in page  # the index shows why a report failed
    assert report.report_is_current(tmp_path / "rq1_main" / "quick.html", "k")
    assert not report.report_is_current(tmp_path / "rq1_main" / "quick.html", "other")
    assert not report.report_is_current(tmp_path / "rq2_placement" / "quick.html", "k")  # failed: render again


def test_code_version_reads_git_without_git(tmp_path):
    from mllm_study import __version__

    assert report.code_version(tmp_path) == __version__  # no .git
    (tmp_path / ".git" / "refs" / "heads").mkdir(parents=True)
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / ".git" / "refs" / "heads" / "main").write_text("0123456789abcdef0123\n")
    assert report.code_version(tmp_path) == f"{__version__}+g0123456789"


def test_notebook_list_is_in_rq_order():
    stems = study.list_notebooks()
    assert stems[0] == "rq1_main" and stems[-1] == "rq8_summary" and len(stems) == 8
    with pytest.raises(ValueError, match="unknown notebook"):
        study.run_study("smoke", notebooks=["rq9_nothing"])


# ---- the unit of replication, validity flags, formatting (issue 14) -------------------------------------------
def test_replicated_contrast_on_items_is_the_paired_t_of_scipy():
    from scipy import stats as ss

    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 2, 50).astype(float), rng.integers(0, 2, 50).astype(float)
    ids = [f"i{k}" for k in range(50)]
    c = report.replicated_contrast([pd.Series(a - b, index=ids)])
    ref = ss.ttest_rel(a, b)
    half = ss.t.ppf(0.975, 49) * np.std(a - b, ddof=1) / np.sqrt(50)
    assert c.p_value == pytest.approx(ref.pvalue) and c.estimate == pytest.approx(np.mean(a - b))
    assert (c.ci_low, c.ci_high) == pytest.approx((np.mean(a - b) - half, np.mean(a - b) + half))
    assert c.unit.startswith("test items") and "training randomness" in c.unit and c.n_units == 50


def test_replicated_contrast_with_seeds_replicates_over_seeds():
    from scipy import stats as ss

    # two settings x three seeds; per seed the mean over settings of the mean item difference
    ids = [f"i{k}" for k in range(4)]
    d = {21: [0.10, 0.30], 42: [0.20, 0.20], 63: [0.50, 0.10]}
    diffs, seeds = [], []
    for seed, vals in d.items():
        for v in vals:
            diffs.append(pd.Series(np.full(4, v) + np.array([0.1, -0.1, 0.05, -0.05]), index=ids))
            seeds.append(seed)
    c = report.replicated_contrast(diffs, seeds)
    per_seed = np.array([0.2, 0.2, 0.3])  # (0.1 + 0.3) / 2, (0.2 + 0.2) / 2, (0.5 + 0.1) / 2
    ref = ss.ttest_1samp(per_seed, 0.0)
    assert c.unit == contrasts.UNIT_SEEDS and c.n_units == 3 and c.n_blocks == 6
    assert c.estimate == pytest.approx(per_seed.mean()) and c.p_value == pytest.approx(ref.pvalue)
    lo, hi = ss.t.interval(0.95, 2, loc=per_seed.mean(), scale=ss.sem(per_seed))
    assert (c.ci_low, c.ci_high) == pytest.approx((lo, hi))


@pytest.mark.parametrize("seed", range(12))
def test_the_ci_beside_a_p_agrees_with_it(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    d = pd.Series(rng.normal(rng.normal(0, 0.3), 1, n))
    c = report.replicated_contrast([d])
    assert (c.p_value < 0.05) == (c.ci_low > 0 or c.ci_high < 0)


def _flagged_main(flag_columns=("sqa", "iconqa_txt", "okvqa", "vqav2"), reason="collapsed on 'a'"):
    table, items = _main_table(0.9, 0.4)
    adapter = table[table["method"] == "adapter"]
    flags = {(r, d): reason for r, d in zip(adapter["run_id"], adapter["dataset"]) if d in flag_columns}
    return table, items, flags


@pytest.mark.parametrize("reason", ["collapsed on 'a'", "at or below chance (0.250)", "not above question-only",
                                    "low parse rate", "unconverged (doubled budget moves the score +0.050)",
                                    "repeated words", "only 10% of captions name an object"])
@pytest.mark.slow
def test_a_finding_on_flagged_runs_is_not_measurable_with_the_reason(reason):
    table, items, flags = _flagged_main(reason=reason)
    f = findings.finding_adapter_best(table, items, flags=flags)
    assert f.verdict == findings.NOT_MEASURABLE and reason.split(" (")[0].split(" on ")[0] in f.statistic
    assert f.details["estimate"].isna().all() and f.details["not_measurable"].str.contains(reason, regex=False).all()


def test_flagged_columns_are_left_out_and_named_the_rest_decides():
    table, items, flags = _flagged_main(flag_columns=("sqa",))
    f = findings.finding_adapter_best(table, items, flags=flags)
    assert f.verdict == "supported" and "SQA (img)" in f.statistic and "left out" in f.statistic
    measured = f.details.dropna(subset=["estimate"])
    assert len(measured) == 9 and "sqa" not in set(measured["dataset"])
    assert measured["p_holm"].notna().all()


def test_flags_from_figures_keeps_only_flagged_measurements():
    figs = pd.DataFrame([{"run": "r1", "column": "sqa", "flag": "-"},
                         {"run": "r1", "column": "pope/random", "flag": "collapsed on 'yes'"}])
    assert findings.flags_from_figures(figs) == {("r1", "pope/random"): "collapsed on 'yes'"}
    assert findings.flags_from_figures(None) == {}


def test_no_finding_pools_columns_of_different_units():
    # CIDEr on flickr30k: adapter far behind (degenerate captions); accuracy columns: adapter slightly ahead
    w = World(n_items=60)
    for ds in ("sqa", "iconqa_txt"):
        w.run("lora", ds, 0.4, item_seed=1)
        w.run("adapter", ds, 0.9, item_seed=2)
    rng = np.random.default_rng(0)
    w.run("lora", "flickr30k", 0, metric="cider", scores=rng.uniform(2, 5, 60))
    w.run("adapter", "flickr30k", 0, metric="cider", scores=rng.uniform(0, 0.2, 60))
    f = findings.finding_adapter_best(*w.table())
    det = f.details.set_index("dataset")
    assert det.loc["flickr30k", "estimate"] < -2 and det.loc["sqa", "estimate"] == pytest.approx(0.5)
    assert f.verdict == "contradicted"  # flickr30k counts as its own comparison, not as weight in a pooled mean
    flags = {(r, "flickr30k"): "repeated words" for r in set(w.table()[0]["run_id"]) if "flickr30k" in r}
    assert findings.finding_adapter_best(*w.table(), flags=flags).verdict == "supported"


def test_stability_leaves_out_flagged_runs():
    w = World()
    spread = {"adapter": [0.500, 0.501, 0.499, 0.500, 0.502], "lora": [0.3, 0.6, 0.45, 0.7, 0.2]}
    for m, values in spread.items():
        for seed, v in zip((21, 42, 63, 84, 105), values):
            w.run(m, "iconqa_txt", 0.0, seed=seed, scores=np.full(10, v))
    table, items = w.table()
    flags = {(r, "iconqa_txt"): "collapsed on '2'" for r in table.loc[table["method"] == "adapter", "run_id"]}
    f = findings.finding_adapter_stable(table, items, flags=flags)
    assert f.verdict == findings.NOT_MEASURABLE and "collapsed on '2'" in f.statistic


def test_p_values_read_right_in_prose_and_tables():
    assert report.fmt_p(0.0004) == "< 0.001" and report.fmt_p(0.0004, "=") == "< 0.001"
    assert report.fmt_p(0.0114, "=") == "= 0.011" and report.fmt_p(0.0114) == "0.011"
    f = findings.finding_adapter_best(*_main_table(0.9, 0.4))
    assert "= <" not in f.statistic and "p_Holm < 0.001" in f.statistic


def test_friedman_needs_five_blocks():
    w = World()
    for ds in ("sqa", "iconqa_txt"):
        for m, p in (("lora", 0.3), ("ia3", 0.5), ("adapter", 0.7)):
            w.run(m, ds, p)
    res, msg = report.friedman_ranks(report.primary_scores(w.table()[0]))
    assert res is None and "not shown" in msg and "2 complete block" in msg


def test_one_colour_per_method_everywhere():
    a = report.method_colors(["adapter", "lora"])
    b = report.method_colors(["lora", "ia3", "prefix", "adapter"])
    assert a["adapter"] == b["adapter"] and a["lora"] == b["lora"]
    assert len({tuple(v) for v in b.values()}) == 4


def test_group_averages_never_mix_cider_with_accuracies():
    w = World()
    for ds, p in (("sqa", 0.5), ("iconqa_txt", 0.7)):
        w.run("lora", ds, p)
    w.run("lora", "flickr30k", 0, metric="cider", scores=np.full(40, 3.0))
    table, items = w.table()
    m = report.score_matrix(report.primary_scores(table), ["method"], items, text=False)
    assert m.loc[0, "Unseen avg"] == pytest.approx(0.6) and m.loc[0, "Flickr30k"] == pytest.approx(3.0)


def test_report_paths_are_relative_to_the_project():
    assert report.project_path(ROOT / "params" / "rq1_main.yaml") == "params/rq1_main.yaml"
    assert report.project_path("/somewhere/else/runs") == "else/runs"


def test_design_tables_show_the_rates_used_not_default():
    table = study.design_table(PARAMS_DIR / "rq1_main.yaml", "quick")
    lr = table.set_index("factor").loc["lr", "values"]
    assert "default" not in lr and "lora " in lr and "e-" in lr
