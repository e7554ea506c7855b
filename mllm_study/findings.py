"""The paper's headline findings checked against our measurements: supported / contradicted / inconclusive.

Usage: ``df = findings_table(evaluate_findings({"rq1_main": (table, items), ...}))``

Every check reads the tidy results table of one research question plus its per-item scores
(:func:`mllm_study.report.load_items`) and returns a :class:`Finding` with the statistic behind the verdict.
Verdict rule (:func:`verdict`): a comparison counts when its Holm-adjusted p <= alpha; the finding is
*supported* when every comparison it makes counts in the paper's direction, *contradicted* when any counts in the
opposite direction, otherwise *inconclusive* (including "not enough runs to test").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from . import stats
from .contrasts import _item_array, compare_pairs, load_items, pair_runs, stratified_contrast
from .report import final_epoch, fmt_ci, fmt_p, primary_scores

__all__ = ["Finding", "PAPER_FINDINGS", "verdict", "finding_adapter_best", "finding_connector_unseen",
           "finding_placement", "finding_data_size", "finding_adapter_stable", "finding_adapter_hallucination",
           "evaluate_findings", "findings_table", "findings_details", "rq_items"]

PEFT_METHODS = ("lora", "ia3", "prefix", "adapter")
# key -> (research question, the paper's finding as we test it)
PAPER_FINDINGS = {
    "adapter_best": ("rq1_main", "Adapter has the best overall performance across the eight datasets."),
    "connector_unseen": ("rq1_main", "Tuning the connector improves performance on unseen datasets."),
    "placement": ("rq2_placement", "LoRA and IA3 work best placed in both attention and MLP; Adapter in the MLP."),
    "data_size": ("rq4_data_size", "More training data helps, with diminishing returns."),
    "adapter_stable": ("rq5_stability", "Adapter is the most stable method across seeds."),
    "adapter_hallucination": ("rq7_hallucination", "Adapter hallucinates the least."),
}


@dataclass
class Finding:
    """One paper finding next to what we measured."""

    key: str
    rq: str
    paper: str
    ours: str  # what we measured, in one or two sentences with numbers
    verdict: str  # supported | contradicted | inconclusive
    statistic: str  # the test(s) behind the verdict
    details: pd.DataFrame | None = None  # the comparisons: comparison, estimate, ci_low, ci_high, p_holm, expected


def verdict(estimates: Sequence[float], p_adjusted: Sequence[float], expected: Sequence[int] | int = 1,
            alpha: float = 0.05) -> str:
    """Combine comparisons into one verdict (see the module docstring).

    Args:
        estimates: effect estimates (e.g. a - b).
        p_adjusted: Holm-adjusted p-values, same order.
        expected: the sign (+1/-1) the paper's finding predicts, per comparison or for all.
    """
    est = np.asarray(estimates, dtype=float)
    p = np.asarray(p_adjusted, dtype=float)
    if est.size == 0:
        return "inconclusive"
    exp = np.broadcast_to(np.asarray(expected, dtype=float), est.shape)
    sig = np.nan_to_num(p, nan=1.0) <= alpha
    if np.any(sig & (np.sign(est) == -exp)):
        return "contradicted"
    if np.all(sig & (np.sign(est) == exp)):
        return "supported"
    return "inconclusive"


def _finding(key: str, ours: str, verdict_: str, statistic: str, details: pd.DataFrame | None = None,
             expected: Sequence[int] | int = 1) -> Finding:
    rq, paper = PAPER_FINDINGS[key]
    if details is not None and not details.empty:
        details = details.assign(expected=np.broadcast_to(np.asarray(expected), (len(details),)).tolist(),
                                 finding=key)
    return Finding(key, rq, paper, ours, verdict_, statistic, details)


def _no_data(key: str, why: str) -> Finding:
    return _finding(key, f"Not measured: {why}.", "inconclusive", "-")


def _describe(rows: pd.DataFrame, name: str = "comparison") -> str:
    return "; ".join(f"{r[name]}: {fmt_ci(r['estimate'], r['ci_low'], r['ci_high'])}, p_Holm = {fmt_p(r['p_holm'])}, "
                     f"d_z = {r['effect_size']:.2f} ({int(r['n_items'])} items)" for _, r in rows.iterrows()
                     if pd.notna(r.get("estimate")))


def _holm(df: pd.DataFrame) -> pd.DataFrame:
    df = df[df["estimate"].notna()].copy() if "estimate" in df else df.iloc[0:0]
    if not df.empty:
        df["p_holm"] = stats.holm_correction(df["p_value"].to_numpy())
    return df


def _best_text(means: pd.Series) -> str:
    top = [str(m) for m, v in means.items() if np.isclose(v, means.max())]
    return f"best {top[0]}" if len(top) == 1 else f"tie between {', '.join(top)}"


def finding_adapter_best(table: pd.DataFrame, items: pd.DataFrame) -> Finding:
    """Adapter minus each other PEFT method, item-paired over all datasets (equal weights), in the connector
    setting with the most complete grid."""
    key = "adapter_best"
    scores = primary_scores(table)
    scores = scores[scores["method"].isin(PEFT_METHODS)]
    if "adapter" not in set(scores["method"]) or scores["method"].nunique() < 2:
        return _no_data(key, "adapter and at least one other method are needed")
    counts = scores.groupby("connector")["run_id"].nunique()
    connector = max(counts.index, key=lambda c: (counts[c], c == "tuned"))
    sc = scores[scores["connector"] == connector]
    rows = []
    for other in [m for m in PEFT_METHODS if m != "adapter" and m in set(sc["method"])]:
        pairs = pair_runs(sc, "method", "adapter", other, ignore=("method_params", "placement", "lr"))
        if not pairs.empty:
            rows.append(compare_pairs(items, pairs, label=f"adapter - {other}"))
    if not rows:
        return _no_data(key, "no dataset has adapter and another method in the same setting")
    res = _holm(pd.concat(rows, ignore_index=True))
    means = sc.groupby("method")["value"].mean().sort_values(ascending=False)
    ours = (f"Connector {connector}: mean score over {sc['dataset'].nunique()} dataset(s) by method: "
            + ", ".join(f"{m} {v:.3f}" for m, v in means.items()) + f"; {_best_text(means)}.")
    return _finding(key, ours, verdict(res["estimate"], res["p_holm"], 1), _describe(res), res)


def finding_connector_unseen(table: pd.DataFrame, items: pd.DataFrame) -> Finding:
    """Tuned minus frozen connector, item-paired, pooled over methods and datasets, separately for unseen/seen."""
    key = "connector_unseen"
    scores = primary_scores(table)
    pairs = pair_runs(scores, "connector", "tuned", "frozen")
    if pairs.empty:
        return _no_data(key, "no run pair differing only in the connector")
    groups = scores.drop_duplicates("dataset").set_index("dataset")["group"]
    pairs["group"] = pairs["dataset"].map(groups)
    res = _holm(compare_pairs(items, pairs, by="group", label="tuned - frozen"))
    unseen = res[res["group"] == "unseen"]
    if unseen.empty:
        return _no_data(key, "no unseen dataset has both connector settings")
    ours = "; ".join(f"{r.group}: tuned - frozen = {r.estimate:+.3f} over {int(r.n_blocks)} method x dataset pair(s)"
                     for r in res.itertuples())
    details = res.assign(comparison=[f"connector tuned - frozen ({g})" for g in res["group"]])
    return _finding(key, ours + ".", verdict(unseen["estimate"], unseen["p_holm"], 1), _describe(res, "group"),
                    details)


def finding_placement(table: pd.DataFrame, items: pd.DataFrame) -> Finding:
    """For LoRA and IA3 'both' vs attention and vs MLP; for Adapter 'mlp' vs attention and vs both."""
    key = "placement"
    scores = primary_scores(table)
    claims = {"lora": "both", "ia3": "both", "adapter": "mlp"}
    rows, best = [], []
    for method, claimed in claims.items():
        sm = scores[scores["method"] == method]
        if sm.empty:
            continue
        means = sm.groupby("placement")["value"].mean()
        best.append(f"{method}: {_best_text(means)} ({means.max():.3f})")
        for other in [p for p in ("attention", "mlp", "both") if p != claimed]:
            pairs = pair_runs(sm, "placement", claimed, other)
            if not pairs.empty:
                rows.append(compare_pairs(items, pairs, label=f"{method}: {claimed} - {other}"))
    if not rows:
        return _no_data(key, "no placement pairs")
    res = _holm(pd.concat(rows, ignore_index=True))
    return _finding(key, "Mean score by placement: " + "; ".join(best) + ".",
                    verdict(res["estimate"], res["p_holm"], 1), _describe(res), res)


def finding_data_size(table: pd.DataFrame, items: pd.DataFrame) -> Finding:
    """High minus low train size (more data helps) and slope(low->mid) minus slope(mid->high) (diminishing)."""
    key = "data_size"
    scores = primary_scores(table)
    sizes = sorted(int(s) for s in scores["train_size"].dropna().unique())
    if len(sizes) < 2:
        return _no_data(key, "fewer than two training-set sizes")
    low, high = sizes[0], sizes[-1]
    pairs = pair_runs(scores, "train_size", high, low)
    gain = _holm(compare_pairs(items, pairs, label=f"n={high} - n={low}")) if not pairs.empty else pd.DataFrame()
    parts, ests, ps = [], [], []
    details = []
    if not gain.empty:
        parts.append(_describe(gain))
        details.append(gain)
        ests.append(gain["estimate"].iloc[0])
        ps.append(gain["p_value"].iloc[0])
    ours = f"Sizes {sizes}."
    if len(sizes) >= 3:
        mid = sizes[len(sizes) // 2]
        w = [-1 / (mid - low), 1 / (mid - low) + 1 / (high - mid), -1 / (high - mid)]
        blocks = _aligned_blocks(scores, "train_size", [low, mid, high], items)
        if blocks:
            c = stratified_contrast(blocks, np.asarray(w) * 1000)
            parts.append(f"slope(n {low}->{mid}) - slope(n {mid}->{high}) per 1000 samples: "
                         f"{fmt_ci(c.estimate, c.ci_low, c.ci_high)}, bootstrap p = {fmt_p(c.p_value)} "
                         f"({c.n_blocks} setting(s))")
            ests.append(c.estimate)
            ps.append(c.p_value)
            details.append(pd.DataFrame([{"comparison": f"slope drop per 1000 samples ({low}->{mid} vs {mid}->{high})",
                                          "estimate": c.estimate, "ci_low": c.ci_low, "ci_high": c.ci_high,
                                          "p_value": c.p_value, "n_items": c.n_items}]))
            ours += f" Gain per 1000 extra samples shrinks by {c.estimate:+.3f} from the first to the second step."
    if not ests:
        return _no_data(key, "no run sets differing only in train size")
    p_adj = stats.holm_correction(np.asarray(ps))
    det = pd.concat(details, ignore_index=True).assign(p_holm=p_adj)
    return _finding(key, ours, verdict(ests, p_adj, 1), "; ".join(parts) + " (Holm over the two parts)", det)


def _aligned_blocks(scores: pd.DataFrame, factor: str, levels: list, items: pd.DataFrame) -> list[np.ndarray]:
    """(k x n) item arrays for every setting that has all ``levels`` of ``factor`` (rows in ``levels`` order)."""
    keys = [k for k in ("model", "method", "method_params", "placement", "connector", "train_dataset", "seed", "lr",
                        "epochs", "dataset", "split", "train_size") if k in scores and k != factor]
    blocks = []
    for _, grp in scores.groupby(keys, dropna=False, sort=True):
        by = {v: r for v, r in zip(grp[factor], grp.itertuples())}
        if not all(lv in by for lv in levels):
            continue
        arrays = [_item_array(items, by[lv].run_id, by[lv].dataset) for lv in levels]
        common = arrays[0].index
        for a in arrays[1:]:
            common = common.intersection(a.index)
        if len(common):
            blocks.append(np.vstack([a[common].to_numpy() for a in arrays]))
    return blocks


def finding_adapter_stable(table: pd.DataFrame, items: pd.DataFrame | None = None) -> Finding:
    """Seed-to-seed spread per method (scores centred per setting); Brown–Forsythe across methods."""
    key = "adapter_stable"
    scores = primary_scores(table)
    keys = [k for k in ("model", "method", "method_params", "placement", "connector", "train_dataset", "train_size",
                        "lr", "epochs", "dataset") if k in scores]
    resid: dict[str, list[float]] = {}
    for _, grp in scores.groupby(keys, dropna=False):
        if grp["seed"].nunique() >= 2:
            resid.setdefault(grp["method"].iloc[0], []).extend((grp["value"] - grp["value"].mean()).tolist())
    resid = {m: v for m, v in resid.items() if len(v) >= 2}
    if "adapter" not in resid or len(resid) < 2:
        return _no_data(key, "adapter and another method need at least two seeds each")
    sd = {m: float(np.std(v, ddof=1)) for m, v in resid.items()}
    order = sorted(sd, key=sd.get)
    bf = stats.variance_test(*[resid[m] for m in order])
    ours = "Seed SD by method: " + ", ".join(f"{m} {sd[m]:.4f}" for m in order) + f"; most stable: {order[0]}."
    statistic = (f"Brown–Forsythe across {len(order)} methods: W = {bf.statistic:.2f}, p = {fmt_p(bf.p_value)}, "
                 f"variance ratio = {bf.effect_size:.2f}")
    if order[0] == "adapter":
        v = "supported" if bf.p_value <= 0.05 else "inconclusive"
    else:
        pair = stats.variance_test(resid["adapter"], resid[order[0]])
        statistic += f"; adapter vs {order[0]}: W = {pair.statistic:.2f}, p = {fmt_p(pair.p_value)}"
        v = "contradicted" if pair.p_value <= 0.05 else "inconclusive"
    return _finding(key, ours, v, statistic)


def finding_adapter_hallucination(table: pd.DataFrame, items: pd.DataFrame) -> Finding:
    """Adapter vs each other method: POPE accuracy (higher is better, blocks = the 3 POPE splits) and CHAIR_s
    (share of captions with a hallucinated object, lower is better), item-paired, last epoch."""
    key = "adapter_hallucination"
    pope = primary_scores(table, split=None, own_only=False)
    pope = pope[pope["metric"] == "pope"]
    chair = final_epoch(table[table["metric"] == "chair"])
    rows, expected = [], []
    for other in [m for m in PEFT_METHODS if m != "adapter"]:
        for name, sc, metric, sign in (("POPE accuracy", pope, "pope", 1), ("CHAIR_s", chair, "chair", -1)):
            pairs = pair_runs(sc, "method", "adapter", other, ignore=("method_params", "placement", "lr"))
            if pairs.empty:
                continue
            rows.append(compare_pairs(items, pairs, label=f"{name}: adapter - {other}", metric=metric))
            expected.append(sign)
    if not rows:
        return _no_data(key, "no POPE/CHAIR results for adapter and another method")
    res = pd.concat(rows, ignore_index=True)
    keep = res["estimate"].notna().to_numpy()
    res, expected = _holm(res), [e for e, k in zip(expected, keep) if k]
    by = lambda sc, m: sc[sc["method"] == m]["value"].mean()  # noqa: E731
    recall = final_epoch(table[table["metric"] == "chair.recall"])
    listed = lambda sc: ", ".join(f"{m} {by(sc, m):.3f}" for m in PEFT_METHODS if m in set(sc["method"]))  # noqa: E731
    ours = f"POPE F1 by method: {listed(pope)}; CHAIR_s: {listed(chair)} (lower is better)"
    if not recall.empty:  # CHAIR rewards captions that name no object at all: show how many objects they name
        ours += f"; object recall of the captions: {listed(recall)}"
    ours += "."
    return _finding(key, ours, verdict(res["estimate"], res["p_holm"], expected), _describe(res), res, expected)


CHECKS = {"adapter_best": finding_adapter_best, "connector_unseen": finding_connector_unseen,
          "placement": finding_placement, "data_size": finding_data_size, "adapter_stable": finding_adapter_stable,
          "adapter_hallucination": finding_adapter_hallucination}


def rq_items(table: pd.DataFrame, runs_dir: str | None = None) -> pd.DataFrame:
    """Item scores for every last-epoch primary / POPE / CHAIR row of a table."""
    rows = final_epoch(table[~table["metric"].str.contains(".", regex=False)])
    return load_items(runs_dir or table.attrs["runs_dir"], rows)


def evaluate_findings(tables: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> list[Finding]:
    """Run every check on its RQ's ``(table, items)``; a missing RQ gives an inconclusive "not measured"."""
    out = []
    for key, check in CHECKS.items():
        rq = PAPER_FINDINGS[key][0]
        if rq not in tables or tables[rq][0].empty:
            out.append(_no_data(key, f"no finished runs of {rq}"))
            continue
        out.append(check(*tables[rq]))
    return out


def findings_table(found: list[Finding]) -> pd.DataFrame:
    """A display table: RQ, the paper's finding, ours, verdict, statistic."""
    df = pd.DataFrame([{k: getattr(f, k) for k in ("rq", "paper", "ours", "verdict", "statistic")} for f in found])
    return df.rename(
        columns={"rq": "RQ", "paper": "Paper's finding", "ours": "Our measurement", "verdict": "Verdict",
                 "statistic": "Statistic"})


def findings_details(found: list[Finding]) -> pd.DataFrame:
    """All comparisons behind the findings (for a forest plot): finding, comparison, estimate, CI, p_holm, expected."""
    parts = [f.details for f in found if f.details is not None and not f.details.empty]
    cols = ["finding", "comparison", "estimate", "ci_low", "ci_high", "p_holm", "expected"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)
