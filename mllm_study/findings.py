"""The paper's headline findings checked against our measurements: supported / contradicted / inconclusive /
not measurable here.

Usage: ``df = findings_table(evaluate_findings({"rq1_main": (table, items), ...}, flags=flags_from_figures(figs)))``

Every check reads the tidy results table of one research question plus its per-item scores
(:func:`mllm_study.report.load_items`) and returns a :class:`Finding` with the statistic behind the verdict.

- *Unit of comparison*: one column (dataset x split) at a time; scores of different columns (0/1 accuracies, CIDEr
  up to 10) are never pooled. A finding's per-column contrasts are Holm-corrected together.
- *Unit of replication*: with two or more training seeds, the seed (a one-sample t over per-seed mean
  differences); with one seed, the test item, and the statistic says that training randomness is not covered
  (:func:`mllm_study.contrasts.replicated_contrast`). CI and p come from the same t, so they agree.
- *Validity*: a measurement the validity instrument flags (collapsed, at or below chance or question-only,
  unparsed, unconverged, repeated words, captions naming no object; :func:`flags_from_figures`) enters no
  comparison; a comparison with nothing left is "not measurable here" with the reason, and a finding whose
  comparisons are all not measurable is "not measurable here", never supported or contradicted.
- *Verdict rule* (:func:`verdict`) over the measurable comparisons: a comparison counts when its Holm-adjusted
  p <= alpha; *supported* when every one counts in the paper's direction, *contradicted* when any counts in the
  opposite direction, otherwise *inconclusive* (including "not enough runs to test").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from . import stats
from .contrasts import (MATCH_KEYS, item_array, with_contrast_columns, column_key, compare_pairs, load_items, pair_runs,
                        replicated_contrast)
from .method_info import LiveSequence, method_infos, study_methods
from .report import final_epoch, fmt_ci, fmt_p, primary_scores

__all__ = ["Finding", "PaperFinding", "FINDINGS", "paper_finding", "PAPER_FINDINGS", "CHECKS", "PEFT_METHODS",
           "NOT_MEASURABLE", "verdict", "flags_from_figures", "finding_adapter_best",
           "finding_connector_unseen", "finding_placement", "finding_data_size", "finding_adapter_stable",
           "finding_adapter_hallucination", "evaluate_findings", "findings_table", "findings_details", "rq_items"]

NOT_MEASURABLE = "not measurable here"
#: The study's PEFT methods in display order (``study=True`` in their files under ``methods/``), a live sequence.
PEFT_METHODS = LiveSequence(study_methods)


@dataclass(frozen=True)
class PaperFinding:
    """One headline finding of the paper: the research question whose runs test it, the finding as we test it,
    and the check that reads that RQ's ``(table, items)`` and returns a :class:`Finding`."""

    key: str
    rq: str
    paper: str
    check: Callable[..., "Finding"]


#: key -> :class:`PaperFinding`, in the order the report lists them (registered with :func:`paper_finding`).
FINDINGS: dict[str, PaperFinding] = {}


def paper_finding(key: str, rq: str, paper: str):
    """Decorator registering ``check(table, items, flags=None) -> Finding`` as the paper's finding ``key`` of ``rq``
    (``paper``: the finding as we test it). A new finding is one decorated function (and a test)."""

    def wrap(check):
        FINDINGS[key] = PaperFinding(key, rq, paper, check)
        return check

    return wrap


class _FindingsView(Mapping):
    """A read-only view of :data:`FINDINGS` through one projection (``PAPER_FINDINGS``, ``CHECKS``)."""

    def __init__(self, project: Callable[[PaperFinding], Any]):
        self._project = project

    def __getitem__(self, key):
        return self._project(FINDINGS[key])

    def __iter__(self):
        return iter(list(FINDINGS))

    def __len__(self) -> int:
        return len(FINDINGS)

    def __repr__(self) -> str:
        return repr(dict(self))


#: key -> (research question, the paper's finding as we test it): a view of :data:`FINDINGS`.
PAPER_FINDINGS = _FindingsView(lambda f: (f.rq, f.paper))
#: key -> check function: a view of :data:`FINDINGS`.
CHECKS = _FindingsView(lambda f: f.check)

Flags = dict[tuple[str, str], str]


@dataclass
class Finding:
    """One paper finding next to what we measured."""

    key: str
    rq: str
    paper: str
    ours: str  # what we measured, in one or two sentences with numbers
    verdict: str  # supported | contradicted | inconclusive | not measurable here
    statistic: str  # the test(s) behind the verdict, with the unit of replication
    details: pd.DataFrame | None = None  # comparison, column, estimate, ci_low, ci_high, p_holm, unit, expected


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


def flags_from_figures(figures: pd.DataFrame | None) -> Flags:
    """(run_id, column key) -> the flag of :func:`mllm_study.validity.report_section`'s figures (flagged only)."""
    if figures is None or len(figures) == 0:
        return {}
    return {(r["run"], r["column"]): r["flag"] for _, r in figures.iterrows() if r["flag"] not in ("-", "", None)}


def _finding(key: str, ours: str, verdict_: str, statistic: str, details: pd.DataFrame | None = None,
             expected: Sequence[int] | int = 1) -> Finding:
    rq, paper = FINDINGS[key].rq, FINDINGS[key].paper
    if details is not None and not details.empty:
        details = details.assign(expected=np.broadcast_to(np.asarray(expected), (len(details),)).tolist(),
                                 finding=key)
    return Finding(key, rq, paper, ours, verdict_, statistic, details)


def _no_data(key: str, why: str) -> Finding:
    return _finding(key, f"Not measured: {why}.", "inconclusive", "-")


def _unit_text(r) -> str:
    unit = r.get("unit") if hasattr(r, "get") else None
    if not isinstance(unit, str):
        return ""
    n = int(r["n_units"]) if pd.notna(r.get("n_units")) else 0
    return f"over {n} {unit}"


def _describe(rows: pd.DataFrame, name: str = "comparison") -> str:
    parts = []
    for _, r in rows.iterrows():
        if pd.isna(r.get("estimate")):
            continue
        label = f"{r[name]} on {r['column']}" if "column" in r and name != "column" else str(r[name])
        parts.append(f"{label}: {fmt_ci(r['estimate'], r['ci_low'], r['ci_high'])} (p {fmt_p(r['p_value'], '=')}, "
                     f"same t), p_Holm {fmt_p(r['p_holm'], '=')}"
                     f", d_z = {r['effect_size']:.2f} ({_unit_text(r)})")
    return "; ".join(parts)


def _holm(df: pd.DataFrame) -> pd.DataFrame:
    """Holm over the measurable rows (the not-measurable ones stay, p_holm NaN)."""
    df = df.copy()
    if "estimate" not in df:
        df["estimate"] = np.nan
    ok = df["estimate"].notna() & df.get("p_value", pd.Series(np.nan, index=df.index)).notna()
    df["p_holm"] = np.nan
    if ok.any():
        df.loc[ok, "p_holm"] = stats.holm_correction(df.loc[ok, "p_value"].to_numpy())
    return df


def _left_out(res: pd.DataFrame) -> str:
    """Per column, the validity flags of the measurements left out ("" when none)."""
    parts = []
    for col, g in res.groupby("column", sort=False):
        why = [f for f in g.get("flags", pd.Series(dtype=object)).dropna() if f]
        if why:
            whole = g["estimate"].isna().all()
            kinds = [re.sub(r" \(.*?\)| on '.*?'", "", k).strip() for w in why for f in w.split(" / ")
                     for k in f.split(", ")]
            parts.append(f"{col}{'' if whole else ' (some runs)'}: " + ", ".join(dict.fromkeys(kinds)))
    return "; ".join(parts)


def _conclude(key: str, ours: str, res: pd.DataFrame, expected: Sequence[int] | int = 1,
              name: str = "comparison", use: pd.Series | None = None) -> Finding:
    """Verdict over the measurable rows of ``res`` (``use``: the rows the finding's claim is about); the statistic
    counts the comparisons for and against, names the significant ones, the unit and what was left out."""
    res = _holm(res)
    exp = np.broadcast_to(np.asarray(expected), (len(res),))
    use = use if use is not None else pd.Series(True, index=res.index)
    meas = use & res["estimate"].notna()
    if "flags" not in res:
        res["flags"] = None
    left = _left_out(res[use])
    notes = [f"left out as degenerate (validity flags): {left}"] if left else []
    if not meas.any():
        stat = "; ".join(notes) or "no comparison could be made"
        return _finding(key, ours, NOT_MEASURABLE if left else "inconclusive", stat, res, exp)
    m, e = res[meas], exp[meas.to_numpy()]
    sig = (m["p_holm"] <= 0.05).to_numpy()
    sign = np.sign(m["estimate"].to_numpy())
    n_for, n_against = int((sig & (sign == e)).sum()), int((sig & (sign == -e)).sum())
    units = sorted(set(m["unit"].dropna()))
    head = (f"{len(m)} per-column comparison(s), Holm-corrected together ({int(res['p_holm'].notna().sum())} in the "
            f"family): {n_for} significant in the paper's direction, {n_against} against")
    shown = m[sig] if sig.any() else m.loc[[m["p_holm"].idxmin()]]
    parts = [head, ("significant: " if sig.any() else "closest: ") + _describe(shown, name),
             "unit: " + " and ".join(units)]
    v = verdict(m["estimate"], m["p_holm"], e)
    return _finding(key, ours, v, "; ".join(parts + notes), res, exp)


def _best_text(means: pd.Series) -> str:
    top = [str(m) for m, v in means.items() if np.isclose(v, means.max())]
    return f"best {top[0]}" if len(top) == 1 else f"tie between {', '.join(top)}"


def _mean_by_column_text(sc: pd.DataFrame, by: str) -> str:
    """Per column, the best level of ``by`` (mean over the rest): no average over columns of different units."""
    parts = []
    for col, g in sc.groupby("column", sort=False):
        means = g.groupby(by)["value"].mean()
        parts.append(f"{col}: {_best_text(means)} ({means.max():.3f})")
    return "; ".join(parts)


@paper_finding("adapter_best", "rq1_main", "Adapter has the best overall performance across the eight datasets.")
def finding_adapter_best(table: pd.DataFrame, items: pd.DataFrame, flags: Flags | None = None) -> Finding:
    """Adapter minus each other PEFT method, per column (Holm over all), in the connector setting with the most
    complete grid."""
    key = "adapter_best"
    scores = primary_scores(table)
    scores = scores[scores["method"].isin(study_methods())]
    if "adapter" not in set(scores["method"]) or scores["method"].nunique() < 2:
        return _no_data(key, "adapter and at least one other method are needed")
    counts = scores.groupby("connector")["run_id"].nunique()
    connector = max(counts.index, key=lambda c: (counts[c], c == "tuned"))
    sc = scores[scores["connector"] == connector]
    rows = []
    for other in [m for m in study_methods() if m != "adapter" and m in set(sc["method"])]:
        pairs = pair_runs(sc, "method", "adapter", other, ignore=("method_params", "placement", "lr"))
        if not pairs.empty:
            rows.append(compare_pairs(items, pairs, label=f"adapter - {other}", flags=flags))
    if not rows:
        return _no_data(key, "no dataset has adapter and another method in the same setting")
    res = pd.concat(rows, ignore_index=True)
    wins = res.dropna(subset=["estimate"])
    ours = (f"Connector {connector}, {sc['dataset'].nunique()} column(s), each in its own metric: "
            + _mean_by_column_text(sc, "method") + ".")
    if len(wins):
        ours += (f" Adapter is ahead in {int((wins['estimate'] > 0).sum())} of {len(wins)} measurable "
                 "method x column comparisons.")
    return _conclude(key, ours, res)


@paper_finding("connector_unseen", "rq1_main", "Tuning the connector improves performance on unseen datasets.")
def finding_connector_unseen(table: pd.DataFrame, items: pd.DataFrame, flags: Flags | None = None) -> Finding:
    """Tuned minus frozen connector per column (methods as blocks within a column); the verdict reads the unseen
    columns, the seen ones are shown beside them (Holm over all)."""
    key = "connector_unseen"
    scores = primary_scores(table)
    pairs = pair_runs(scores, "connector", "tuned", "frozen")
    if pairs.empty:
        return _no_data(key, "no run pair differing only in the connector")
    groups = scores.drop_duplicates("dataset").set_index("dataset")["group"]
    res = compare_pairs(items, pairs, label="tuned - frozen", flags=flags)
    res["group"] = res["dataset"].map(groups)
    if not (res["group"] == "unseen").any():
        return _no_data(key, "no unseen dataset has both connector settings")
    meas = res.dropna(subset=["estimate"])
    ours = "; ".join(f"{g}: tuned - frozen positive in {int((d['estimate'] > 0).sum())} of {len(d)} measurable "
                     f"column(s), from {int(d['n_blocks'].sum())} method x seed pair(s)"
                     for g, d in meas.groupby("group")) or "no measurable column"
    res["comparison"] = [f"connector tuned - frozen ({g})" for g in res["group"]]
    return _conclude(key, ours + ".", res, use=res["group"] == "unseen")


@paper_finding("placement", "rq2_placement",
               "LoRA and IA3 work best placed in both attention and MLP; Adapter in the MLP.")
def finding_placement(table: pd.DataFrame, items: pd.DataFrame, flags: Flags | None = None) -> Finding:
    """Each study method's default placement against the other placements, per column: for LoRA and IA3 'both' vs
    attention and vs MLP; for Adapter 'mlp' vs attention and vs both (prefix has no placement). The paper's claim is
    each method's default placement (``default_placement`` in its file under ``methods/``)."""
    key = "placement"
    scores = primary_scores(table)
    infos = method_infos()
    claims = {m: infos[m].default_placement for m in study_methods() if infos[m].default_placement is not None}
    rows, best = [], []
    for method, claimed in claims.items():
        sm = scores[scores["method"] == method]
        if sm.empty:
            continue
        best.append(f"{method} ({_mean_by_column_text(sm, 'placement')})")
        for other in [p for p in ("attention", "mlp", "both") if p != claimed]:
            pairs = pair_runs(sm, "placement", claimed, other)
            if not pairs.empty:
                rows.append(compare_pairs(items, pairs, label=f"{method}: {claimed} - {other}", flags=flags))
    if not rows:
        return _no_data(key, "no placement pairs")
    return _conclude(key, "Best placement per column: " + "; ".join(best) + ".", pd.concat(rows, ignore_index=True))


@paper_finding("data_size", "rq4_data_size", "More training data helps, with diminishing returns.")
def finding_data_size(table: pd.DataFrame, items: pd.DataFrame, flags: Flags | None = None) -> Finding:
    """High minus low train size per column (more data helps, +1), and the change of the gain per decade of data
    from the first to the second size step (diminishing beyond a log-linear curve, -1). With an equal-steps design
    among the runs (``train_steps`` recorded, :func:`mllm_study.datasize.size_designs`) both are read on it, where
    data size is not confounded with the number of optimizer steps; else on the equal-epochs runs."""
    key = "data_size"
    scores = primary_scores(table)
    design = ""
    if "train_steps" in scores:  # an equal-steps design beside equal epochs: the size effect without more steps
        from .datasize import EQUAL_STEPS, size_designs

        designed = size_designs(scores)
        same = designed[designed["design"] == EQUAL_STEPS]
        if not same.empty:
            steps = "/".join(str(int(v)) for v in sorted(same["train_steps"].astype(float).unique()))
            scores = same.drop(columns="design").assign(epochs=0.0)  # its epochs differ by size by construction
            design = (f"Equal-steps design (every size trained for {steps} optimizer steps, epochs scaled inversely "
                      "with the size), so a size effect is not more training; the equal-epochs curve is in RQ4. ")
    sizes = sorted(int(s) for s in scores["train_size"].dropna().unique())
    if len(sizes) < 2:
        return _no_data(key, "fewer than two training-set sizes")
    low, high = sizes[0], sizes[-1]
    pairs = pair_runs(scores, "train_size", high, low)
    parts, expected = [], []
    if not pairs.empty:
        gain = compare_pairs(items, pairs, label=f"n={high} - n={low}", flags=flags)
        parts.append(gain)
        expected += [1] * len(gain)
    ours = f"{design}Sizes {sizes}."
    if len(sizes) >= 3:
        mid = sizes[len(sizes) // 2]
        x = np.log10([low, mid, high])
        w = np.array([1 / (x[1] - x[0]), -1 / (x[1] - x[0]) - 1 / (x[2] - x[1]), 1 / (x[2] - x[1])])
        curv = _curvature_rows(scores, [low, mid, high], w, items, flags or {},
                               f"gain per decade: ({mid}->{high}) - ({low}->{mid})")
        if not curv.empty:
            parts.append(curv)
            expected += [-1] * len(curv)
            ours += (" Diminishing returns tested against a log-linear curve: the gain per tenfold more data from "
                     f"{mid} to {high} minus that from {low} to {mid} (negative = flattening faster than log-linear).")
    if not parts:
        return _no_data(key, "no run sets differing only in train size")
    return _conclude(key, ours, pd.concat(parts, ignore_index=True), expected)


def _curvature_rows(scores: pd.DataFrame, levels: list, w: np.ndarray, items: pd.DataFrame, flags: Flags,
                    label: str) -> pd.DataFrame:
    """Per column, the contrast ``w`` over the three sizes of every setting that has them, replicated over seeds
    or items (:func:`replicated_contrast`)."""
    keys = [k for k in MATCH_KEYS if k != "train_size" and k in scores]
    by_col: dict[str, dict] = {}
    for _, grp in scores.groupby(keys, dropna=False, sort=True):
        by = {int(v): r for v, r in zip(grp["train_size"], grp.itertuples())}
        if not all(lv in by for lv in levels):
            continue
        r0 = by[levels[0]]
        col = column_key(r0.dataset, r0.split)
        entry = by_col.setdefault(col, {"column": r0.column, "dataset": r0.dataset, "diffs": [], "seeds": [],
                                        "excluded": []})
        why = [flags[(by[lv].run_id, col)] for lv in levels if (by[lv].run_id, col) in flags]
        if why:
            entry["excluded"].append(f"{r0.column} {r0.method} seed {r0.seed}: " + ", ".join(why))
            continue
        arrays = [item_array(items, by[lv].run_id, r0.dataset, r0.split) for lv in levels]
        common = arrays[0].index
        for a in arrays[1:]:
            common = common.intersection(a.index)
        if len(common):
            entry["diffs"].append(sum(wk * a[common] for wk, a in zip(w, arrays)))
            entry["seeds"].append(r0.seed)
    rows = []
    for col, e in by_col.items():
        row = {"column": e["column"], "dataset": e["dataset"], "comparison": label,
               "excluded": "; ".join(e["excluded"])}
        if e["diffs"]:
            c = replicated_contrast(e["diffs"], e["seeds"])
            row.update(estimate=c.estimate, ci_low=c.ci_low, ci_high=c.ci_high, p_value=c.p_value,
                       effect_size=c.effect_size, n_items=c.n_items, n_blocks=c.n_blocks, unit=c.unit,
                       n_units=c.n_units)
        else:
            row["not_measurable"] = row["excluded"]
        rows.append(row)
    return with_contrast_columns(pd.DataFrame(rows))


@paper_finding("adapter_stable", "rq5_stability", "Adapter is the most stable method across seeds.")
def finding_adapter_stable(table: pd.DataFrame, items: pd.DataFrame | None = None,
                           flags: Flags | None = None) -> Finding:
    """Seed-to-seed spread per method (scores centred per setting and column; columns scored in [0, 1] only, so
    CIDEr's scale does not dominate; flagged runs left out); Brown–Forsythe across methods."""
    key = "adapter_stable"
    flags = flags or {}
    scores = primary_scores(table)
    scores = scores[scores["metric"] != "cider"]
    scores = scores.assign(_flag=[flags.get((r, column_key(d, s))) for r, d, s in
                                  zip(scores["run_id"], scores["dataset"], scores["split"])])
    left_out = scores[scores["_flag"].notna()].rename(columns={"_flag": "flag"})
    scores = scores[scores["_flag"].isna()]
    keys = [k for k in MATCH_KEYS if k not in ("seed", "split") and k in scores]
    resid: dict[str, list[float]] = {}
    for _, grp in scores.groupby(keys, dropna=False):
        if grp["seed"].nunique() >= 2:
            resid.setdefault(grp["method"].iloc[0], []).extend((grp["value"] - grp["value"].mean()).tolist())
    resid = {m: v for m, v in resid.items() if len(v) >= 2}
    note = (f" {len(left_out)} flagged run x column measurement(s) left out "
            f"({', '.join(sorted(set(left_out['method'])))})." if len(left_out) else "")
    if "adapter" not in resid or len(resid) < 2:
        if len(left_out):
            return _finding(key, "Seed spread not measurable." + note, NOT_MEASURABLE,
                            "adapter and another method need two unflagged seeds each; flagged: "
                            + "; ".join(f"{r.method} s{r.seed} {r.column}: {r.flag}" for r in left_out.itertuples()))
        return _no_data(key, "adapter and another method need at least two seeds each")
    sd = {m: float(np.std(v, ddof=1)) for m, v in resid.items()}
    order = sorted(sd, key=sd.get)
    bf = stats.variance_test(*[resid[m] for m in order])
    ours = "Seed SD by method: " + ", ".join(f"{m} {sd[m]:.4f}" for m in order) + f"; most stable: {order[0]}." + note
    statistic = (f"Brown–Forsythe across {len(order)} methods (unit: training seeds, residuals from each setting's "
                 f"seed mean): W = {bf.statistic:.2f}, p {fmt_p(bf.p_value, '=')}, "
                 f"variance ratio = {bf.effect_size:.2f}")
    if order[0] == "adapter":
        v = "supported" if bf.p_value <= 0.05 else "inconclusive"
    else:
        pair = stats.variance_test(resid["adapter"], resid[order[0]])
        statistic += f"; adapter vs {order[0]}: W = {pair.statistic:.2f}, p {fmt_p(pair.p_value, '=')}"
        v = "contradicted" if pair.p_value <= 0.05 else "inconclusive"
    return _finding(key, ours, v, statistic)


@paper_finding("adapter_hallucination", "rq7_hallucination", "Adapter hallucinates the least.")
def finding_adapter_hallucination(table: pd.DataFrame, items: pd.DataFrame, flags: Flags | None = None) -> Finding:
    """Adapter vs each other method: POPE accuracy per split (higher is better) and CHAIR_s (share of captions
    with a hallucinated object, lower is better), item- or seed-replicated, last epoch; a POPE or CHAIR
    measurement the validity instrument flags (collapsed, repeated phrases, naming almost no object) is not
    measurable."""
    key = "adapter_hallucination"
    pope = primary_scores(table, split=None, own_only=False)
    pope = pope[pope["metric"] == "pope"]
    chair = final_epoch(table[table["metric"] == "chair"])
    rows = []
    for other in [m for m in study_methods() if m != "adapter"]:
        for name, sc, metric, sign in (("POPE accuracy", pope, "pope", 1), ("CHAIR_s", chair, "chair", -1)):
            pairs = pair_runs(sc, "method", "adapter", other, ignore=("method_params", "placement", "lr"))
            if pairs.empty:
                continue
            # every flag counts, for CHAIR too: a captioner that repeats phrases or names no object is degenerate,
            # and its share of hallucinated objects is not interpreted (it is shown, flagged, in the report)
            r = compare_pairs(items, pairs, label=f"{name}: adapter - {other}", metric=metric, flags=flags)
            rows.append(r.assign(_sign=sign))
    if not rows:
        return _no_data(key, "no POPE/CHAIR results for adapter and another method")
    res = pd.concat(rows, ignore_index=True)
    expected = res.pop("_sign").tolist()
    by = lambda sc, m: sc[sc["method"] == m]["value"].mean()  # noqa: E731
    recall = final_epoch(table[table["metric"] == "chair.recall"])
    listed = lambda sc: ", ".join(f"{m} {by(sc, m):.3f}" for m in study_methods() if m in set(sc["method"]))  # noqa: E731
    ours = f"POPE F1 by method: {listed(pope)}; CHAIR_s: {listed(chair)} (lower is better)"
    if not recall.empty:  # CHAIR rewards captions that name no object at all: show how many objects they name
        ours += f"; object recall of the captions: {listed(recall)}"
    return _conclude(key, ours + ".", res, expected)


def rq_items(table: pd.DataFrame, runs_dir: str | None = None) -> pd.DataFrame:
    """Item scores for every last-epoch primary / POPE / CHAIR row of a table."""
    rows = final_epoch(table[~table["metric"].str.contains(".", regex=False)])
    return load_items(runs_dir or table.attrs["runs_dir"], rows)


def evaluate_findings(tables: dict[str, tuple[pd.DataFrame, pd.DataFrame]], flags: Flags | None = None
                      ) -> list[Finding]:
    """Run every check on its RQ's ``(table, items)``; a missing RQ gives an inconclusive "not measured".

    Args:
        flags: (run_id, column key) -> reason, from :func:`flags_from_figures`; flagged measurements are left out.
    """
    out = []
    for key, finding in FINDINGS.items():
        rq = finding.rq
        if rq not in tables or tables[rq][0].empty:
            out.append(_no_data(key, f"no finished runs of {rq}"))
            continue
        out.append(finding.check(*tables[rq], flags=flags))
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
    cols = ["finding", "comparison", "column", "estimate", "ci_low", "ci_high", "p_value", "p_holm", "unit", "n_units",
            "expected", "not_measurable"]
    return pd.concat(parts, ignore_index=True).reindex(columns=cols) if parts else pd.DataFrame(columns=cols)
