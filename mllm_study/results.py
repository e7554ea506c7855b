"""The tidy results table: one row per run x dataset x split x epoch x metric, every factor a column.

Usage: ``table, report = collect_results("runs"); print(report)``

Only finished runs (``status: done``) enter the table; everything else is counted in the report with its reason,
so an analysis always says how many runs it skipped and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from .config import RUN_FACTORS, factor_row
from .records import run_damage

__all__ = ["collect_results", "CollectReport", "FACTOR_COLUMNS", "item_scores"]

# Columns every row carries (the run's factors, config.RUN_FACTORS), in this order, before dataset/split/epoch/
# metric/value.
FACTOR_COLUMNS = ["run_id", *RUN_FACTORS.values()]
_DTYPES = {"train_size": "Int64", "seed": "Int64", "epoch": "Int64", "n": "Int64", "value": "float64",
           "lr": "float64", "connector_lr": "float64", "epochs": "float64"}


@dataclass
class CollectReport:
    """How many run directories were read, and why the others were skipped."""

    used: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # run dir name -> reason

    def __str__(self) -> str:
        reasons: dict[str, int] = {}
        for r in self.skipped.values():
            reasons[r] = reasons.get(r, 0) + 1
        detail = "; ".join(f"{n} {r}" for r, n in sorted(reasons.items()) if not r.startswith("damaged"))
        damaged = len(self.damaged)
        detail = "; ".join(x for x in (detail, f"{damaged} damaged" if damaged else "") if x)
        text = f"read {self.used} finished runs, skipped {len(self.skipped)}" + (f" ({detail})" if detail else "")
        return "\n".join([text, *(f"damaged run {rid}: {why} (a sweep re-runs it)"
                                  for rid, why in self.damaged.items())])

    @property
    def damaged(self) -> dict[str, str]:
        """Runs whose status says done but whose files do not match their manifest -> what is wrong."""
        return {rid: r.removeprefix("damaged: ") for rid, r in self.skipped.items() if r.startswith("damaged: ")}


def _factor_row(rid: str, spec: dict) -> dict:
    return {"run_id": rid, **factor_row(spec["run"])}


def collect_results(runs_dir: str | Path, run_ids: Iterable[str] | None = None) -> tuple[pd.DataFrame, CollectReport]:
    """Read finished runs into the tidy table.

    Args:
        runs_dir: folder of run directories.
        run_ids: restrict to these runs (e.g. one sweep's); missing ones are reported as skipped.

    Returns:
        (table, report). Extra columns: ``trainable_params``, ``trainable_percent``, ``train_seconds``,
        ``samples_per_second``, ``final_loss``, the measured cost of training (``train_steps``, ``train_samples``,
        ``train_tokens`` (non-padding input tokens), ``tokens_per_second``, ``peak_memory_mb`` with
        ``peak_memory_kind``: ``cuda_max_allocated`` per run, or ``cpu_rss``, the process's peak resident memory so
        far), and the method parameters as ``param_<name>``.
    """
    runs_dir = Path(runs_dir)
    report = CollectReport()
    wanted = list(run_ids) if run_ids is not None else sorted(
        p.name for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) if runs_dir.exists() else []
    rows: list[dict] = []
    for rid in wanted:
        d = runs_dir / rid
        try:
            record = json.loads((d / "status.json").read_text())
            status = record.get("status") if isinstance(record, dict) else None
        except FileNotFoundError:
            report.skipped[rid] = "missing" if not d.exists() else "half-written (no status)"
            continue
        except ValueError:
            report.skipped[rid] = "damaged: status.json is not valid JSON"
            continue
        if status != "done":
            report.skipped[rid] = status or "unknown status"
            continue
        damage = run_damage(d, record)
        if damage:
            report.skipped[rid] = f"damaged: {damage}"
            continue
        try:
            spec = json.loads((d / "spec.json").read_text())
            metrics = json.loads((d / "metrics.json").read_text())
        except (OSError, ValueError) as exc:
            report.skipped[rid] = f"damaged: unreadable record ({type(exc).__name__})"
            continue
        factors = _factor_row(rid, spec)
        params = {f"param_{k}": v for k, v in spec["run"].get("method_params", {}).items()}
        train = metrics.get("train", {})
        extra = {"trainable_params": train.get("trainable_params"), "trainable_percent": train.get("trainable_percent"),
                 "train_seconds": train.get("seconds"), "samples_per_second": train.get("samples_per_second"),
                 "final_loss": train.get("final_loss"), "train_steps": train.get("steps"),
                 "train_samples": train.get("samples"), "train_tokens": train.get("tokens"),
                 "tokens_per_second": train.get("tokens_per_second"), "peak_memory_mb": train.get("peak_memory_mb"),
                 "peak_memory_kind": train.get("peak_memory_kind")}
        for r in metrics.get("results", []):
            rows.append({**factors, **{k: r.get(k) for k in ("dataset", "family", "group", "split", "epoch", "metric",
                                                             "value", "n")}, **extra, **params})
        report.used += 1
    table = pd.DataFrame(rows, columns=None if rows else FACTOR_COLUMNS + ["dataset", "split", "metric", "value"])
    for col, dtype in _DTYPES.items():
        if col in table:
            table[col] = table[col].astype(dtype)
    return table, report


def item_scores(runs_dir: str | Path, run_id: str, dataset: str | None = None, metric: str | None = None,
                epoch: int | None = None) -> pd.DataFrame:
    """Per-item scores of one run (for bootstrap intervals and item-paired tests)."""
    path = Path(runs_dir) / run_id / "predictions.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    df = pd.DataFrame(rows)
    if dataset is not None:
        df = df[df["dataset"] == dataset]
    if metric is not None:
        df = df[df["metric"] == metric]
    if epoch is not None:
        df = df[df["epoch"] == epoch]
    return df.reset_index(drop=True)
