"""Item-level uncertainty: per-item scores of runs, bootstrap intervals and item-paired contrasts.

Usage: ``compare_pairs(load_items(runs_dir, scores), pair_runs(scores, "connector", "tuned", "frozen"), by="group")``

Conventions (STUDY.md: every number carries its uncertainty; see also :mod:`mllm_study.report`):
- one run's score on one dataset: percentile bootstrap over its test items (:func:`with_item_cis`);
- an average over datasets: stratified bootstrap, items resampled within each dataset, datasets weighted equally
  (:func:`stratified_mean`);
- a difference between two settings: item-paired, datasets (or seeds) as equally weighted blocks, percentile
  bootstrap CI and a sign-flip permutation p (:func:`stratified_contrast`), Holm-corrected within a table.
Everything here is re-exported by :mod:`mllm_study.report`, which notebooks import as ``rp``.
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
from .plots import _method_key, fmt_ci

__all__ = ["MATCH_KEYS", "load_items", "with_item_cis", "stratified_mean", "Contrast", "stratified_contrast",
           "contrast_items", "pair_runs", "compare_pairs", "pairwise", "versus_base", "winners"]


# Factors that identify a setting; two runs are "the same but for X" when they agree on all of these except X.
MATCH_KEYS = ["model", "method", "method_params", "placement", "connector", "vision", "train_dataset", "train_size",
              "seed", "lr", "connector_lr", "epochs", "dataset", "split"]


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


def contrast_items(items: pd.DataFrame, a: dict, b: dict, n_resamples: int = 2000) -> Contrast | None:
    """Item-paired a - b for two (run_id, dataset, split, epoch) selections (e.g. one run's last vs best epoch)."""
    xa = _item_array(items, a["run_id"], a["dataset"], a.get("split", "test"), a.get("epoch"), a.get("metric"))
    xb = _item_array(items, b["run_id"], b["dataset"], b.get("split", "test"), b.get("epoch"), b.get("metric"))
    common = xa.index.intersection(xb.index)
    if not len(common):
        return None
    return stratified_contrast([np.vstack([xa[common].to_numpy(), xb[common].to_numpy()])], n_resamples=n_resamples)
