"""The evidence under a report's numbers: loss curves, a gallery of test items, the settings the runs really used.

Usage: ``loss_curves(runs_dir, scores); display(HTML(gallery_html(scores, items, world_dir(profile, cache))))``

Everything here reads run directories (``train_log.jsonl``, ``metrics.json``, ``spec.json``) and the dataset
records; nothing trains. Re-exported by :mod:`mllm_study.report`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .plots import method_key, method_colors

__all__ = ["GALLERY_SEED", "loss_curves", "gallery_items", "gallery_html", "runs_used", "world_dir", "overfitting_note",
           "steps_note", "type_failures", "show_type_failures"]

GALLERY_SEED = 0  # the gallery's items are drawn with this seed: the same items in every render


def world_dir(profile: str, cache: str | Path, overrides: Any = None) -> Path | None:
    """The embedded world's folder of ``profile`` and ``--set`` overrides (None for real-data profiles: their records
    name their images)."""
    from .config import load_params, parse_overrides, project_path

    params = load_params(profile=profile, overrides={**parse_overrides(overrides),
                                                     "paths.cache": str(project_path(cache))})  # from the root
    if params.run.model != "tiny-llava":
        return None
    from .world import ensure_world

    return Path(ensure_world(params, progress=False))


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def runs_used(runs_dir: str | Path, scores: pd.DataFrame, by: Sequence[str] = ("method", "connector")) -> pd.DataFrame:
    """What the runs behind ``scores`` actually used, per ``by`` group: learning rate(s), epochs, optimizer steps,
    batch size, training samples per epoch, seeds and runs (read from each run's spec.json and metrics.json)."""
    rows = []
    for rid in scores["run_id"].drop_duplicates():
        spec, metrics = _read(Path(runs_dir) / rid / "spec.json"), _read(Path(runs_dir) / rid / "metrics.json")
        run, train = spec.get("run", {}), metrics.get("train", {})
        if run.get("method") == "none":
            continue
        rows.append({"run_id": rid, "lr": run.get("lr"), "connector_lr": run.get("connector_lr"),
                     "epochs": run.get("epochs"), "steps": train.get("steps"), "batch": run.get("batch_size"),
                     "samples": run.get("train_size")})
    if not rows:
        return pd.DataFrame()
    cols = list(dict.fromkeys(["run_id", *by, "seed", "connector"]))
    used = pd.DataFrame(rows).merge(scores[[c for c in cols if c in scores]].drop_duplicates("run_id"), on="run_id")
    fmt = lambda vals, f: ", ".join(f(v) for v in sorted(set(v for v in vals if v is not None and v == v)))  # noqa: E731
    out = []
    for key, g in used.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        out.append({**dict(zip(by, key)), "learning rate": fmt(g["lr"], lambda v: f"{v:.1e}"),
                    "connector lr": fmt(g.loc[g["connector"] == "tuned", "connector_lr"], lambda v: f"{v:.1e}")
                    or "- (frozen)" if "connector" in g else "-",
                    "epochs": fmt(g["epochs"], lambda v: f"{v:g}"), "optimizer steps": fmt(g["steps"], str),
                    "batch": fmt(g["batch"], str), "train samples": fmt(g["samples"], str),
                    "seeds": fmt(g["seed"], str), "runs": len(g)})
    df = pd.DataFrame(out)
    if "method" in df:
        df = df.iloc[sorted(range(len(df)), key=lambda i: method_key(df["method"].iloc[i]))]
    return df.reset_index(drop=True)


def loss_curves(runs_dir: str | Path, scores: pd.DataFrame, panel: str = "train_dataset", hue: str = "method",
                max_panels: int = 8, title: str = "Training loss (answer tokens)"):
    """Training loss against step from each run's train_log.jsonl, one panel per ``panel`` value, one colour per
    ``hue`` (the study's method colours); with several seeds, the mean and a min-max band over seeds.

    Returns:
        The figure, or None when no run logged a loss.
    """
    import matplotlib.pyplot as plt

    runs = scores[scores["method"] != "none"].drop_duplicates("run_id")
    if "connector" in runs and runs["connector"].nunique() > 1:  # one setting per curve: the tuned connector
        runs = runs[runs["connector"] == "tuned"]
    rows = []
    for r in runs.itertuples():
        path = Path(runs_dir) / r.run_id / "train_log.jsonl"
        if not path.exists():
            continue
        for e in map(json.loads, (x for x in path.read_text().splitlines() if x.strip())):
            if "loss" in e and "step" in e:
                rows.append({"run_id": r.run_id, "step": e["step"], "loss": e["loss"], "seed": r.seed,
                             panel: getattr(r, panel), hue: getattr(r, hue)})
    if not rows:
        return None
    log = pd.DataFrame(rows)
    panels = list(dict.fromkeys(log[panel]))[:max_panels]
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3 * nrow), squeeze=False, sharey=False)
    hues = sorted(log[hue].unique(), key=method_key)
    colors = method_colors(hues)
    for ax, p in zip(axes.ravel(), panels):
        d = log[log[panel] == p]
        for h in hues:
            dh = d[d[hue] == h]
            if dh.empty:
                continue
            # one curve per setting x seed; the band spans the seeds of the first setting with the most seeds
            per_seed = dh.groupby(["seed", "step"])["loss"].mean().unstack(0)
            mean = per_seed.mean(axis=1)
            ax.plot(mean.index, mean.to_numpy(), color=colors[h], label=f"{h} ({per_seed.shape[1]} seed"
                    f"{'s' if per_seed.shape[1] > 1 else ''})", linewidth=1.4)
            if per_seed.shape[1] > 1:
                ax.fill_between(mean.index, per_seed.min(axis=1), per_seed.max(axis=1), color=colors[h], alpha=0.2)
        from .report import column_label  # (report imports this module)

        ax.set(title=column_label(p) if panel == "train_dataset" else str(p), xlabel="Optimizer step", ylabel="Loss")
        ax.legend(fontsize="x-small", frameon=False)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.suptitle(title + ("; band = min-max over seeds" if log["seed"].nunique() > 1 else ""))
    fig.tight_layout()
    return fig


def gallery_items(scores: pd.DataFrame, items: pd.DataFrame, n: int = 8, seed: int = GALLERY_SEED) -> pd.DataFrame:
    """``n`` test items per column, the same for every method, drawn reproducibly (``seed``): half among the items
    some method fails (score below the column's best), half among the rest. One run per method and column (the
    lowest seed, connector tuned when both exist)."""
    rng = np.random.default_rng(seed)
    runs = scores.sort_values(["connector", "seed"], ascending=[False, True]) if "connector" in scores else scores
    runs = runs.drop_duplicates(["method", "dataset"])
    picked = []
    for ds, g in runs.groupby("dataset", sort=False):
        sel = items[items["run_id"].isin(g["run_id"]) & (items["dataset"] == ds)]
        sel = sel[sel["epoch"] == sel.groupby("run_id")["epoch"].transform("max")]
        if sel.empty:
            continue
        wide = sel.pivot_table(index="id", columns="run_id", values="score", aggfunc="first").dropna()
        if wide.empty:
            continue
        failed = wide.index[(wide.min(axis=1) < wide.max(axis=1)) | (wide.max(axis=1) <= 0)]
        rest = wide.index.difference(failed)
        k_fail = min(len(failed), n // 2)
        ids = list(rng.choice(sorted(failed), k_fail, replace=False)) if k_fail else []
        pool = sorted(rest) if len(rest) >= n - k_fail else sorted(wide.index.difference(ids))
        ids += list(rng.choice(pool, min(len(pool), n - len(ids)), replace=False))
        chosen = sel[sel["id"].isin(ids)].merge(g[["run_id", "method", "column"]], on="run_id")
        chosen["order"] = chosen["id"].map({i: k for k, i in enumerate(sorted(ids))})
        picked.append(chosen)
    return pd.concat(picked, ignore_index=True) if picked else pd.DataFrame()


def _thumbnail(path: Path, size: int = 64) -> str:
    try:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            im = im.resize((size, size), Image.NEAREST) if max(im.size) < size else im
            buf = io.BytesIO()
            im.save(buf, format="PNG")
        return (f'<img alt="{html.escape(path.name)}" width="{size}" height="{size}" '
                f'src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">')
    except (OSError, ValueError):
        return "(no image)"


def _records(folder: Path, split: str) -> dict[str, dict]:
    path = folder / f"{split}.json"
    try:
        return {r["id"]: r for r in json.loads(path.read_text())}
    except (OSError, ValueError, KeyError):
        return {}


def gallery_html(scores: pd.DataFrame, items: pd.DataFrame, world: str | Path | None, n: int = 8,
                 seed: int = GALLERY_SEED, max_columns: int = 8) -> str:
    """HTML gallery: per column, ``n`` items (:func:`gallery_items`) with the image (embedded base64 PNG), the
    question, the references and each method's prediction and score; failed items are marked."""
    chosen = gallery_items(scores, items, n, seed)
    if chosen.empty:
        return "<p>No per-item predictions to show.</p>"
    out = [f"<p>Items drawn with seed {seed} (half among items some method gets wrong), the same for every "
           "method; a red score is below the column's best score on that item.</p>"]
    for ds in list(dict.fromkeys(chosen["dataset"]))[:max_columns]:
        d = chosen[chosen["dataset"] == ds]
        split = d["split"].iloc[0]
        folder = Path(world) / ds if world is not None else Path(ds)
        recs = _records(folder, split)
        methods = sorted(d["method"].unique(), key=method_key)
        head = "".join(f"<th>{html.escape(str(m))}</th>" for m in methods)
        rows = []
        for item_id, g in sorted(d.groupby("id"), key=lambda x: x[1]["order"].iloc[0]):
            rec = recs.get(item_id, {})
            img = rec.get("image")
            path = (folder / "images" / img if (folder / "images" / str(img)).exists() else folder / str(img)) \
                if img else None
            question = " ".join(t["value"] for t in rec.get("conversations", []) if t.get("from") == "human")
            question = question.replace("<image>", "").strip() or str(g["prediction"].iloc[0])
            refs = g["references"].iloc[0]
            refs = refs if isinstance(refs, list) else [refs]
            best = g["score"].max()
            cells = []
            for m in methods:
                r = g[g["method"] == m]
                if r.empty:
                    cells.append("<td>-</td>")
                    continue
                s = float(r["score"].iloc[0])
                style = ' style="color:#c44e52"' if s < best or best <= 0 else ""
                cells.append(f"<td>{html.escape(str(r['prediction'].iloc[0]))}<br><b{style}>{s:.2f}</b></td>")
            rows.append(f"<tr><td>{_thumbnail(path) if path else '(no image)'}</td>"
                        f"<td style='max-width:280px'>{html.escape(question)}</td>"
                        f"<td style='max-width:200px'>{html.escape(' | '.join(map(str, refs[:5])))}</td>"
                        + "".join(cells) + "</tr>")
        out.append(f"<h4>{html.escape(str(d['column'].iloc[0]))}</h4><table><tr><th>image</th><th>question</th>"
                   f"<th>references</th>{head}</tr>{''.join(rows)}</table>")
    return "\n".join(out)


def overfitting_note(losses: pd.DataFrame, paper_epochs: int = 12) -> str:
    """What the held-out loss per epoch (:func:`mllm_study.report.epoch_losses`) lets a reader conclude about
    overfitting: where each run's minimum lies, and plainly when overfitting cannot be observed."""
    d = losses.dropna(subset=["held_out_loss"])
    if d.empty:
        return "No held-out loss was logged: overfitting cannot be observed."
    last = d.groupby("run_id")["epoch"].transform("max")
    at_min = d.loc[d.groupby("run_id")["held_out_loss"].idxmin()]
    still = int((at_min["epoch"].to_numpy() == last.loc[at_min.index].to_numpy()).sum())
    n, epochs = len(at_min), int(d["epoch"].max())
    if still == n:
        return (f"**Held-out loss is lowest at the last epoch in all {n} runs:** it is still falling, so "
                f"overfitting cannot be observed in this budget ({epochs} epochs; the paper trains {paper_epochs} "
                "with a checkpoint per epoch). The best-epoch and last-epoch comparisons below are then the same "
                "checkpoint, not evidence against overfitting.")
    return (f"Held-out loss reaches its minimum before the last epoch in {n - still} of {n} runs (epochs "
            f"{', '.join(str(int(e)) for e in sorted(at_min['epoch']))}); the rest are still falling at epoch "
            f"{epochs}.")


def steps_note(runs_dir: str | Path, scores: pd.DataFrame, factor: str = "train_size") -> str:
    """Whether the optimizer steps of the runs grow with ``factor`` (data size confounded with training length)."""
    steps: dict = {}
    for r in scores[scores["method"] != "none"].drop_duplicates("run_id").itertuples():
        s = _read(Path(runs_dir) / r.run_id / "metrics.json").get("train", {}).get("steps")
        if s is not None:
            steps.setdefault(int(getattr(r, factor)), set()).add(int(s))
    if len(steps) < 2:
        return ""
    text = ", ".join(f"n={k}: {'/'.join(map(str, sorted(v)))} steps" for k, v in sorted(steps.items()))
    means = [np.mean(sorted(v)) for _, v in sorted(steps.items())]
    shared = set.intersection(*steps.values())
    if shared:  # an equal-steps design beside the equal-epochs one
        return (f"Optimizer steps per size: {text}. The equal-epochs runs give larger sets more steps (size and "
                f"training length confounded, as in the paper); the equal-steps runs train every size for "
                f"{'/'.join(map(str, sorted(shared)))} steps and separate the two (both designs below).")
    if all(b > a for a, b in zip(means, means[1:])):
        return (f"**Data size is confounded with training length:** the runs keep the epochs fixed, so the optimizer "
                f"steps grow with the data ({text}). A gain here is more data *and* more steps; an equal-steps "
                "design, which would separate them, is not run in this budget. A gain per 1000 samples that shrinks "
                "across log-spaced sizes is expected even on a log-linear curve, so diminishing returns are tested "
                "against a log-linear fit (the verdict below).")
    return f"Optimizer steps per size: {text}."


def type_failures(figures: pd.DataFrame | None) -> pd.DataFrame:
    """The question types on which a report's trained runs stayed near chance or collapsed onto one answer
    (:func:`mllm_study.validity.question_types` on the report's runs, ``figures.attrs["question_types"]``), each
    beside the zero-shot base model's score on the same type: a column's score can come from some of its types
    while another is never learned. Empty without such rows (or for real data, which has no question types)."""
    cols = ["column", "type", "n", "chance", "method", "runs", "score", "zero-shot", "top answer", "top share", "what"]
    types = None if figures is None else figures.attrs.get("question_types")
    if types is None or len(types) == 0:
        return pd.DataFrame(columns=cols)
    base = {(r["column"], r["type"]): r["score"] for _, r in types[types["method"] == "none"].iterrows()}
    rows = []
    for _, r in types[(types["method"] != "none") & (types["near_chance"] | types["collapsed"])].iterrows():
        what = [w for w, on in (("near chance", r["near_chance"]), (f"collapsed on {r['top']!r}", r["collapsed"]))
                if on]
        rows.append({"column": r["column"], "type": r["type"], "n": r["n"], "chance": r["chance"],
                     "method": r["method"], "runs": r["runs"], "score": r["score"],
                     "zero-shot": base.get((r["column"], r["type"])), "top answer": r["top"],
                     "top share": r["top_share"], "what": ", ".join(what)})
    return pd.DataFrame(rows, columns=cols)


def show_type_failures(figures: pd.DataFrame | None) -> None:
    """Display :func:`type_failures` with a sentence of what it shows (nothing when there are none)."""
    from IPython.display import display

    from .plots import say

    table = type_failures(figures)
    if not len(table):
        return
    say(f"{len(table)} method x question-type measurements of these runs are near chance (at most chance + 0.05) or "
        "collapsed onto one answer, though their column's score may not show it: the skill of that type was not "
        "learned. Not a flag (the column's comparisons stand), but no comparison here measures that skill.")
    display(table.style.hide(axis="index").format(precision=3, na_rep="-"))
