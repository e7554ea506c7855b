"""Run records you can trust: the manifest a finished run is checked against, and re-scoring after a metric change.

Usage: ``reason = run_damage(Path("runs/<id>"))`` (None when intact); ``rescore_run(run_dir, params)``

A finished run's ``status.json`` lists every file of the run directory with its size (``files``). "Done" means
that status says so *and* every listed file exists with that size and parses (JSON, every line of JSON lines), so a
truncated ``metrics.json`` or a deleted ``predictions.jsonl`` or ``adapter/`` is a damaged run: sweeps re-run it and
the results table names it instead of reading it. ``metrics.json`` records the version of every metric the run was
scored with (``metric_versions``); when a registered metric's version changes, :func:`rescore_run` re-scores the
stored predictions (no retraining) and rewrites the scores, the metrics and the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .files import read_json, write_json_atomic

__all__ = ["manifest", "run_damage", "is_done", "metric_versions", "metric_variants_used", "stale_metrics",
           "rescore_run"]

_PARSED: dict[tuple[str, int, int], str | None] = {}  # (path, mtime_ns, size) -> parse error; files do not change


def manifest(run_dir: Path) -> dict[str, int]:
    """Every file of a run directory (relative path -> size in bytes), except ``status.json``, which holds this."""
    run_dir = Path(run_dir)
    return {p.relative_to(run_dir).as_posix(): p.stat().st_size for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != "status.json"}


def _parse_error(path: Path) -> str | None:
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _PARSED:
        error = None
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".jsonl":
                for n, line in enumerate(path.read_text().splitlines(), 1):
                    if line.strip():
                        try:
                            json.loads(line)
                        except ValueError:
                            error = f"line {n} is not valid JSON"
                            break
        except ValueError as exc:
            error = f"not valid JSON ({exc})"
        _PARSED[key] = error
    return _PARSED[key]


def run_damage(run_dir: Path, status: dict | None = None) -> str | None:
    """Why a run whose status says ``done`` cannot be trusted (a missing, resized or unparsable file), or None."""
    run_dir = Path(run_dir)
    if status is None:

        try:
            status = read_json(run_dir / "status.json")
        except (OSError, ValueError) as exc:
            return str(exc)
    files = status.get("files")
    if not isinstance(files, dict):  # written before manifests existed: the files every run has
        files = {name: None for name in ("spec.json", "metrics.json", "predictions.jsonl")}
    for rel, size in files.items():
        path = run_dir / rel
        if not path.is_file():
            return f"{rel} is missing"
        if size is not None and path.stat().st_size != size:
            return f"{rel} has {path.stat().st_size} bytes, the manifest says {size}"
        error = _parse_error(path)
        if error:
            return f"{rel}: {error}"
    return None


def metric_versions(rows: list[dict]) -> dict[str, str]:
    """{metric: registered version} of every metric in tidy result rows (``pope.f1`` belongs to ``pope``)."""
    from .metrics import get_metric

    names = sorted({r["metric"].split(".", 1)[0] for r in rows})
    return {name: get_metric(name).version for name in names}


def stale_metrics(metrics: dict) -> list[str]:
    """Metrics a run was scored with whose registered version has changed since (all of them when unrecorded)."""
    current = metric_versions(metrics.get("results", []))
    recorded = metrics.get("metric_versions") or {}
    return [name for name, version in current.items() if recorded.get(name) != version]


def metric_variants_used(rows: list[dict], chosen: dict[str, str] | None) -> dict[str, str]:
    """The variant each metric of ``rows`` was scored with: the run's choice, else the metric's default (metrics
    without named variants are left out)."""
    from .metrics import resolve_variant

    out = {}
    for name in sorted({r["metric"] for r in rows if "." not in r["metric"]}):
        variant = resolve_variant(name, (chosen or {}).get(name))
        if variant is not None:
            out[name] = variant
    return out


def rescore_run(run_dir: Path, params) -> list[str]:
    """Re-score a finished run's stored predictions with the current metrics if any of its metrics changed.

    Args:
        run_dir: a finished, intact run directory.
        params: the run's Params (to find its evaluation datasets).

    Returns:
        The metrics that were stale (empty: nothing to do, nothing written).
    """
    from .data import load_dataset_info, load_split
    from .evaluate import EvalResult, rescore
    from .runs import result_rows, eval_targets

    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    stale = stale_metrics(metrics)
    if not stale:
        return []
    pred_path = run_dir / "predictions.jsonl"
    items = [json.loads(line) for line in pred_path.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for item in items:
        groups.setdefault((item["dataset"], item["split"], item["epoch"], item["metric"]), []).append(item)
    targets: dict[tuple[str, str], tuple[Any, list[dict], dict]] = {}
    for folder, split, size in eval_targets(params, progress=False):
        info = load_dataset_info(folder)
        targets[(info["name"], split)] = (folder, load_split(folder, split, size, seed=0, check_images=False), info)
    rows: list[dict] = []
    by_block: dict[tuple, dict[str, EvalResult]] = {}
    for (dataset, split, epoch, name), group in groups.items():
        _, records, info = targets[(dataset, split)]
        by_id = {r["id"]: r for r in records}
        ordered = [by_id[item["id"]] for item in group]
        result = rescore(ordered, [item["prediction"] for item in group], name, info,
                         variant=(metrics.get("metric_variants") or {}).get(name))
        for item, score in zip(group, result.per_item):
            item["score"] = float(score)
        by_block.setdefault((dataset, split, epoch), {})[name] = EvalResult(
            name, float(result.value), {k: float(v) for k, v in result.extra.items()}, group)
    for (dataset, split, epoch), results in by_block.items():
        rows.extend(result_rows(results, targets[(dataset, split)][2], split, epoch))
    own = [r for r in rows if r["dataset"] == metrics["dataset"] and r["metric"] == metrics["metric"]
           and r["split"] == params.run.eval_split]
    if own:
        metrics["value"] = max(own, key=lambda r: r["epoch"] or 0)["value"]
    metrics.update(results=rows, metric_versions=metric_versions(rows))
    tmp = pred_path.with_name(f".{pred_path.name}.tmp")
    tmp.write_text("".join(json.dumps(item) + "\n" for item in items))
    tmp.replace(pred_path)
    write_json_atomic(run_dir / "metrics.json", metrics)
    status = read_json(run_dir / "status.json")
    write_json_atomic(run_dir / "status.json", {**status, "files": manifest(run_dir), "rescored": stale})
    return stale


def is_done(run_dir: Path) -> bool:
    """A run directory is complete when its status says ``done`` and every file of its manifest exists and parses
    (:func:`run_damage`); a damaged run is not done, so it is re-run."""
    try:
        status = read_json(Path(run_dir) / "status.json")
    except (OSError, ValueError):
        return False
    return isinstance(status, dict) and status.get("status") == "done" and run_damage(run_dir, status) is None
