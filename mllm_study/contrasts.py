"""Item-level uncertainty: per-item scores of runs, bootstrap intervals and item-paired contrasts.

Usage: ``compare_pairs(load_items(runs_dir, scores), pair_runs(scores, "connector", "tuned", "frozen"), by="group")``

Conventions (docs/study.md, "Uncertainty": every number carries its uncertainty; see also :mod:`mllm_study.report`):
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

from .errors import DataError
from . import stats
from .config import RUN_FACTORS
from .metrics import metric_higher_is_better
from .plots import method_key, fmt_ci

__all__ = ["MATCH_KEYS", "load_items", "with_item_cis", "stratified_mean", "Contrast", "stratified_contrast",
           "replicated_contrast", "column_key", "contrast_items", "pair_runs", "compare_pairs", "pairwise",
           "versus_base", "winners", "higher_is_better_of", "UNIT_SEEDS", "UNIT_ITEMS", "item_array",
           "with_contrast_columns"]

UNIT_SEEDS = "training seeds"
UNIT_ITEMS = "test items (one seed: training randomness not covered)"


# Factors that identify a setting (the run's factors, config.RUN_FACTORS, and the scored column); two runs are "the
# same but for X" when they agree on all of these except X.
MATCH_KEYS = [*RUN_FACTORS.values(), "dataset", "split"]


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


def item_array(items: pd.DataFrame, rid: str, dataset: str, split: str = "test", epoch: int | None = None,
               metric: str | None = None) -> pd.Series:
    """Per-item scores (by item id) of run ``rid`` on a split: ``metric`` (default: not chair), last epoch if unset."""
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
        x = item_array(items, row.run_id, row.dataset, row.split, ep, row.metric)
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
        raise DataError("stratified_mean needs at least one non-empty block")
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
    unit: str = "test items"  # what the CI and p replicate over (UNIT_SEEDS or UNIT_ITEMS)
    n_units: int = 0  # how many of them (seeds or items)


def column_key(dataset: str, split: str = "test") -> str:
    """The validity instrument's name of an evaluated column (``sqa``, ``pope/random``)."""
    return dataset if split in (None, "test") else f"{dataset}/{split}"


def replicated_contrast(diffs: Sequence[pd.Series], seeds: Sequence[Any] | None = None,
                        confidence: float = 0.95) -> Contrast:
    """A contrast on ONE column, replicated over the right unit, with a CI and p from the same t procedure.

    Args:
        diffs: per block (a setting x seed of this column) the per-item contrast (e.g. a - b), indexed by item id.
        seeds: the training seed of each block.

    Returns:
        :class:`Contrast`. With >= 2 distinct seeds the unit is the seed: per seed, the mean over its blocks of the
        mean item contrast; estimate, CI and p are the one-sample t on those seed values (df = seeds - 1), so the
        interval covers training randomness (and test-item sampling, which is inside each seed mean). With one
        seed the unit is the test item: per item, the mean over blocks (settings are fixed effects); the same t on
        items, which says nothing about training randomness (``unit`` says so). Formula: mean ± t_{1-α/2,n-1}
        s/√n and p = 2 P(T_{n-1} >= |mean| / (s/√n)): the CI excludes 0 exactly when p < 1 - confidence.
        Effect size: d_z = mean / s of the units. Scores of different columns are never pooled here.
    """
    diffs = [d.astype(float) for d in diffs if len(d)]
    if not diffs:
        raise DataError("replicated_contrast needs at least one non-empty block")
    seeds = list(seeds) if seeds is not None else [0] * len(diffs)
    if len(seeds) != len(diffs):
        raise DataError(f"{len(diffs)} blocks but {len(seeds)} seeds")
    distinct = list(dict.fromkeys(str(s) for s in seeds))
    if len(distinct) >= 2:
        per_seed = {s: [] for s in distinct}
        for d, s in zip(diffs, seeds):
            per_seed[str(s)].append(float(d.mean()))
        units, unit = np.array([np.mean(v) for v in per_seed.values()]), UNIT_SEEDS
    else:
        units, unit = pd.concat(diffs).groupby(level=0).mean().to_numpy(), UNIT_ITEMS
    n_items = int(sum(len(d) for d in diffs))
    est = float(units.mean())
    if units.size < 2:
        return Contrast(est, math.nan, math.nan, 1.0, 0.0, n_items, len(diffs), unit, int(units.size))
    iv = stats.t_ci(units, confidence)
    t = stats.paired_t_test(units, np.zeros_like(units))
    return Contrast(est, iv.low, iv.high, t.p_value, float(t.effect_size) if np.isfinite(t.effect_size) else
                    math.copysign(99.0, est), n_items, len(diffs), unit, int(units.size))


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
        raise DataError("stratified_contrast needs at least one non-empty block")
    for b in blocks:
        if b.ndim != 2 or b.shape[0] != w.size:
            raise DataError(f"each block must be a ({w.size} x n) array, got shape {b.shape}")
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
                  label: str = "", n_resamples: int = 2000, metric: str | None = None,
                  flags: dict[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """a - b per column (dataset x split) and ``by`` group of ``pairs``, replicated over seeds or items
    (:func:`replicated_contrast`), Holm across the rows. Columns are never pooled: their units differ.

    Args:
        items: from :func:`load_items`.
        pairs: from :func:`pair_runs` (needs ``dataset``, ``run_a``, ``run_b``, and ``split``/``seed`` if present).
        by: further group columns (e.g. method); the column is always a group.
        label: the comparison's name, e.g. "tuned - frozen".
        flags: (run_id, column key) -> why the validity instrument flags that measurement; a pair with a
            flagged run is left out, and a row with no pair left is "not measurable" with the reasons.

    Returns:
        One row per group: the keys, ``column`` (validity key), comparison, estimate, ci_low, ci_high, p_value,
        effect_size, n_items, n_blocks, unit, n_units, excluded (reasons of the pairs left out), p_holm.
    """
    flags = flags or {}
    pairs = pairs.assign(_col=[column_key(d, getattr(r, "split", "test")) for d, r in
                               zip(pairs["dataset"], pairs.itertuples())])
    keys = ["_col"] + [k for k in ([by] if isinstance(by, str) else list(by or []))
                       if k not in ("dataset", "split", "column", "_col")]
    rows = []
    for key, grp in pairs.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key), comparison=label)
        col = row.pop("_col")
        first = grp.iloc[0]
        if "column" in grp and pd.notna(first["column"]):
            label_ = first["column"]
        else:
            from .report import column_label  # the paper's column name (report imports this module)

            label_ = column_label(first["dataset"])
        split = first["split"] if "split" in grp else "test"
        row = {"column": label_ if split == "test" else f"{label_} ({split})", "dataset": first["dataset"],
               **row}
        diffs, seeds, excluded, reasons = [], [], [], []
        for r in grp.itertuples():
            why = [f"{side} {flags[(rid, col)]}" for rid, side in ((r.run_a, "a"), (r.run_b, "b"))
                   if (rid, col) in flags]
            reasons += [flags[(rid, col)] for rid in (r.run_a, r.run_b) if (rid, col) in flags]
            if why:
                excluded.append(f"{row['column']}" + (f" seed {r.seed}" if hasattr(r, "seed") else "") + ": "
                                + ", ".join(why))
                continue
            split = getattr(r, "split", "test")
            xa = item_array(items, r.run_a, r.dataset, split, metric=metric)
            xb = item_array(items, r.run_b, r.dataset, split, metric=metric)
            common = xa.index.intersection(xb.index)
            if len(common):
                diffs.append(xa[common] - xb[common])
                seeds.append(getattr(r, "seed", 0))
        row["excluded"] = "; ".join(excluded)
        row["flags"] = " / ".join(dict.fromkeys(reasons))
        if diffs:
            c = replicated_contrast(diffs, seeds)
            row.update(estimate=c.estimate, ci_low=c.ci_low, ci_high=c.ci_high, p_value=c.p_value,
                       effect_size=c.effect_size, n_items=c.n_items, n_blocks=c.n_blocks, unit=c.unit,
                       n_units=c.n_units)
        elif excluded:
            row["not_measurable"] = "; ".join(excluded)
        rows.append(row)
    return _holm_all(with_contrast_columns(pd.DataFrame(rows)))


CONTRAST_COLUMNS = ["estimate", "ci_low", "ci_high", "p_value", "effect_size", "n_items", "n_blocks", "unit",
                    "n_units", "excluded", "not_measurable", "flags"]


def with_contrast_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Every contrast column present (NaN where nothing was measurable)."""
    for c in CONTRAST_COLUMNS:
        if c not in df:
            df[c] = np.nan if c not in ("unit", "excluded", "not_measurable", "flags") else None
    return df


def pairwise(scores: pd.DataFrame, items: pd.DataFrame, factor: str, levels: Sequence | None = None,
             within: str | None = None, ignore: Sequence[str] = (), n_resamples: int = 2000,
             flags: dict[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """Every pair of ``factor`` levels (later minus earlier in ``levels``), within each ``within`` group, one row per
    column (:func:`compare_pairs`, flagged measurements left out); Holm across all rows of the returned table."""
    groups = scores.groupby(within, sort=False) if within else [(None, scores)]
    rows = []
    for key, grp in groups:
        lv = [v for v in (levels or sorted(grp[factor].dropna().unique())) if v in set(grp[factor])]
        for i, a in enumerate(lv):
            for b in lv[i + 1:]:
                pairs = pair_runs(grp, factor, b, a, ignore)
                if pairs.empty:
                    continue
                res = compare_pairs(items, pairs, label=f"{b} - {a}", n_resamples=n_resamples, flags=flags)
                res.insert(0, "to", b)
                res.insert(0, "from", a)
                if within:
                    res.insert(0, within, key)
                rows.append(res)
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return _holm_all(out)


def _holm_all(df: pd.DataFrame) -> pd.DataFrame:
    if len(df) and "p_holm" not in df:
        df["p_holm"] = np.nan  # present even when nothing was testable
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
        xa = item_array(items, r.run_id, r.dataset, r.split, ep, r.metric)
        xb = item_array(items, base_run, r.dataset, r.split, None, r.metric)
        common = xa.index.intersection(xb.index)
        row = {"run_id": r.run_id, "dataset": r.dataset, "split": r.split, "epoch": r.epoch, "comparison": label}
        if len(common):
            c = replicated_contrast([xa[common] - xb[common]])
            row.update(estimate=c.estimate, ci_low=c.ci_low, ci_high=c.ci_high, p_value=c.p_value,
                       effect_size=c.effect_size, n_items=c.n_items)
        rows.append(row)
    return _holm_all(pd.DataFrame(rows))


def higher_is_better_of(scores: pd.DataFrame, higher_is_better: bool | None = None) -> bool:
    """The direction to rank ``scores`` in: ``higher_is_better`` when given, else the registered direction of the
    one metric in its ``metric`` column (:func:`mllm_study.metrics.metric_higher_is_better`; CHAIR: lower is
    better). DataError when there is no metric column or its metrics disagree."""
    if higher_is_better is not None:
        return bool(higher_is_better)
    if "metric" not in scores.columns:
        raise DataError("cannot tell which direction is better: the scores have no 'metric' column "
                        "(pass higher_is_better=)")
    directions = {m: metric_higher_is_better(m) for m in scores["metric"].dropna().unique()}
    if len(set(directions.values())) > 1:
        raise DataError(f"metrics ranked together disagree on which direction is better: {directions}; "
                        f"rank them one at a time")
    return next(iter(directions.values()), True)


def winners(scores: pd.DataFrame, items: pd.DataFrame, treatment: str = "method", by: str = "dataset",
            higher_is_better: bool | None = None, flags: dict[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """Per ``by`` group: the best ``treatment``, its score with CI, the runner-up and the item-paired gap
    (Holm across groups). "Best" follows each group's metric's registered direction (CHAIR: the lowest;
    ``higher_is_better`` overrides it for every group; the gap best - runner-up is then negative). Ties in the
    estimate go to the first in method order.
    Runs whose measurement is flagged (``flags``) compete for nothing; a group with none left says "not
    measurable"."""
    rows = []
    flags = flags or {}
    for key, grp in scores.groupby(by, sort=False):
        keep = [(r, column_key(d, s)) not in flags for r, d, s in zip(grp["run_id"], grp["dataset"], grp["split"])]
        if not any(keep):
            rows.append({by: key, "best": "not measurable (every run flagged)"})
            continue
        grp = grp[keep]
        higher = higher_is_better_of(grp, higher_is_better)
        g = grp.assign(_k=grp[treatment].map(method_key)).sort_values(["value", "_k"],
                                                                      ascending=[not higher, True])
        best = g.iloc[0]
        row = {by: key, "best": best[treatment], "score": fmt_ci(best["value"], best.get("ci_low"),
                                                                   best.get("ci_high"))}
        if len(g) > 1:
            second = g.iloc[1]
            row["runner_up"] = second[treatment]
            metric = best.get("metric") if isinstance(best.get("metric"), str) else None  # CHAIR's items too
            xa = item_array(items, best["run_id"], best["dataset"], best["split"], metric=metric)
            xb = item_array(items, second["run_id"], second["dataset"], second["split"], metric=metric)
            common = xa.index.intersection(xb.index)
            if len(common):
                c = replicated_contrast([xa[common] - xb[common]])
                row.update(estimate=c.estimate, ci_low=c.ci_low, ci_high=c.ci_high, p_value=c.p_value)
        rows.append(row)
    return _holm_all(pd.DataFrame(rows))


def contrast_items(items: pd.DataFrame, a: dict, b: dict, n_resamples: int = 2000) -> Contrast | None:
    """Item-paired a - b for two (run_id, dataset, split, epoch) selections (e.g. one run's last vs best epoch)."""
    xa = item_array(items, a["run_id"], a["dataset"], a.get("split", "test"), a.get("epoch"), a.get("metric"))
    xb = item_array(items, b["run_id"], b["dataset"], b.get("split", "test"), b.get("epoch"), b.get("metric"))
    common = xa.index.intersection(xb.index)
    if not len(common):
        return None
    return replicated_contrast([xa[common] - xb[common]])
