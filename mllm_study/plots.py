"""Display helpers for the research-question notebooks: readable tables, CI plots, Markdown computed from data.

Usage: ``setup_notebook(); show(df, caption="..."); ci_plot(scores, x="column", hue="method")``
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .method_info import LiveSequence, method_infos, method_order

__all__ = ["METHOD_ORDER", "PRETTY", "method_colors", "method_display", "setup_notebook", "fmt_ci", "fmt_p", "pretty", "show", "say", "verdict_md",
           "ci_plot", "forest_plot", "method_key"]


#: Method names in display order (each method's ``order`` in its file under ``methods/``), a live sequence: a method
#: registered later appears too. Sort with :func:`method_key`.
METHOD_ORDER = LiveSequence(method_order)


def method_colors(names: Sequence[Any] = ()) -> dict:
    """One colour per method for every figure of every report: each declared method its own colour (its
    ``color`` in ``methods/<name>.py``; the base model "none" grey), other names after them in the order given
    (the same order gives the same colours)."""
    import seaborn as sns
    from matplotlib.colors import to_rgb

    base = sns.color_palette("tab10", 10)
    fixed = {n: to_rgb(i.color) for n, i in method_infos().items() if i.color is not None}
    husl, taken = sns.color_palette("husl", 20), {tuple(c) for c in fixed.values()}
    # other names: tab10's last five, then husl from its 11th colour on (cycling), skipping declared methods' colours
    free = (c for c in itertools.chain(base[5:], (husl[i % 20] for i in itertools.count(10))) if tuple(c) not in taken)
    out = {}
    for n in names:
        out[n] = fixed[n] if n in fixed else next(free)
    return {**fixed, **out} if not names else out


def method_display(name: Any) -> str:
    """A method's display name ("LoRA"); other names as they are."""
    info = method_infos().get(name)
    return info.display if info else str(name)


PRETTY = {"method": "Method", "connector": "Connector", "placement": "Placement", "dataset": "Dataset",
          "train_dataset": "Trained on", "train_size": "Train size", "seed": "Seed", "lr": "LR", "epoch": "Epoch",
          "value": "Score", "n": "n", "metric": "Metric", "estimate": "Estimate", "ci_low": "CI low",
          "ci_high": "CI high", "p_value": "p", "p_holm": "p (Holm)", "effect_size": "Effect (d_z)",
          "trainable_params": "Trainable params", "trainable_percent": "Trainable %", "group": "Group",
          "train_seconds": "Train s", "samples_per_second": "Samples/s", "comparison": "Comparison",
          "n_items": "Items", "n_blocks": "Blocks", "n_units": "Units", "unit": "Replicated over", "mean": "Mean", "std": "SD", "column": "Column"}


def setup_notebook() -> None:
    """Quiet warnings, a readable seaborn theme, PNG figures and compact pandas display (first cell's call)."""
    import logging

    import matplotlib
    import seaborn as sns

    warnings.filterwarnings("ignore")
    for name in ("transformers", "peft", "accelerate", "papermill", "PIL"):
        logging.getLogger(name).setLevel(logging.ERROR)
    sns.set_theme(style="whitegrid", context="notebook")
    matplotlib.rcParams.update({"figure.dpi": 90, "savefig.dpi": 90, "figure.figsize": (8, 4)})
    pd.set_option("display.precision", 3)
    pd.set_option("display.max_columns", 40)
    pd.set_option("display.width", 160)


def forest_plot(details: pd.DataFrame, ax=None, label: str = "comparison", hue: str | None = "finding",
                xlabel: str = "Estimate (a - b) with 95% CI", facet: str | None = None, colors: dict | None = None):
    """Horizontal estimates with CIs, one row per comparison, a line at 0.

    ``facet``: one panel per value (e.g. ``column``), each with its own x axis, so that estimates in different
    units (CIDEr, accuracy) never share an axis. Returns the axis (or the list of panels)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    d = details.dropna(subset=["estimate"]).reset_index(drop=True)
    if facet and facet in d and d[facet].nunique() > 0:
        groups = list(dict.fromkeys(d[facet]))
        sizes = [max(1, int((d[facet] == g).sum())) for g in groups]
        fig, axes = plt.subplots(len(groups), 1, figsize=(9, 0.32 * sum(sizes) + 0.9 * len(groups)),
                                 gridspec_kw={"height_ratios": [s + 1.5 for s in sizes]}, squeeze=False)
        keys = list(dict.fromkeys(d[hue])) if hue else [None]
        colors = dict(zip(keys, sns.color_palette("colorblind", n_colors=max(len(keys), 1))))
        for g, a in zip(groups, axes[:, 0]):
            forest_plot(d[d[facet] == g], ax=a, label=label, hue=hue, xlabel="", colors=colors)
            a.set_title(str(g), fontsize="small", loc="left")
        axes[-1, 0].set_xlabel(xlabel)
        fig.tight_layout()
        return list(axes[:, 0])
    ax = ax or plt.subplots(figsize=(9, max(2.0, 0.35 * len(d) + 1)))[1]
    keys = list(dict.fromkeys(d[hue])) if hue else [None]
    colors = colors or dict(zip(keys, sns.color_palette("colorblind", n_colors=max(len(keys), 1))))
    for i, r in d.iterrows():
        lo = r["estimate"] - r["ci_low"] if pd.notna(r["ci_low"]) else 0.0
        hi = r["ci_high"] - r["estimate"] if pd.notna(r["ci_high"]) else 0.0
        ax.errorbar(r["estimate"], i, xerr=[[max(lo, 0)], [max(hi, 0)]], fmt="o", capsize=3,
                    color=colors[r[hue] if hue else None], label=r[hue] if hue else None)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_yticks(range(len(d)))
    ax.set_yticklabels(d[label])
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if hue:
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize="small", frameon=False, loc="best")
    return ax


def verdict_md(finding) -> str:
    """A finding as Markdown: the paper's claim, what we measured, the verdict and its statistic."""
    return (f"**Paper:** {finding.paper}  \n**Here:** {finding.ours}  \n"
            f"**Verdict: {finding.verdict}.** {finding.statistic}")


def say(text: str) -> None:
    """Display Markdown computed in a cell (numbers in the prose come from the data, never typed in)."""
    from IPython.display import Markdown, display

    display(Markdown(text))


def fmt_ci(est: float, low: float, high: float, digits: int = 3) -> str:
    """``0.512 [0.480, 0.544]`` (just the estimate when the CI is unknown)."""
    if est is None or (isinstance(est, float) and math.isnan(est)):
        return "-"
    f = f"{{:.{digits}f}}"
    if low is None or high is None or any(isinstance(v, float) and not math.isfinite(v) for v in (low, high)):
        return f.format(est)
    return f"{f.format(est)} [{f.format(low)}, {f.format(high)}]"


def fmt_p(p: float, sign: str = "") -> str:
    """``0.011`` / ``< 0.001`` in a table; with ``sign="="`` in prose: ``= 0.011`` / ``< 0.001`` (never "= <")."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-" if not sign else "= -"
    if p < 0.001:
        return "< 0.001"
    return f"{sign} {p:.3f}" if sign else f"{p:.3f}"


def pretty(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Rounded numbers, formatted p-values, methods by their display names ("LoRA") and readable column names."""
    out = df.copy()
    for col in out.columns:
        if col in ("method", "method_a", "method_b"):
            out[col] = out[col].map(method_display)
        elif col in ("p_value", "p_holm"):
            out[col] = out[col].map(fmt_p)
        elif col in ("lr", "connector_lr"):
            out[col] = out[col].map(lambda v: "-" if pd.isna(v) else f"{v:.1e}")
        elif col in ("trainable_params", "n", "n_items", "n_blocks", "n_units", "train_size", "seed"):
            out[col] = out[col].map(lambda v: "-" if pd.isna(v) else f"{int(v):,}")
        elif pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].round(digits)
    methods = method_infos()  # a pivot's method columns too
    return out.rename(columns={c: PRETTY.get(c, method_display(c) if c in methods else c) for c in out.columns})


def show(df: pd.DataFrame, caption: str | None = None, digits: int = 3):
    """Display a readable table (pretty names, rounded, no index) with an optional caption."""
    from IPython.display import display

    styler = pretty(df, digits).style.hide(axis="index").format(precision=digits, na_rep="-")
    if caption:
        styler = styler.set_caption(caption)
    display(styler)


def ci_plot(df: pd.DataFrame, x: str, y: str = "value", hue: str | None = None, lo: str = "ci_low",
            hi: str = "ci_high", ax=None, order: Sequence | None = None, hue_order: Sequence | None = None,
            numeric_x: bool = False, log_x: bool = False, xlabel: str | None = None, ylabel: str | None = None,
            title: str | None = None):
    """Points (or lines for a numeric x) with error bars from precomputed CIs, dodged by ``hue``."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    ax = ax or plt.subplots()[1]
    hues = list(hue_order or (sorted(df[hue].dropna().unique(), key=method_key) if hue else [None]))
    palette = method_colors(hues) if hue else {None: sns.color_palette()[0]}
    cats = list(order or (df[x].drop_duplicates().tolist() if not numeric_x else []))
    width = 0.6
    for k, h in enumerate(hues):
        d = df if hue is None else df[df[hue] == h]
        if d.empty:
            continue
        if numeric_x:
            d = d.sort_values(x)
            xs = d[x].astype(float).to_numpy()
        else:
            offset = (k - (len(hues) - 1) / 2) * (width / max(len(hues), 1))
            xs = np.array([cats.index(v) for v in d[x]], dtype=float) + offset
        ys = d[y].astype(float).to_numpy()
        err = None
        if lo in d and hi in d:
            low, high = d[lo].astype(float).to_numpy(), d[hi].astype(float).to_numpy()
            err = np.vstack([np.nan_to_num(ys - low), np.nan_to_num(high - ys)]).clip(min=0)
        ax.errorbar(xs, ys, yerr=err, fmt="o-" if numeric_x else "o", capsize=3, color=palette[h],
                    label=str(h) if hue else None, markersize=5, linewidth=1.5 if numeric_x else 0,
                    elinewidth=1.2)
    if not numeric_x:
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels([str(c) for c in cats], rotation=30 if len(cats) > 4 else 0, ha="right"
                           if len(cats) > 4 else "center")
    if log_x:
        from matplotlib.ticker import LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10))
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels on a short log axis overlap
    elif numeric_x and len(df) and np.allclose(df[x].astype(float), np.round(df[x].astype(float))):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, sizes: no 0.5 ticks
    ax.set_xlabel(xlabel or PRETTY.get(x, x))
    ax.set_ylabel(ylabel or PRETTY.get(y, y))
    if title:
        ax.set_title(title)
    if hue:
        ax.legend(title=PRETTY.get(hue, hue), fontsize="small", frameon=False)
    return ax


def method_key(v: Any) -> tuple:
    """Sort key for method names: METHOD_ORDER first, in that order, then the rest alphabetically."""
    order = method_order()
    return (order.index(v) if v in order else len(order), str(v))
