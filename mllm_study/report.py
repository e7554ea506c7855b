"""Report helpers: the tidy results table -> scores with item-bootstrap CIs, paired comparisons, efficiency.

Usage: ``scores = with_item_cis(primary_scores(table), load_items(runs_dir, primary_scores(table)))``

Uncertainty conventions (docs/study.md: every number carries its uncertainty):
- one run's score on one dataset: percentile bootstrap over its test items (:func:`with_item_cis`);
- an average over datasets (unseen / seen / overall): stratified bootstrap, items resampled within each dataset,
  datasets weighted equally like the paper's plain mean (:func:`stratified_mean`);
- a difference between two settings: one column at a time (never pooled across columns of different units),
  replicated over training seeds when there are two or more, else over test items (and then said to ignore
  training randomness); CI and p from the same t procedure (:func:`replicated_contrast`), Holm within a table;
- across seeds: Student-t intervals (:func:`mllm_study.stats.summarize`).
Test items are the same for every run of a dataset (the test subsample has a fixed seed), which is what makes
item pairing valid. Caveat: items sharing an image are treated as independent (intervals slightly too narrow).

Items, intervals and contrasts live in :mod:`mllm_study.contrasts`, display and figures in :mod:`mllm_study.plots`,
notebook execution and HTML in :mod:`mllm_study.render`; all are re-exported here, so a notebook needs only ``from mllm_study import report as rp``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import stats
from .method_info import size_label as method_size_label
from .contrasts import (MATCH_KEYS, Contrast, item_array, column_key, compare_pairs, contrast_items,
                        higher_is_better_of, load_items, pair_runs, pairwise, replicated_contrast, stratified_contrast,
                        stratified_mean, versus_base, winners, with_item_cis)
from .plots import (METHOD_ORDER, PRETTY, method_key, ci_plot, fmt_ci, fmt_p, forest_plot, method_colors, pretty,
                    say, setup_notebook, show, verdict_md)
from .datasize import EQUAL_EPOCHS, EQUAL_STEPS, log_linear_fits, log_linear_weights, size_designs
from .evidence import (gallery_html, gallery_items, loss_curves, overfitting_note, runs_used, show_type_failures,
                       steps_note, type_failures, world_dir)
from .render import (NotebookResult, code_version, execute_notebook, render_html, report_is_current,
                     write_index)

__all__ = [
    # scores, items and contrasts
    "FAMILY_ORDER", "MATCH_KEYS", "column_label", "project_path", "primary_scores", "final_epoch", "load_items", "with_item_cis",
    "stratified_mean", "Contrast", "stratified_contrast", "replicated_contrast", "column_key", "contrast_items", "pair_runs", "compare_pairs",
    "pairwise", "versus_base", "winners", "score_matrix", "friedman_ranks", "flops_for_runs", "size_label",
    "train_logs", "epoch_losses", "pope_items", "pope_metric_ci", "baseline_matrix", "parse_matrix", "chance_lines",
    "baseline_lines", "baseline_values", "refresh_legend", "with_parsed",
    # re-exported from datasize (RQ4's designs and log-linear fits)
    "EQUAL_EPOCHS", "EQUAL_STEPS", "size_designs", "log_linear_fits", "log_linear_weights",
    # re-exported from evidence
    "loss_curves", "gallery_items", "gallery_html", "runs_used", "world_dir", "overfitting_note", "steps_note",
    "type_failures", "show_type_failures",
    # re-exported from plots and render
    "METHOD_ORDER", "PRETTY", "method_colors", "setup_notebook", "fmt_ci", "fmt_p", "pretty", "show", "say", "verdict_md", "ci_plot",
    "forest_plot", "NotebookResult", "code_version", "execute_notebook", "render_html", "report_is_current",
    "write_index",
]


FAMILY_ORDER = ["sqa", "vizwiz", "iconqa_txt", "iconqa_blank", "flickr30k", "okvqa", "ocrvqa", "vqav2"]


GROUP_LABELS = {"unseen": "Unseen avg", "seen": "Seen avg", "all": "Overall avg"}
UNBOUNDED_METRICS = ("cider",)  # not on the [0, 1] scale of the other columns: never averaged with them


def project_path(path: str | Path) -> str:
    """``path`` relative to the project root when it lies inside it (reports never print a local absolute path);
    else its last two parts."""
    from .config import PARAMS_DIR

    p = Path(path)
    try:
        return p.resolve().relative_to(PARAMS_DIR.parent.resolve()).as_posix()
    except ValueError:
        return p.as_posix() if not p.is_absolute() else Path(*p.parts[-2:]).as_posix()


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


def flops_for_runs(scores: pd.DataFrame, model_config: str, n_ctx: int) -> pd.DataFrame:
    """Parameter and FLOP accounting (:mod:`mllm_study.accounting`) for each distinct method setting in ``scores``.

    Returns:
        method, method_params, placement, connector, vision, peft_params (the method's own parameters),
        trainable_percent_acc, connector_trainable (trainable parameters outside the method: the tuned connector,
        a tuned vision tower), train_flops_per_token (4 P_frozen + 6 P_trainable), train_flops_per_token_study
        (2 P_frozen + 4 P_trainable), infer_flops_per_token, train_flops_per_image, infer_flops_per_image.
    """
    from .accounting import count_method

    scores = scores if "vision" in scores.columns else scores.assign(vision="frozen")
    keys = ["method", "method_params", "placement", "connector", "vision"]
    rows = []
    for key in scores[keys].drop_duplicates().itertuples(index=False):
        method, params, placement, connector, vision = key
        r = count_method(model_config, method, json.loads(params), None if placement == "default" else placement,
                         connector, n_ctx=n_ctx, vision=vision)
        rows.append({"method": method, "method_params": params, "placement": placement, "connector": connector,
                     "vision": vision, "peft_params": r.peft_params, "trainable_percent_acc": r.trainable_percent,
                     "connector_trainable": r.trainable - r.peft_params,
                     "train_flops_per_token": r.train_flops_per_token,
                     "train_flops_per_token_study": r.train_flops_per_token_study,
                     "infer_flops_per_token": r.infer_flops_per_token,
                     "train_flops_per_image": r.train_flops_per_image,
                     "infer_flops_per_image": r.infer_flops_per_image})
    return pd.DataFrame(rows)


def size_label(row: Any) -> str:
    """The method's size knob as text ("r=16", "bottleneck=32", "tokens=10", "-"): the knob and label each method
    declares in its file (``size_knob``, ``size_label``; :func:`mllm_study.method_info.size_label`)."""
    params = json.loads(row["method_params"]) if isinstance(row["method_params"], str) else row["method_params"]
    method = row.get("method") if hasattr(row, "get") else None
    return method_size_label(method, params or {})


def score_matrix(scores: pd.DataFrame, index: Sequence[str], items: pd.DataFrame | None = None,
                 text: bool = True, n_resamples: int = 1000) -> pd.DataFrame:
    """Wide table: rows ``index`` (e.g. method, connector), one column per paper column plus group averages.

    Cells are "estimate [low, high]" strings when ``text`` (CIs from ``ci_low``/``ci_high`` and, for the averages,
    stratified bootstrap over ``items``), else the estimates. A group average is the plain mean of the group's
    columns scored in [0, 1] (CIDEr columns are left out: another unit), shown only for rows that have every such
    column of the group, and only when the group has two or more of them.
    """
    present = [f for f in FAMILY_ORDER if f in set(scores["dataset"])]
    present += sorted(set(scores["dataset"]) - set(present))
    # averages only over columns of one unit (scores in [0, 1]: CIDEr is left out) and of two or more columns
    unbounded = set(scores.loc[scores["metric"].isin(UNBOUNDED_METRICS), "dataset"]) if "metric" in scores else set()
    same_unit = [d for d in present if d not in unbounded]
    groups = {"unseen": [d for d in same_unit if _group_of(scores, d) == "unseen"],
              "seen": [d for d in same_unit if _group_of(scores, d) == "seen"], "all": same_unit}
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
        for g, members in groups.items():
            if len(members) < 2 or any(d not in by_ds for d in members):
                continue
            if items is not None and text:
                arrays = [item_array(items, by_ds[d].run_id, d).to_numpy() for d in members]
                iv = stratified_mean(arrays, n_resamples=n_resamples)
                row[GROUP_LABELS[g]] = fmt_ci(iv.estimate, iv.low, iv.high)
            else:
                est = float(np.mean([by_ds[d].value for d in members]))
                row[GROUP_LABELS[g]] = fmt_ci(est, math.nan, math.nan) if text else est
        rows.append(row)
    out = pd.DataFrame(rows)
    if "method" in out:  # methods in the usual order; other keys keep the order of ``scores`` (sort it first)
        out = out.iloc[sorted(range(len(out)), key=lambda i: method_key(out["method"].iloc[i]))]
    return out.reset_index(drop=True)


def _group_of(grp: pd.DataFrame, dataset: str) -> str | None:
    g = grp.loc[grp["dataset"] == dataset, "group"] if "group" in grp else pd.Series(dtype=str)
    return str(g.iloc[0]) if len(g) else None


MIN_FRIEDMAN_BLOCKS = 5  # below this the chi-square approximation means little: the test is not shown


def friedman_ranks(scores: pd.DataFrame, treatment: str = "method", block: str | Sequence[str] = "dataset",
                   min_blocks: int = MIN_FRIEDMAN_BLOCKS, higher_is_better: bool | None = None):
    """Friedman test of ``treatment`` over complete blocks (datasets); returns (TestResult or None, message).

    Ranks within a block need no common unit, so columns of different metrics may be blocks; each block is ranked
    in its metric's registered direction (rank 1 = best: the highest accuracy, the lowest CHAIR), read from the
    ``metric`` column (``higher_is_better`` sets one direction for all). With fewer than ``min_blocks`` complete
    blocks no test is made (the message says why)."""
    blocks = [block] if isinstance(block, str) else list(block)
    if higher_is_better is None:  # orient every block so that higher is better: ranks within a block follow
        direction = {key if isinstance(key, tuple) else (key,): higher_is_better_of(grp)
                     for key, grp in scores.groupby(blocks, sort=False)}
        sign = [1.0 if direction.get(k, True) else -1.0 for k in scores[blocks].itertuples(index=False, name=None)]
        scores = scores.assign(value=scores["value"] * np.asarray(sign, dtype=float))
    elif not higher_is_better:
        scores = scores.assign(value=-scores["value"])
    wide = scores.pivot_table(index=blocks, columns=treatment, values="value", aggfunc="mean").dropna()
    if wide.shape[1] < 3 or wide.shape[0] < max(2, min_blocks):
        return None, (f"Friedman test not shown: {wide.shape[0]} complete block(s) x {wide.shape[1]} "
                      f"treatment(s) (needs >= {max(2, min_blocks)} x 3)")
    res = stats.friedman_test(wide)
    msg = (f"Friedman chi2 = {res.statistic:.2f}, df = {res.extra['df']}, p {fmt_p(res.p_value, '=')}, "
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


_POPE_CODES = {"tp": 0, "fp": 1, "tn": 2, "fn": 3, "unparsed_yes": 4, "unparsed_no": 5}


def pope_items(items: pd.DataFrame) -> pd.DataFrame:
    """POPE items with ``code`` (0 tp, 1 fp, 2 tn, 3 fn, 4/5 unparsed on a positive/negative probe), parsed as the
    ``pope`` metric does: an answer :func:`~mllm_study.metrics.parse_yes_no` cannot parse (empty included) is wrong
    whatever the label and is not a yes."""
    from .metrics import parse_yes_no

    df = items[items["metric"] == "pope"].copy()
    label = df["references"].map(lambda r: str(r[0] if isinstance(r, list) else r).strip().lower())
    answer = [parse_yes_no(p) if p.strip() else None for p in df["prediction"].fillna("")]
    df["code"] = [_POPE_CODES[f"unparsed_{lab}" if ans is None else ("tp" if lab == "yes" else "fp") if ans == "yes"
                              else ("tn" if lab == "no" else "fn")] for lab, ans in zip(label, answer)]
    return df


def _pope_stat(name: str):
    def stat(codes, axis=-1):
        c = np.asarray(codes)
        tp, fp, tn, fn, u_yes, u_no = ((c == k).sum(axis=axis).astype(float) for k in range(6))
        n, positives = tp + fp + tn + fn + u_yes + u_no, tp + fn + u_yes
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            recall = np.where(positives > 0, tp / positives, 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
                "yes_ratio": (tp + fp) / n, "parse_rate": 1 - (u_yes + u_no) / n}[name]
    return stat


def pope_metric_ci(codes: Sequence[int], name: str, n_resamples: int = 1000) -> stats.Interval:
    """A POPE metric (accuracy, precision, recall, f1, yes_ratio, parse_rate) with a bootstrap CI over probes."""
    return stats.bootstrap_ci(np.asarray(codes, dtype=float), _pope_stat(name), n_resamples=n_resamples, seed=0)


BASELINES = {"chance": "chance (uniform guess)", "gold_majority": "gold majority (most frequent training answer)",
             "question_only": "question-only (no image)"}
BASELINE_STYLES = {"chance": ("black", "--"), "question_only": ("tab:red", ":"), "gold_majority": ("tab:purple", "-.")}


def baseline_matrix(figures: pd.DataFrame | None, index: Sequence[str], columns: Sequence[str] | None = None
                    ) -> pd.DataFrame:
    """Rows shaped like :func:`score_matrix`'s for the world's baselines (chance, gold majority, question-only) of
    each column, from :func:`mllm_study.validity.report_section`'s figures (empty when there are none). The base
    model zero-shot is the score matrix's own ``none`` row."""
    world = (figures.attrs.get("world") if figures is not None else None) or {}
    rows = []
    for key, name in BASELINES.items():
        row = {index[0]: name, **{k: "-" for k in index[1:]}}
        for col, f in world.items():
            if "/" in col or f.get(key) is None:
                continue
            label = column_label(col)
            if columns is None or label in columns:
                row[label] = f"{f[key]:.3f}"
        rows.append(row)
    out = pd.DataFrame(rows)
    return out if out.shape[1] > len(index) else pd.DataFrame()


def parse_matrix(figures: pd.DataFrame | None, scores: pd.DataFrame, index: Sequence[str]) -> pd.DataFrame:
    """Parse rate (share of outputs in the column's answer format; mean over seeds) per ``index`` x column."""
    if figures is None or figures.empty:
        return pd.DataFrame()
    m = scores.merge(figures.rename(columns={"run": "run_id", "column": "dataset"}), on=["run_id", "dataset"])
    if m.empty:
        return pd.DataFrame()
    wide = m.pivot_table(index=list(index), columns="column", values="parse rate", aggfunc="mean")
    order = [column_label(f) for f in FAMILY_ORDER if column_label(f) in wide.columns]
    return wide[order + [c for c in wide.columns if c not in order]].round(3).reset_index()


def with_parsed(items: pd.DataFrame, world_dir: str | Path | None) -> pd.DataFrame:
    """``items`` with ``parsed``: whether each prediction is an answer in its column's format, read by the same
    parser the validity instrument's parse rate uses (a letter or option for multiple choice, yes/no for POPE, a
    number for fill-in-the-blank, a listed choice for IconQA-txt, any non-empty answer for open VQA). NaN where
    the world has no such column (real-data profiles: ``world_dir`` None)."""
    from .data import load_dataset_info, load_split
    from .validity import Column, column_kind, parsed_answer

    out = items.copy()
    out["parsed"] = np.nan
    if world_dir is None or out.empty:
        return out
    folders = {}
    for folder in Path(world_dir).iterdir():
        if (folder / "dataset.json").exists():
            folders[load_dataset_info(folder)["name"]] = folder
    for (dataset, split, metric), g in out.groupby(["dataset", "split", "metric"], sort=False):
        folder = folders.get(dataset)
        if folder is None or not (folder / f"{split}.json").exists():
            continue
        recs = {r["id"]: r for r in load_split(folder, split, check_images=False)}
        info = load_dataset_info(folder)
        if metric != info["metric"]:  # an extra metric row (CHAIR beside CIDEr): its text is the caption's
            continue
        col = Column(dataset, dataset, split, metric, info.get("group", ""), column_kind(metric, list(recs.values())), recs)
        out.loc[g.index, "parsed"] = [float(parsed_answer(col, str(p or ""), recs[i]) is not None) if i in recs else np.nan
                                      for p, i in zip(g["prediction"], g["id"])]
    return out


def chance_lines(ax, figures: pd.DataFrame | None, order: Sequence[str], kinds: Sequence[str] = ("chance",
                 "question_only")) -> None:
    """Short dashed lines at each categorical x (column labels in ``order``) for the world's baselines."""
    world = (figures.attrs.get("world") if figures is not None else None) or {}
    by_label = {column_label(k): f for k, f in world.items() if "/" not in k}
    styles = BASELINE_STYLES
    for kind in kinds:
        drawn = False
        for i, label in enumerate(order):
            v = (by_label.get(label) or {}).get(kind)
            if v is None:
                continue
            color, ls = styles[kind]
            ax.hlines(v, i - 0.4, i + 0.4, colors=color, linestyles=ls, linewidth=1.2,
                      label=BASELINES[kind] if not drawn else None)
            drawn = True
    refresh_legend(ax)


def refresh_legend(ax) -> None:
    """Redraw ``ax``'s legend with every labelled artist (the baselines too), keeping the legend's title; in the
    last column of its figure the legend goes beside the axes (with the baselines it is long enough to hide points)."""
    old = ax.get_legend()
    title = old.get_title().get_text() if old is not None else None
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    spec = ax.get_subplotspec() if hasattr(ax, "get_subplotspec") else None
    last = spec is None or spec.colspan.stop == spec.get_gridspec().ncols
    where = dict(loc="upper left", bbox_to_anchor=(1.01, 1.0)) if last else {}
    ax.legend(handles, labels, title=title or None, fontsize="small", frameon=False, **where)


def baseline_values(figures: pd.DataFrame | None, column: str, kinds: Sequence[str] = ("chance", "question_only")
                    ) -> dict[str, float]:
    """The world's baselines of one column (its label "SQA (img)" or its key ``sqa``) that exist, by kind."""
    world = (figures.attrs.get("world") if figures is not None else None) or {}
    by_label = {column_label(k): f for k, f in world.items() if "/" not in k}
    f = by_label.get(column) or world.get(column) or {}
    return {k: float(f[k]) for k in kinds if f.get(k) is not None}


def baseline_lines(ax, figures: pd.DataFrame | None, columns: str | Sequence[str],
                   kinds: Sequence[str] = ("chance", "question_only"), annotate: bool | None = None) -> dict:
    """Horizontal lines across ``ax`` at each column's chance and question-only baseline (a panel whose x axis is
    not the column: placement, size, epoch, trainable parameters), with one legend entry per kind saying what the
    line is. ``columns``: one column label, or several sharing the panel (each line is then labelled at its right
    end with the column; ``annotate`` forces that on or off). Returns ``{column: {kind: value}}`` drawn."""
    cols = [columns] if isinstance(columns, str) else list(dict.fromkeys(columns))
    annotate = len(cols) > 1 if annotate is None else annotate
    drawn: dict[str, dict[str, float]] = {}
    seen: set[str] = set()
    for col in cols:
        for kind, v in baseline_values(figures, col, kinds).items():
            color, ls = BASELINE_STYLES[kind]
            ax.axhline(v, color=color, linestyle=ls, linewidth=1.1, alpha=0.8, zorder=0,
                       label=BASELINES[kind] if kind not in seen else None)
            if annotate:
                ax.annotate(col, xy=(1.0, v), xycoords=("axes fraction", "data"), xytext=(2, 0),
                            textcoords="offset points", fontsize="x-small", color=color, va="center")
            seen.add(kind)
            drawn.setdefault(col, {})[kind] = v
    if drawn:
        refresh_legend(ax)
    return drawn
