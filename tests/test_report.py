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


def test_data_size_reads_the_equal_steps_design_when_it_was_run():
    """Equal epochs: the score grows with the size, but so do the steps (50 / 95 / 190); equal steps (95 at every
    size): no gain. The finding reads the design that is not confounded, and says so."""
    import math

    w = World(n_items=100)
    for n, p, epochs in ((150, 0.2, 5.0), (300, 0.6, 5.0), (600, 0.7, 5.0), (150, 0.6, 9.5), (600, 0.6, 2.5)):
        rid = w.run("lora", "iconqa_txt", p, train_size=n, epochs=epochs, item_seed=3)
        w.rows[-1]["run_id"] = f"{rid}-e{epochs}"  # the helper's ids leave the epochs out: one run each
        for it in w.items[-w.n:]:
            it["run_id"] = f"{rid}-e{epochs}"
    table, items = w.table()
    confounded = findings.finding_data_size(table, items)  # no steps recorded: the equal-epochs pairs only
    assert confounded.verdict == "supported" and "Equal-steps" not in confounded.ours
    table["train_steps"] = [math.ceil(math.ceil(n / 16) * e) for n, e in zip(table["train_size"], table["epochs"])]
    f = findings.finding_data_size(table, items)
    assert f.ours.startswith("Equal-steps design (every size trained for 95 optimizer steps")
    assert f.verdict != "supported" and "[150, 300, 600]" in f.ours
    gains = f.details[f.details["comparison"].str.startswith("n=600 - n=150")]
    assert len(gains) == 1 and abs(gains["estimate"].iloc[0]) < 0.05


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
    # a flagged captioner (repeated phrases) is not interpreted on CHAIR, nor are POPE probes it collapsed on
    table, items = w.table()
    runs = table.loc[table["method"] == "adapter", "run_id"].unique()
    flags = {(r, "flickr30k"): "repeated phrases (50% of captions vs 6% of references)" for r in runs}
    flags.update({(r, f"pope/{s}"): "collapsed on 'no'" for r in runs for s in ("random", "popular", "adversarial")})
    f = findings.finding_adapter_hallucination(table, items, flags=flags)
    assert f.verdict == findings.NOT_MEASURABLE and "repeated phrases" in f.statistic
    assert f.details["estimate"].isna().all()


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


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_design_tables_list_only_the_levels_the_profile_runs(profile):
    """The base model zero-shot (method none) trains nothing: its default connector (frozen), epochs and evaluation
    schedule are not levels of the design. RQ7 runs every trained method with the connector tuned, after every
    epoch; RQ6 trains its one epoch count."""
    from mllm_study.sweep import expand_sweep

    for stem in ("rq7_hallucination", "rq6_generalization"):
        table = study.design_table(PARAMS_DIR / f"{stem}.yaml", profile).set_index("factor")
        trained = [p.run for p in expand_sweep(study.rq_params(PARAMS_DIR / f"{stem}.yaml", profile))
                   if p.run.method != "none"]
        for key in ("connector", "epochs", "eval_every_epoch"):
            planned = {str(getattr(r, key)).lower() for r in trained}
            shown = set(table.loc[key, "values"].split(", "))
            assert shown == planned and table.loc[key, "levels"] == len(planned), (stem, key, shown, planned)
        assert "none" in table.loc["method", "values"]  # the reference itself stays listed
    rq7 = study.design_table(PARAMS_DIR / "rq7_hallucination.yaml", profile).set_index("factor")
    assert rq7.loc["connector", "values"] == "tuned" and rq7.loc["eval_every_epoch", "values"] == "true"


# ---- chance and baseline lines in the score figures ------------------------------------------------------------
def _baseline_figures() -> pd.DataFrame:
    """A validity figures table as :func:`mllm_study.validity.report_section` returns it: the world's baselines per
    column in ``attrs['world']`` (a caption column without any, a POPE split keyed with a slash)."""
    figures = pd.DataFrame(columns=["run", "column", "score", "chance", "question-only", "parse rate", "flag"])
    figures.attrs["world"] = {
        "sqa": {"chance": 0.45, "gold_majority": 0.5, "question_only": 0.40, "kind": "mc", "metric": "mc_accuracy"},
        "vizwiz": {"chance": 0.25, "gold_majority": 0.2, "question_only": 0.30, "kind": "open", "metric": "vqa_score"},
        "flickr30k": {"chance": None, "gold_majority": None, "question_only": None, "kind": "caption",
                      "metric": "cider"},
        "pope/random": {"chance": 0.5, "gold_majority": 0.5, "question_only": 0.7, "kind": "yesno", "metric": "pope"}}
    return figures


def _lines(ax):
    """(y, colour, label) of every horizontal line drawn on ``ax`` (axhline and hlines alike)."""
    import matplotlib.colors as mcolors

    out = []
    for line in ax.get_lines():
        ys = set(np.round(np.asarray(line.get_ydata(), dtype=float), 9))
        if len(ys) == 1:
            out.append((ys.pop(), mcolors.to_hex(line.get_color()), line.get_label()))
    for coll in ax.collections:
        for seg in coll.get_segments():
            if len(seg) == 2 and seg[0][1] == seg[1][1]:
                out.append((round(float(seg[0][1]), 9), mcolors.to_hex(coll.get_color()[0]), coll.get_label()))
    return out


def test_baseline_lines_sit_at_each_columns_chance_and_question_only():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = _baseline_figures()
    sqa, viz = report.column_label("sqa"), report.column_label("vizwiz")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0.6, 0.7], label="lora")
    ax.legend(title="Method")
    drawn = report.baseline_lines(ax, figures, sqa)
    assert drawn == {sqa: {"chance": 0.45, "question_only": 0.40}}
    lines = [(y, label) for y, _, label in _lines(ax) if y in (0.45, 0.4)]
    assert sorted(lines) == [(0.4, report.BASELINES["question_only"]), (0.45, report.BASELINES["chance"])]
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "Method"  # the hue legend keeps its title and gains the two baselines
    assert [t.get_text() for t in legend.get_texts()] == ["lora", report.BASELINES["chance"],
                                                          report.BASELINES["question_only"]]
    # several columns on one panel: every column's lines, one legend entry per kind, each line named at its end
    fig, ax = plt.subplots()
    drawn = report.baseline_lines(ax, figures, [sqa, viz, report.column_label("flickr30k")])
    assert drawn == {sqa: {"chance": 0.45, "question_only": 0.40}, viz: {"chance": 0.25, "question_only": 0.30}}
    assert sorted(y for y, _, _ in _lines(ax)) == [0.25, 0.3, 0.4, 0.45]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [report.BASELINES["chance"],
                                                                  report.BASELINES["question_only"]]
    assert sorted(t.get_text() for t in ax.texts) == sorted([sqa, sqa, viz, viz])
    # a key with a slash (a POPE split) and a column without baselines (captions) or no figures at all: nothing
    fig, ax = plt.subplots()
    assert report.baseline_lines(ax, figures, "pope/random") == {"pope/random": {"chance": 0.5, "question_only": 0.7}}
    assert report.baseline_lines(plt.subplots()[1], figures, report.column_label("flickr30k")) == {}
    assert report.baseline_lines(plt.subplots()[1], None, sqa) == {}
    # the categorical form (RQ1: columns along x): a short line over each column's position at its own value
    fig, ax = plt.subplots()
    report.chance_lines(ax, figures, [viz, sqa])
    segs = sorted((round(float(s[0][0]), 3), round(float(s[0][1]), 3)) for c in ax.collections
                  for s in c.get_segments())
    assert segs == [(-0.4, 0.25), (-0.4, 0.3), (0.6, 0.4), (0.6, 0.45)]
    plt.close("all")


# ---- RQ4: equal-steps beside equal-epochs, and the log-linear test of diminishing returns ----------------------
def _size_series(means_by_design: dict, n_items: int = 60, seed: int = 0):
    """Scores and items of one method on one column: per design a list of (size, epochs, steps, mean); the medium
    run (300 at 5 epochs, 95 steps) is one run shared by both designs. Items are 0/1 with exactly the mean."""
    rng = np.random.default_rng(seed)
    rows, items, done = [], [], {}
    for design, series in means_by_design.items():
        for size, epochs, steps, mean in series:
            rid = done.get((size, epochs)) or f"lora-n{size}-e{epochs}"
            if (size, epochs) in done:
                continue
            done[(size, epochs)] = rid
            k = int(round(mean * n_items))
            scores = np.array([1.0] * k + [0.0] * (n_items - k))
            rng.shuffle(scores)
            rows.append({"run_id": rid, "model": "tiny", "method": "lora", "method_params": "{}", "placement": "both",
                         "connector": "tuned", "vision": "frozen", "train_dataset": "sqa", "train_size": size,
                         "seed": 42, "lr": 1e-3, "connector_lr": 1e-4, "epochs": float(epochs), "dataset": "sqa",
                         "split": "test", "epoch": None, "metric": "mc_accuracy", "value": scores.mean(),
                         "train_steps": steps, "column": report.column_label("sqa")})
            items += [{"run_id": rid, "dataset": "sqa", "split": "test", "epoch": -1, "metric": "mc_accuracy",
                       "id": f"q{i}", "score": s, "prediction": "A", "references": ["A"]} for i, s in enumerate(scores)]
    return pd.DataFrame(rows), pd.DataFrame(items)


def test_log_linear_weights_give_the_ols_slope_and_the_largest_sizes_residual():
    sizes = [150, 300, 600, 3000]
    y = np.array([0.2, 0.3, 0.35, 0.4])
    w, v = report.log_linear_weights(sizes)
    b, a = np.polyfit(np.log10(sizes), y, 1)
    assert w @ y == pytest.approx(b) and v @ y == pytest.approx(y[-1] - (a + b * np.log10(3000)))
    line = 0.1 + 0.25 * np.log10(sizes)  # exactly log-linear: slope 0.25 per tenfold, no residual
    assert w @ line == pytest.approx(0.25) and v @ line == pytest.approx(0.0, abs=1e-12)
    assert not report.log_linear_weights([10, 100])[1].any()  # two sizes: a line fits exactly
    with pytest.raises(ValueError):
        report.log_linear_weights([10, 10])


def test_size_designs_tell_equal_steps_from_equal_epochs_and_the_fit_tests_the_curvature():
    # equal epochs: 5 epochs at every size (50 / 95 / 190 steps); equal steps: 95 steps at every size
    flat_high = {report.EQUAL_EPOCHS: [(150, 5, 50, 0.30), (300, 5, 95, 0.50), (600, 5, 190, 0.55)],
                 report.EQUAL_STEPS: [(150, 9.5, 95, 0.40), (300, 5, 95, 0.50), (600, 2.5, 95, 0.60)]}
    scores, items = _size_series(flat_high)
    designed = report.size_designs(scores)
    got = {d: sorted(zip(g["train_size"], g["epochs"], g["train_steps"])) for d, g in designed.groupby("design")}
    assert got == {report.EQUAL_EPOCHS: [(150, 5.0, 50), (300, 5.0, 95), (600, 5.0, 190)],
                   report.EQUAL_STEPS: [(150, 9.5, 95), (300, 5.0, 95), (600, 2.5, 95)]}
    fits = report.log_linear_fits(designed, items).set_index("design")
    x = np.log10([150, 300, 600])
    for design, series in flat_high.items():
        b, a = np.polyfit(x, [m for *_, m in series], 1)
        assert fits.loc[design, "slope"] == pytest.approx(b)
        assert fits.loc[design, "residual"] == pytest.approx(series[-1][-1] - (a + b * x[-1]))
    # equal epochs flattens (0.30 -> 0.50 -> 0.55 on doubling sizes): the largest size lies below the line, and
    # the CI comes from the same t as the p (one seed: over items)
    ee = fits.loc[report.EQUAL_EPOCHS]
    assert ee["residual"] < 0 and ee["reading"].startswith("on the") == (ee["res_high"] >= 0)
    assert (ee["res_high"] < 0) == (ee["res_p"] < 0.05) and "test items" in ee["unit"]
    es = fits.loc[report.EQUAL_STEPS]  # exactly log-linear (equal gains per doubling): on the fit
    assert es["residual"] == pytest.approx(0.0, abs=1e-12) and es["reading"].startswith("on the log-linear fit")
    assert fits.loc[report.EQUAL_STEPS, "steps"] == "95, 95, 95"
    # a flagged measurement leaves its series out with the reason
    flagged = report.log_linear_fits(designed, items, flags={("lora-n600-e2.5", "sqa"): "collapsed on 'A'"})
    es = flagged.set_index("design").loc[report.EQUAL_STEPS]
    assert es["reading"].startswith("not measurable") and "collapsed on 'A'" in es["reading"]
    # only the equal-epochs design run: no equal-steps rows
    only = scores[scores["epochs"] == 5.0]
    assert set(report.size_designs(only)["design"]) == {report.EQUAL_EPOCHS}


def test_a_strongly_flattening_curve_reads_below_the_log_linear_fit():
    series = {report.EQUAL_EPOCHS: [(100, 3, 10, 0.10), (1000, 3, 100, 0.60), (10000, 3, 1000, 0.62)]}
    scores, items = _size_series(series, n_items=200)
    fits = report.log_linear_fits(report.size_designs(scores), items)
    row = fits.iloc[0]
    assert row["slope"] > 0 and row["ci_low"] > 0 and row["res_high"] < 0
    assert row["reading"].startswith("below the log-linear fit") and row["res_p_holm"] < 0.05


def test_with_parsed_reads_each_prediction_in_its_columns_format(smoke_world):
    """RQ6's parse rate per epoch: the validity instrument's parsers per column (a letter or option for multiple
    choice, a number for fill-in-the-blank, a non-empty answer after VQA normalisation for open VQA)."""
    from mllm_study.data import load_split

    rows = []
    cases = {"sqa": [("A", 1.0), ("the answer is B", 1.0), ("zzz qqq", 0.0), ("", 0.0)],
             "iconqa_blank": [("3", 1.0), ("three apples", 0.0)],
             "vqav2": [("red", 1.0), ("a", 0.0), ("", 0.0)]}
    metrics = {"sqa": "mc_accuracy", "iconqa_blank": "accuracy", "vqav2": "vqa_score"}
    for dataset, preds in cases.items():
        recs = load_split(smoke_world / dataset, "test", check_images=False)
        for rec, (pred, _) in zip(recs, preds):
            rows.append({"run_id": "r", "dataset": dataset, "split": "test", "epoch": 1, "metric": metrics[dataset],
                         "id": rec["id"], "score": 0.0, "prediction": pred, "references": []})
    items = pd.DataFrame(rows)
    got = report.with_parsed(items, smoke_world)
    assert got["parsed"].tolist() == [v for preds in cases.values() for _, v in preds]
    assert report.with_parsed(items, None)["parsed"].isna().all()  # real data: no world, no formats


@pytest.mark.parametrize("profile", ["smoke", "quick", "full", "paper-llava-1.5-7b"])
def test_rq4_equal_steps_runs_train_the_medium_sizes_steps_and_are_no_convergence_probes(profile):
    """Every size of RQ4's equal-steps design trains the medium size's optimizer steps (ceil of steps per epoch x
    epochs, on one process; within 1% at real scale), and no run is another's exact doubling of the epochs (the
    validity instrument's convergence check reads such a pair as a doubled-budget probe)."""
    import math

    from mllm_study.sweep import expand_sweep

    runs = [p.run for p in expand_sweep(study.rq_params(PARAMS_DIR / "rq4_data_size.yaml", profile))]
    steps = lambda r: math.ceil(math.ceil(math.ceil(r.train_size / r.batch_size) / r.grad_accum) * r.epochs)  # noqa
    by: dict = {}
    for r in runs:
        by.setdefault((r.method, r.dataset), []).append(r)
    for key, rs in by.items():
        sizes = sorted({r.train_size for r in rs})
        mid = sizes[len(sizes) // 2]
        ref = min((r for r in rs if r.train_size == mid), key=lambda r: r.epochs)
        target = steps(ref)
        for n in sizes:
            got = [steps(r) for r in rs if r.train_size == n]
            assert any(abs(s - target) <= 0.01 * target for s in got), (profile, key, n, got, target)
        for a in rs:
            for b in rs:
                if a.train_size == b.train_size and a is not b:
                    assert not math.isclose(b.epochs, 2 * a.epochs), (profile, key, a.train_size, a.epochs, b.epochs)


def test_tables_show_methods_by_their_declared_display_names():
    from mllm_study.method_info import method_info
    from mllm_study.plots import pretty

    df = pd.DataFrame({"method": ["lora", "ia3", "none", "mystery"], "value": [0.5, 0.4, 0.3, 0.2]})
    out = pretty(df)
    assert list(out["Method"]) == [method_info("lora").display, method_info("ia3").display,
                                   method_info("none").display, "mystery"]
    assert list(out["Method"])[:2] == ["LoRA", "IA3"] and list(df["method"]) == ["lora", "ia3", "none", "mystery"]
    wide = pretty(df.pivot_table(index="value", columns="method", values="value").reset_index())
    assert "LoRA" in wide.columns and "mystery" in wide.columns and "lora" not in wide.columns
