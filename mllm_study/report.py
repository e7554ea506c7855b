"""Report helpers: the tidy results table -> scores with item-bootstrap CIs, paired comparisons, efficiency.

Usage: ``scores = with_item_cis(primary_scores(table), load_items(runs_dir, primary_scores(table)))``

Uncertainty conventions (STUDY.md: every number carries its uncertainty):
- one run's score on one dataset: percentile bootstrap over its test items (:func:`with_item_cis`);
- an average over datasets (unseen / seen / overall): stratified bootstrap, items resampled within each dataset,
  datasets weighted equally like the paper's plain mean (:func:`stratified_mean`);
- a difference between two settings: item-paired, datasets (or seeds) as equally weighted blocks, percentile
  bootstrap CI and a sign-flip permutation p (:func:`stratified_contrast`), Holm-corrected within a table;
- across seeds: Student-t intervals (:func:`mllm_study.stats.summarize`).
Test items are the same for every run of a dataset (the test subsample has a fixed seed), which is what makes
item pairing valid. Caveat: items sharing an image are treated as independent (intervals slightly too narrow).

Display and figures live in :mod:`mllm_study.plots`, notebook execution and HTML in :mod:`mllm_study.render`;
both are re-exported here, so a notebook needs only ``from mllm_study import report as rp``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import stats
from .plots import (METHOD_ORDER, PRETTY, _method_key, ci_plot, fmt_ci, fmt_p, forest_plot, pretty, say,
                    setup_notebook, show, verdict_md)
from .render import (NotebookResult, code_version, execute_notebook, render_html, report_is_current,
                     write_index)

__all__ = [
    # scores, items and contrasts
    "FAMILY_ORDER", "MATCH_KEYS", "column_label", "primary_scores", "final_epoch", "load_items", "with_item_cis",
    "stratified_mean", "Contrast", "stratified_contrast", "contrast_items", "pair_runs", "compare_pairs",
    "pairwise", "versus_base", "winners", "score_matrix", "friedman_ranks", "flops_for_runs", "size_label",
    "train_logs", "epoch_losses", "pope_items", "pope_metric_ci",
    # re-exported from plots and render
    "METHOD_ORDER", "PRETTY", "setup_notebook", "fmt_ci", "fmt_p", "pretty", "show", "say", "verdict_md", "ci_plot",
    "forest_plot", "NotebookResult", "code_version", "execute_notebook", "render_html", "report_is_current",
    "write_index",
]


FAMILY_ORDER = ["sqa", "vizwiz", "iconqa_txt", "iconqa_blank", "flickr30k", "okvqa", "ocrvqa", "vqav2"]


GROUP_LABELS = {"unseen": "Unseen avg", "seen": "Seen avg", "all": "Overall avg"}


# Factors that identify a setting; two runs are "the same but for X" when they agree on all of these except X.
MATCH_KEYS = ["model", "method", "method_params", "placement", "connector", "train_dataset", "train_size", "seed",
              "lr", "connector_lr", "epochs", "dataset", "split"]


def column_label(family: str) -> str:
    """The paper's column label of a family ("SQA (img)"); unknown names pass through."""
    from .world.tasks import FAMILIES, POPE

    infos = {**FAMILIES, "pope": POPE}
    return infos[family].column if family in infos else str(family)


def final_epoch(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of each run's last evaluation (runs without per-epoch evaluation have epoch NA = final)."""
    if df.empty:
        return df
    ep = df["epoch"].astype("Float64").fillna(np.inf).astype(float)
    last = ep.groupby([df["run_id"], df["dataset"], df["split"]]).transform("max")
    return df[ep == last]


def primary_scores(table: pd.DataFrame, split: str | None = "test", own_only: bool = True,
                   final_only: bool = True) -> pd.DataFrame:
    """One row per run x dataset (x split x epoch): the dataset's primary metric (not ``x.y`` extras, not CHAIR).

    Args:
        table: the tidy results table.
        split: keep this split (None: all, e.g. POPE's three).
        own_only: only the run's own dataset (drop ``eval_datasets`` rows).
        final_only: only each run's last evaluation.
    """
    t = table[~table["metric"].str.contains(".", regex=False) & (table["metric"] != "chair")]
    if split is not None:
        t = t[t["split"] == split]
    if own_only:
        t = t[t["dataset"] == t["train_dataset"]]
    if final_only:
        t = final_epoch(t)
    t = t.copy()
    t["column"] = [column_label(f) if isinstance(f, str) else d for f, d in zip(t.get("family", t["dataset"]),
                                                                                 t["dataset"])]
    return t.reset_index(drop=True)


def _epoch_key(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce").fillna(-1).astype(int)


def load_items(runs_dir: str | Path, scores: pd.DataFrame) -> pd.DataFrame:
    """Per-item scores of the rows of ``scores`` (run_id, dataset, split, epoch, metric), from predictions.jsonl.

    Returns:
        Columns run_id, dataset, split, epoch (-1 = final-only evaluation), metric, id, score, prediction,
        references.
    """
    cols = ["run_id", "dataset", "split", "epoch", "metric", "id", "score", "prediction", "references"]
    out = []
    for rid, grp in scores.groupby("run_id", sort=False):
        path = Path(runs_dir) / rid / "predictions.jsonl"
        if not path.exists():
            continue
        df = pd.DataFrame([json.loads(x) for x in path.read_text().splitlines() if x.strip()])
        if df.empty:
            continue
        df["epoch"] = _epoch_key(df["epoch"]) if "epoch" in df else -1
        want = grp[["dataset", "split", "epoch", "metric"]].assign(epoch=lambda g: _epoch_key(g["epoch"]))
        df = df.merge(want.drop_duplicates(), on=["dataset", "split", "epoch", "metric"])
        df["run_id"] = rid
        out.append(df.reindex(columns=cols))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=cols)


def _item_array(items: pd.DataFrame, rid: str, dataset: str, split: str = "test", epoch: int | None = None,
                metric: str | None = None) -> pd.Series:
    sel = (items["run_id"] == rid) & (items["dataset"] == dataset) & (items["split"] == split)
    if epoch is not None:
        sel &= items["epoch"] == epoch
    sel &= (items["metric"] == metric) if metric is not None else (items["metric"] != "chair")
    s = items.loc[sel]
    if epoch is None and not s.empty:  # the last evaluation (-1 marks a run evaluated only at the end)
        s = s[s["epoch"] == s["epoch"].max()]
    return s.set_index("id")["score"].astype(float)


def with_item_cis(scores: pd.DataFrame, items: pd.DataFrame, confidence: float = 0.95,
                  n_resamples: int = 1000) -> pd.DataFrame:
    """Add ``ci_low``/``ci_high``: percentile bootstrap over each row's test items (NaN with < 2 items)."""
    lows, highs = [], []
    for row in scores.itertuples():
        ep = int(_epoch_key(pd.Series([row.epoch])).iloc[0])
        x = _item_array(items, row.run_id, row.dataset, row.split, ep, row.metric)
        if len(x) < 2:
            lows.append(math.nan)
            highs.append(math.nan)
            continue
        iv = stats.bootstrap_ci(x.to_numpy(), confidence=confidence, n_resamples=n_resamples, seed=0)
        lows.append(iv.low)
        highs.append(iv.high)
    return scores.assign(ci_low=lows, ci_high=highs)


def stratified_mean(arrays: Sequence[np.ndarray], confidence: float = 0.95, n_resamples: int = 2000,
                    seed: int = 0) -> stats.Interval:
    """Mean of block means (e.g. the unseen average over datasets) with a stratified percentile bootstrap CI.

    Formula: θ = (1/B) Σ_b mean(x_b); each resample draws n_b items with replacement inside every block b.
    """
    arrays = [np.asarray(a, dtype=float) for a in arrays if len(a)]
    if not arrays:
        raise ValueError("stratified_mean needs at least one non-empty block")
    rng = np.random.default_rng(seed)
    est = float(np.mean([a.mean() for a in arrays]))
    boot = np.mean([a[rng.integers(0, a.size, (n_resamples, a.size))].mean(axis=1) for a in arrays], axis=0)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha]) if all(a.size > 1 for a in arrays) else (math.nan, math.nan)
    return stats.Interval(est, float(low), float(high), "stratified-bootstrap", int(sum(a.size for a in arrays)))


@dataclass
class Contrast:
    """An item-paired contrast pooled over equally weighted blocks."""

    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    effect_size: float  # Cohen's d_z of the (block-weighted) item differences
    n_items: int
    n_blocks: int


def stratified_contrast(blocks: Sequence[np.ndarray], weights: Sequence[float] = (1.0, -1.0),
                        confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Contrast:
    """Contrast Σ_k w_k mean(run_k) of item-aligned runs, averaged over blocks, with CI and p.

    Args:
        blocks: per block (dataset, seed, ...) a (k x n_b) array: k runs' scores on the same n_b items.
        weights: the contrast (default a - b).

    Returns:
        :class:`Contrast`. CI: percentile bootstrap, items resampled jointly across runs within each block.
        p: for a two-run difference, the sign-flip permutation test on item differences weighted so that their
        mean is the block-weighted estimate (d_i * N / (B n_b)); otherwise a two-sided bootstrap p
        (2 min(P*(θ <= 0), P*(θ >= 0))), which is rougher.
    """
    w = np.asarray(weights, dtype=float)
    blocks = [np.asarray(b, dtype=float) for b in blocks if np.asarray(b).shape[-1] > 0]
    if not blocks:
        raise ValueError("stratified_contrast needs at least one non-empty block")
    for b in blocks:
        if b.ndim != 2 or b.shape[0] != w.size:
            raise ValueError(f"each block must be a ({w.size} x n) array, got shape {b.shape}")
    diffs = [w @ b for b in blocks]  # per-item contrast
    n_total, n_blocks = sum(d.size for d in diffs), len(diffs)
    est = float(np.mean([d.mean() for d in diffs]))
    rng = np.random.default_rng(seed)
    boot = np.mean([d[rng.integers(0, d.size, (n_resamples, d.size))].mean(axis=1) for d in diffs], axis=0)
    alpha = (1 - confidence) / 2
    low, high = (np.quantile(boot, [alpha, 1 - alpha]) if n_total > n_blocks else (math.nan, math.nan))
    weighted = np.concatenate([d * n_total / (n_blocks * d.size) for d in diffs])
    if n_total < 2:
        p, dz = 1.0, 0.0
    elif w.size == 2 and np.allclose(w, [1, -1]):
        res = stats.permutation_test(weighted, np.zeros_like(weighted), n_resamples=5000, seed=seed)
        p, dz = res.p_value, res.effect_size
    else:
        p = float(min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean())))
        sd = weighted.std(ddof=1)
        dz = float(weighted.mean() / sd) if sd > 0 else 0.0
    return Contrast(est, float(low), float(high), float(p), float(dz), int(n_total), n_blocks)


def pair_runs(scores: pd.DataFrame, factor: str, a: Any, b: Any, ignore: Sequence[str] = ()) -> pd.DataFrame:
    """Rows of ``scores`` matched as pairs that differ only in ``factor`` (a vs b) and the ``ignore`` columns.

    Returns:
        One row per pair: the shared keys plus ``run_a``, ``run_b``, ``value_a``, ``value_b``.
    """
    keys = [k for k in MATCH_KEYS if k in scores.columns and k != factor and k not in ignore]
    left = scores[scores[factor] == a]
    right = scores[scores[factor] == b]
    if left.empty or right.empty:
        return pd.DataFrame(columns=keys + ["run_a", "run_b", "value_a", "value_b"])
    norm = lambda df: df.assign(**{k: df[k].astype(str) for k in keys})  # noqa: E731  (NA-safe matching)
    m = norm(left)[keys + ["run_id", "value"]].merge(norm(right)[keys + ["run_id", "value"]], on=keys,
                                                     suffixes=("_a", "_b"))
    m = m.rename(columns={"run_id_a": "run_a", "run_id_b": "run_b"})
    for col in ("group", "column"):  # constant per dataset: carried along for grouping and labels
        if col in scores and "dataset" in m:
            m[col] = m["dataset"].map(scores.drop_duplicates("dataset").set_index("dataset")[col])
    return m.reset_index(drop=True)


def compare_pairs(items: pd.DataFrame, pairs: pd.DataFrame, by: str | Sequence[str] | None = None,
                  label: str = "", n_resamples: int = 2000, metric: str | None = None) -> pd.DataFrame:
    """Item-paired a - b per group of ``pairs`` (each pair a block), with CI, p, d_z and Holm across the groups.

    Args:
        items: from :func:`load_items`.
        pairs: from :func:`pair_runs` (needs ``dataset``, ``run_a``, ``run_b``, and ``split`` if present).
        by: group columns (one contrast per group; None: all pairs pooled).
        label: the comparison's name, e.g. "tuned - frozen".
    """
    keys = [by] if isinstance(by, str) else list(by or [])
    groups = pairs.groupby(keys, sort=True, dropna=False) if keys else [((), pairs)]
    rows = []
    for key, grp in groups:
        blocks = []
        for r in grp.itertuples():
            split = getattr(r, "split", "test")
            xa = _item_array(items, r.run_a, r.dataset, split, metric=metric)
            xb = _item_array(items, r.run_b, r.dataset, split, metric=metric)
            common = xa.index.intersection(xb.index)
            if len(common):
                blocks.append(np.vstack([xa[common].to_numpy(), xb[common].to_numpy()]))
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key), comparison=label)
        if blocks:
            c = stratified_contrast(blocks, n_resamples=n_resamples)
            row.update(estimate=c.estimate, ci_low=c.ci_low, ci_high=c.ci_high, p_value=c.p_value,
                       effect_size=c.effect_size, n_items=c.n_items, n_blocks=c.n_blocks)
        rows.append(row)
    return _holm_all(pd.DataFrame(rows))


def pairwise(scores: pd.DataFrame, items: pd.DataFrame, factor: str, levels: Sequence | None = None,
             within: str | None = None, ignore: Sequence[str] = (), n_resamples: int = 2000) -> pd.DataFrame:
    """Every pair of ``factor`` levels (later minus earlier in ``levels``), within each ``within`` group, pooled over
    datasets; Holm across all rows of the returned table."""
    groups = scores.groupby(within, sort=False) if within else [(None, scores)]
    rows = []
    for key, grp in groups:
        lv = [v for v in (levels or sorted(grp[factor].dropna().unique())) if v in set(grp[factor])]
        for i, a in enumerate(lv):
            for b in lv[i + 1:]:
                pairs = pair_runs(grp, factor, b, a, ignore)
                if pairs.empty:
                    continue
                res = compare_pairs(items, pairs, label=f"{b} - {a}", n_resamples=n_resamples)
                res.insert(0, "to", b)
                res.insert(0, "from", a)
                if within:
                    res.insert(0, within, key)
                rows.append(res)
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return _holm_all(out)


def _holm_all(df: pd.DataFrame) -> pd.DataFrame:
    if "p_value" in df and df["p_value"].notna().any():
        ok = df["p_value"].notna()
        df.loc[ok, "p_holm"] = stats.holm_correction(df.loc[ok, "p_value"].to_numpy())
    return df


def versus_base(scores: pd.DataFrame, items: pd.DataFrame, base_run: str, label: str = "- base",
                n_resamples: int = 2000) -> pd.DataFrame:
    """Each row of ``scores`` (run, dataset, split, epoch) minus the base run on the same items; Holm across rows."""
    rows = []
    for r in scores.itertuples():
        ep = int(_epoch_key(pd.Series([r.epoch])).iloc[0])
        xa = _item_array(items, r.run_id, r.dataset, r.split, ep, r.metric)
        xb = _item_array(items, base_run, r.dataset, r.split, None, r.metric)
        common = xa.index.intersection(xb.index)
        row = {"run_id": r.run_id, "dataset": r.dataset, "split": r.split, "epoch": r.epoch, "comparison": label}
        if len(common):
            c = stratified_contrast([np.vstack([xa[common].to_numpy(), xb[common].to_numpy()])],
                                    n_resamples=n_resamples)
            row.update(estimate=c.estimate, ci_low=c.ci_low, ci_high=c.ci_high, p_value=c.p_value,
                       effect_size=c.effect_size, n_items=c.n_items)
        rows.append(row)
    return _holm_all(pd.DataFrame(rows))


def winners(scores: pd.DataFrame, items: pd.DataFrame, treatment: str = "method", by: str = "dataset",
            higher_is_better: bool = True) -> pd.DataFrame:
    """Per ``by`` group: the best ``treatment``, its score with CI, the runner-up and the item-paired gap
    (Holm across groups). Ties in the estimate go to the first in method order."""
    rows = []
    for key, grp in scores.groupby(by, sort=False):
        g = grp.assign(_k=grp[treatment].map(_method_key)).sort_values(["value", "_k"],
                                                                      ascending=[not higher_is_better, True])
        best = g.iloc[0]
        row = {by: key, "best": best[treatment], "score": fmt_ci(best["value"], best.get("ci_low"),
                                                                   best.get("ci_high"))}
        if len(g) > 1:
            second = g.iloc[1]
            row["runner_up"] = second[treatment]
            xa = _item_array(items, best["run_id"], best["dataset"], best["split"])
            xb = _item_array(items, second["run_id"], second["dataset"], second["split"])
            common = xa.index.intersection(xb.index)
            if len(common):
                c = stratified_contrast([np.vstack([xa[common].to_numpy(), xb[common].to_numpy()])])
                row.update(estimate=c.estimate, ci_low=c.ci_low, ci_high=c.ci_high, p_value=c.p_value)
        rows.append(row)
    return _holm_all(pd.DataFrame(rows))


def flops_for_runs(scores: pd.DataFrame, model_config: str, n_ctx: int) -> pd.DataFrame:
    """Parameter and FLOP accounting (:mod:`mllm_study.accounting`) for each distinct method setting in ``scores``.

    Returns:
        method, method_params, placement, connector, peft_params, trainable_percent_acc, train_flops_per_token,
        infer_flops_per_token, train_flops_per_image, infer_flops_per_image.
    """
    from .accounting import count_method

    keys = ["method", "method_params", "placement", "connector"]
    rows = []
    for key in scores[keys].drop_duplicates().itertuples(index=False):
        method, params, placement, connector = key
        r = count_method(model_config, method, json.loads(params), None if placement == "default" else placement,
                         connector, n_ctx=n_ctx)
        rows.append({"method": method, "method_params": params, "placement": placement, "connector": connector,
                     "peft_params": r.peft_params, "trainable_percent_acc": r.trainable_percent,
                     "train_flops_per_token": r.train_flops_per_token,
                     "infer_flops_per_token": r.infer_flops_per_token,
                     "train_flops_per_image": r.train_flops_per_image,
                     "infer_flops_per_image": r.infer_flops_per_image})
    return pd.DataFrame(rows)


def size_label(row: Any) -> str:
    """The method's size knob as text ("r=16", "bottleneck=32", "tokens=10", "-")."""
    params = json.loads(row["method_params"]) if isinstance(row["method_params"], str) else row["method_params"]
    for key, name in (("r", "r"), ("bottleneck_size", "bottleneck"), ("num_virtual_tokens", "tokens")):
        if key in params:
            return f"{name}={params[key]}"
    return "-"


def contrast_items(items: pd.DataFrame, a: dict, b: dict, n_resamples: int = 2000) -> Contrast | None:
    """Item-paired a - b for two (run_id, dataset, split, epoch) selections (e.g. one run's last vs best epoch)."""
    xa = _item_array(items, a["run_id"], a["dataset"], a.get("split", "test"), a.get("epoch"), a.get("metric"))
    xb = _item_array(items, b["run_id"], b["dataset"], b.get("split", "test"), b.get("epoch"), b.get("metric"))
    common = xa.index.intersection(xb.index)
    if not len(common):
        return None
    return stratified_contrast([np.vstack([xa[common].to_numpy(), xb[common].to_numpy()])], n_resamples=n_resamples)


def score_matrix(scores: pd.DataFrame, index: Sequence[str], items: pd.DataFrame | None = None,
                 text: bool = True, n_resamples: int = 1000) -> pd.DataFrame:
    """Wide table: rows ``index`` (e.g. method, connector), one column per paper column plus group averages.

    Cells are "estimate [low, high]" strings when ``text`` (CIs from ``ci_low``/``ci_high`` and, for the averages,
    stratified bootstrap over ``items``), else the estimates. Averages appear only for rows that have every
    column of the group.
    """
    present = [f for f in FAMILY_ORDER if f in set(scores["dataset"])]
    present += sorted(set(scores["dataset"]) - set(present))
    rows = []
    for key, grp in scores.groupby(list(index), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(index, key))
        by_ds = {r.dataset: r for r in grp.itertuples()}
        for ds in present:
            r = by_ds.get(ds)
            row[column_label(ds)] = (None if r is None else
                                     fmt_ci(r.value, getattr(r, "ci_low", math.nan), getattr(r, "ci_high", math.nan))
                                     if text else r.value)
        groups = {"unseen": [d for d in present if _group_of(grp, d) == "unseen"],
                  "seen": [d for d in present if _group_of(grp, d) == "seen"], "all": present}
        for g, members in groups.items():
            if not members or any(d not in by_ds for d in members) or (g == "all" and len(members) < 2):
                continue
            if items is not None and text:
                arrays = [_item_array(items, by_ds[d].run_id, d).to_numpy() for d in members]
                iv = stratified_mean(arrays, n_resamples=n_resamples)
                row[GROUP_LABELS[g]] = fmt_ci(iv.estimate, iv.low, iv.high)
            else:
                est = float(np.mean([by_ds[d].value for d in members]))
                row[GROUP_LABELS[g]] = fmt_ci(est, math.nan, math.nan) if text else est
        rows.append(row)
    out = pd.DataFrame(rows)
    if "method" in out:  # methods in the usual order; other keys keep the order of ``scores`` (sort it first)
        out = out.iloc[sorted(range(len(out)), key=lambda i: _method_key(out["method"].iloc[i]))]
    return out.reset_index(drop=True)


def _group_of(grp: pd.DataFrame, dataset: str) -> str | None:
    g = grp.loc[grp["dataset"] == dataset, "group"] if "group" in grp else pd.Series(dtype=str)
    return str(g.iloc[0]) if len(g) else None


def friedman_ranks(scores: pd.DataFrame, treatment: str = "method", block: str | Sequence[str] = "dataset"):
    """Friedman test of ``treatment`` over complete blocks (datasets); returns (TestResult or None, message)."""
    blocks = [block] if isinstance(block, str) else list(block)
    wide = scores.pivot_table(index=blocks, columns=treatment, values="value", aggfunc="mean").dropna()
    if wide.shape[1] < 3 or wide.shape[0] < 2:
        return None, (f"Friedman test not possible: {wide.shape[0]} complete block(s) x {wide.shape[1]} "
                      f"treatment(s) (needs >= 2 x 3)")
    res = stats.friedman_test(wide)
    msg = (f"Friedman chi2 = {res.statistic:.2f}, df = {res.extra['df']}, p = {fmt_p(res.p_value)}, "
           f"Kendall's W = {res.effect_size:.2f} over {res.n} blocks")
    return res, msg


def train_logs(runs_dir: str | Path, run_ids: Sequence[str]) -> pd.DataFrame:
    """Loss entries of the runs' ``train_log.jsonl``: run_id, step, epoch, loss, lr, seconds."""
    rows = []
    for rid in run_ids:
        path = Path(runs_dir) / rid / "train_log.jsonl"
        if path.exists():
            rows += [{"run_id": rid, **e} for e in map(json.loads, path.read_text().splitlines()) if "loss" in e]
    return pd.DataFrame(rows).reindex(columns=["run_id", "step", "epoch", "loss", "lr", "seconds"])


def epoch_losses(runs_dir: str | Path, run_ids: Sequence[str]) -> pd.DataFrame:
    """Per run and epoch: mean logged training loss in that epoch and the held-out loss measured at its end."""
    rows = []
    for rid in run_ids:
        path = Path(runs_dir) / rid / "train_log.jsonl"
        if not path.exists():
            continue
        log = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        for e in (e for e in log if "epoch_end" in e):
            k = int(e["epoch_end"])
            train = [x["loss"] for x in log if "loss" in x and k - 1 < float(x["epoch"]) <= k]
            rows.append({"run_id": rid, "epoch": k, "train_loss": float(np.mean(train)) if train else math.nan,
                         "held_out_loss": e.get("held_out_loss", math.nan)})
    return pd.DataFrame(rows, columns=["run_id", "epoch", "train_loss", "held_out_loss"])


_POPE_CODES = {"tp": 0, "fp": 1, "tn": 2, "fn": 3}


def pope_items(items: pd.DataFrame) -> pd.DataFrame:
    """POPE items with ``code`` (0 tp, 1 fp, 2 tn, 3 fn), parsed as the ``pope`` metric does (unparsed = "yes")."""
    from .metrics import parse_yes_no

    df = items[items["metric"] == "pope"].copy()
    label = df["references"].map(lambda r: str(r[0] if isinstance(r, list) else r).strip().lower())
    answer = df["prediction"].fillna("").map(lambda p: (parse_yes_no(p) or "yes") if p.strip() else "wrong")
    answer = np.where(answer == "wrong", np.where(label == "yes", "no", "yes"), answer)
    df["code"] = [_POPE_CODES[("tp" if lab == "yes" else "fp") if ans == "yes" else ("tn" if lab == "no" else "fn")]
                  for lab, ans in zip(label, answer)]
    return df


def _pope_stat(name: str):
    def stat(codes, axis=-1):
        c = np.asarray(codes)
        tp, fp, tn, fn = ((c == k).sum(axis=axis).astype(float) for k in range(4))
        n = tp + fp + tn + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
                "yes_ratio": (tp + fp) / n}[name]
    return stat


def pope_metric_ci(codes: Sequence[int], name: str, n_resamples: int = 1000) -> stats.Interval:
    """A POPE metric (accuracy, precision, recall, f1, yes_ratio) with a bootstrap CI over probes."""
    return stats.bootstrap_ci(np.asarray(codes, dtype=float), _pope_stat(name), n_resamples=n_resamples, seed=0)
