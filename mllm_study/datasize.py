"""RQ4's two data-size designs and the log-linear test of diminishing returns.

A data-size sweep at fixed epochs gives larger sets proportionally more optimizer steps, so size and training
length are confounded. The params file adds an *equal-steps* design: every size trained for the medium size's
steps (epochs scaled inversely with the size). :func:`size_designs` tells the two apart from what each run recorded
(its epochs and optimizer steps); :func:`log_linear_fits` fits score = a + b log10(n) per design, method and column
and asks whether the largest size falls below the line (returns diminishing faster than log-linear), instead of
reading "diminishing returns" off a gain per sample that shrinks across log-spaced sizes by construction.

Both the slope and the residual are linear contrasts of the per-size mean scores (OLS on the sizes' log10), so
on the same test items they are item-paired contrasts: :func:`~mllm_study.contrasts.replicated_contrast` gives
each a t interval and p from one procedure, over seeds with two or more, else over test items.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import DataError
from .contrasts import MATCH_KEYS, item_array, column_key, replicated_contrast

EQUAL_EPOCHS, EQUAL_STEPS = "equal epochs", "equal steps"
# A setting whose size varies: every matching key but the size and the epochs that go with it (equal steps)
SETTING_KEYS = [k for k in MATCH_KEYS if k not in ("train_size", "epochs")]


def log_linear_weights(sizes: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``w`` with ``w @ means`` = the OLS slope of the means on log10(size) (score per tenfold more data),
    and ``v`` with ``v @ means`` = the residual of the largest size (observed minus fitted).

    Fit: x_k = log10(n_k), b = sum (x_k - x̄) y_k / sum (x_k - x̄)², a = ȳ - b x̄; residual_K = y_K - a - b x_K,
    so v = e_K - 1/K - (x_K - x̄) (x - x̄) / sum (x - x̄)². With two sizes the residual is 0 by construction
    (``v`` is all zeros): diminishing returns need at least three sizes.
    """
    x = np.log10(np.asarray(sizes, dtype=float))
    if x.size < 2 or np.unique(x).size != x.size:
        raise DataError(f"need at least two distinct sizes (got {list(sizes)})")
    xc = x - x.mean()
    w = xc / (xc ** 2).sum()
    k = int(np.argmax(x))
    v = -np.full(x.size, 1.0 / x.size) - xc[k] * w
    v[k] += 1.0
    if x.size == 2:
        v = np.zeros_like(v)
    return w, v


def size_designs(scores: pd.DataFrame) -> pd.DataFrame:
    """``scores`` (primary scores with ``train_steps`` and ``epochs``) with a ``design`` column.

    Per setting (every factor but the size and the epochs), the medium size's run is the reference; a run with
    its epochs is in the equal-epochs design, a run with its optimizer steps (within 1%: rounding of fractional
    epochs at real scale) in the equal-steps design;
    the medium run is in both (its rows appear twice). A design that has only the medium size is dropped. The base
    model (method none) trains nothing and is left out.
    """
    df = scores[scores["method"] != "none"].copy()
    if df.empty or "train_steps" not in df:
        return df.assign(design=pd.Series(dtype=object))
    keys = [k for k in SETTING_KEYS if k in df.columns]
    out = []
    for _, g in df.groupby(keys, dropna=False, sort=False):
        sizes = sorted(int(s) for s in g["train_size"].unique())
        mid = sizes[len(sizes) // 2]
        ref = g[g["train_size"] == mid]
        if ref.empty:
            continue
        ref_epochs = float(ref["epochs"].astype(float).min())  # the medium size at the profile's epochs
        ref_steps = float(ref.loc[ref["epochs"].astype(float) == ref_epochs, "train_steps"].astype(float).iloc[0])
        steps = g["train_steps"].astype(float)
        for design, member in ((EQUAL_EPOCHS, np.isclose(g["epochs"].astype(float), ref_epochs)),
                               (EQUAL_STEPS, (steps - ref_steps).abs() <= 0.01 * ref_steps)):
            if design == EQUAL_STEPS:  # the medium run itself at its own epochs (the shared reference)
                member = member & ((g["train_size"] != mid) | np.isclose(g["epochs"].astype(float), ref_epochs))
            part = g[np.asarray(member)]
            if part["train_size"].nunique() >= 2:
                out.append(part.assign(design=design))
    if not out:
        return df.iloc[0:0].assign(design=pd.Series(dtype=object))
    return pd.concat(out, ignore_index=True)


def log_linear_fits(designed: pd.DataFrame, items: pd.DataFrame, flags: dict | None = None) -> pd.DataFrame:
    """Per design, method and column: the slope of score on log10(size) and the largest size's residual from that
    fit, each an item-paired contrast over the sizes (t interval and p; over seeds with >= 2 of them).

    Returns:
        design, method, column, sizes, steps (per size, as recorded), slope (score per tenfold more data) with
        ci_low/ci_high/p, residual (largest size: observed - fitted) with res_low/res_high/res_p, unit, n_units,
        reading (below / above / on the log-linear fit, or why not measurable), excluded.
    """
    flags = flags or {}
    keys = [k for k in SETTING_KEYS if k in designed.columns and k != "seed"]
    rows = []
    for (design, *_), g in designed.groupby(["design"] + keys, dropna=False, sort=False):
        sizes = sorted(int(s) for s in g["train_size"].unique())
        r0 = g.iloc[0]
        col = column_key(r0["dataset"], r0.get("split", "test"))
        row = {"design": design, "method": r0["method"], "column": r0["column"], "sizes": ", ".join(map(str, sizes)),
               "steps": ", ".join(str(int(g.loc[g["train_size"] == s, "train_steps"].astype(float).mean()))
                                  for s in sizes)}
        w, v = log_linear_weights(sizes)
        slope_d, res_d, seeds, excluded = [], [], [], []
        for seed, gs in g.groupby("seed", dropna=False):
            by = {int(s): r for s, r in zip(gs["train_size"], gs.to_dict("records"))}
            if set(by) != set(sizes):
                continue
            why = [flags[(by[s]["run_id"], col)] for s in sizes if (by[s]["run_id"], col) in flags]
            if why:
                excluded.append(f"{r0['method']} seed {seed}: " + ", ".join(dict.fromkeys(why)))
                continue
            arrays = [item_array(items, by[s]["run_id"], r0["dataset"], r0.get("split", "test")) for s in sizes]
            common = arrays[0].index
            for a in arrays[1:]:
                common = common.intersection(a.index)
            if len(common):
                slope_d.append(sum(wk * a[common] for wk, a in zip(w, arrays)))
                res_d.append(sum(vk * a[common] for vk, a in zip(v, arrays)))
                seeds.append(seed)
        row["excluded"] = "; ".join(excluded)
        if not slope_d:
            row["reading"] = "not measurable: " + (row["excluded"] or "no complete size series")
            rows.append(row)
            continue
        s = replicated_contrast(slope_d, seeds)
        row.update(slope=s.estimate, ci_low=s.ci_low, ci_high=s.ci_high, p=s.p_value, unit=s.unit,
                   n_units=s.n_units)
        if len(sizes) >= 3:
            r = replicated_contrast(res_d, seeds)
            row.update(residual=r.estimate, res_low=r.ci_low, res_high=r.ci_high, res_p=r.p_value)
            row["reading"] = _reading(r.estimate, r.ci_low, r.ci_high)
        else:
            row["reading"] = "two sizes: a line through two points has no residual"
        rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty and "res_p" in out:
        from .stats import holm_correction

        ok = out["res_p"].notna()
        out.loc[ok, "res_p_holm"] = holm_correction(out.loc[ok, "res_p"].to_numpy())
    return out


def _reading(est: float, lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"residual {est:+.3f}, no interval (one unit)"
    if hi < 0:
        return "below the log-linear fit: returns diminish faster than log-linear"
    if lo > 0:
        return "above the log-linear fit: no diminishing returns (the gain per tenfold grows)"
    return "on the log-linear fit (CI covers 0): no evidence of diminishing returns beyond log spacing"
