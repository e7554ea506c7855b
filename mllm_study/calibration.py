"""Learning-rate calibration of the embedded profiles: a log grid per method, scored on a validation split.

Usage: ``mllm-study calibrate --profile quick`` (runs or reuses ``params/calibration.yaml``'s sweep, prints the
curves and the chosen rates) or ``result = calibrate("quick")``

The paper's learning rates are for 7B models; the tiny model needs its own. For each PEFT method the sweep trains
on ``train`` minus a validation split carved from it (``run.eval_split: val``, never the test split) at every rate
of a log grid (rungs 1 and 3 x 10^k, ``points`` rungs centred on the profile's preset) on the calibration columns,
and chooses by the one-standard-error rule: among the rates whose mean validation score is within one standard
error (over the validation items) of the best, the one nearest the preset, so that a difference one seed's noise
can make does not move the rates (rates whose outputs collapsed onto one answer are never chosen). A chosen rate on
the edge of its grid extends the grid by one rung on that side (trained here, outside the static sweep) until it is
inside. Each method is also trained at its chosen rate with twice the epochs: the score change is the convergence
figure (at most ``CONVERGENCE_TOLERANCE`` in mean over the columns); these runs are trained here over the workers,
once the curves have chosen the rates (the static sweep holds only the curves). Where the chosen rate does not
converge, the band's next rate on the side that can help (higher when twice the epochs raised the score, lower when
it lowered it) is checked the same way and chosen if it converges (:meth:`Calibration.convergence_alternative`):
the band's rates are alike within one standard error, so the converged one costs no measurable score. The
profile's presets (``run.method_presets.<m>.lr``) are what this command chose on the machine that set them. The base
model is not bit-identical across CPUs, so on another machine it may choose otherwise: :meth:`Calibration.overrides`
then gives the ``--set`` values with which ``mllm-study study`` trains every research question (and renders its
notebooks), so the rates used are always the ones chosen here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import PARAMS_DIR, ConfigError, Params

__all__ = ["CALIBRATION_FILE", "CONVERGENCE_TOLERANCE", "MAX_EXTENSIONS", "rung", "lr_grid", "Calibration",
           "has_calibration", "calibrate", "read_calibration", "stored_overrides"]

CALIBRATION_FILE = PARAMS_DIR / "calibration.yaml"
CONVERGENCE_TOLERANCE = 0.02
MAX_EXTENSIONS = 3


def rung(lr: float) -> int:
    """Index of ``lr`` on the ladder 1e-5, 3e-5, 1e-4, 3e-4, ... (rung 0 = 1e-5); rates off the ladder are errors."""
    k = math.floor(math.log10(lr) + 1e-9)
    mantissa = lr / 10 ** k
    for offset, m in ((0, 1.0), (1, 3.0)):
        if math.isclose(mantissa, m, rel_tol=1e-6):
            return 2 * (k + 5) + offset
    raise ConfigError(f"learning rate {lr:g} is not on the calibration ladder (1 or 3 x 10^k)")


def _rate(index: int) -> float:
    k, offset = divmod(index, 2)
    return float(f"{(1.0, 3.0)[offset]}e{k - 5}")


def _ladder_text(lr: float) -> str:
    """A ladder rate as ``--set`` text that YAML reads back as the same float (``0.0003``, not ``3e-04``)."""
    return f"{lr:.10f}".rstrip("0").rstrip(".")


def lr_grid(center: float, points: int = 5) -> list[float]:
    """``points`` consecutive ladder rates centred on ``center``: ``lr_grid(1e-3) = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]``."""
    c = rung(center)
    return [_rate(c + i) for i in range(-(points // 2), points - points // 2)]


@dataclass
class Calibration:
    """What the calibration measured: per method the validation curve, the chosen rate and the convergence check."""

    profile: str
    columns: list[str]
    curves: dict[str, dict[float, dict[str, float]]] = field(default_factory=dict)  # method -> lr -> column -> score
    chosen: dict[str, float] = field(default_factory=dict)
    presets: dict[str, float] = field(default_factory=dict)
    extended: dict[str, list[float]] = field(default_factory=dict)  # rates added beyond the static grid
    doubled: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> column -> (2x epochs - 1x)
    doubled_at: dict[str, float] = field(default_factory=dict)  # method -> the rate of its convergence check
    failed: dict[str, str] = field(default_factory=dict)
    # method -> lr -> column -> "'yes' 200/200": points whose outputs collapsed onto one answer (never chosen)
    collapsed: dict[str, dict[float, dict[str, str]]] = field(default_factory=dict)
    # method -> lr -> standard error of the mean score (over the columns' validation items); 0 where not measured
    se: dict[str, dict[float, float]] = field(default_factory=dict)
    # method -> {"from", "doubled_from", "tried", "doubled_tried", "to"}: the chosen rate did not converge and the
    # band's next rate on the helpful side was checked too (``to``: the rate now chosen; None when it did not converge)
    reselected: dict[str, dict] = field(default_factory=dict)

    def is_collapsed(self, method: str, lr: float) -> bool:
        return bool(self.collapsed.get(method, {}).get(lr))

    def band(self, method: str, rates: list[float] | None = None) -> list[float]:
        """The rates (of ``rates``, default every scored one) that did not collapse (all, if every one did) and whose
        mean score is at least the best mean minus its standard error: the one-standard-error band."""
        rates = [lr for lr in self.curves.get(method, {}) if self.curves[method][lr]] if rates is None else rates
        ok = [lr for lr in rates if not self.is_collapsed(method, lr)] or list(rates)
        top = max(ok, key=lambda lr: self.mean(method, lr))
        bar = self.mean(method, top) - self.se.get(method, {}).get(top, 0.0)
        return [lr for lr in ok if self.mean(method, lr) >= bar]

    def best(self, method: str, rates: list[float], preset: float) -> float:
        """The one-standard-error choice: of the :meth:`band`, the rate nearest ``preset``, then the higher score."""
        return min(self.band(method, rates), key=lambda lr: (abs(rung(lr) - rung(preset)), -self.mean(method, lr)))

    def doubled_mean(self, method: str) -> float | None:
        d = self.doubled.get(method)
        return sum(d.values()) / len(d) if d else None

    def convergence_alternative(self, method: str) -> float | None:
        """Where twice the epochs moved the chosen rate's score by more than the tolerance: the band's rate nearest
        the chosen one on the side that can help, a higher rate when the score rose (under-trained in the budget), a
        lower one when it fell; None when the chosen rate converged or the band has no rate on that side. The band's
        rates are alike within one standard error, so preferring one that converges costs no measurable score."""
        from .validity import exceeds

        diff, chosen = self.doubled_mean(method), self.doubled_at.get(method)
        if diff is None or chosen is None or not exceeds(abs(diff), CONVERGENCE_TOLERANCE):
            return None
        side = [lr for lr in self.band(method) if (lr - chosen) * diff > 0]
        return min(side, key=lambda lr: abs(rung(lr) - rung(chosen)), default=None)

    def mean(self, method: str, lr: float) -> float:
        scores = self.curves[method][lr]
        return sum(scores.values()) / len(scores) if scores else float("nan")

    def mismatches(self) -> list[str]:
        return [m for m in self.chosen if not math.isclose(self.chosen[m], self.presets.get(m, float("nan")))]

    def overrides(self, methods: list[str] | None = None) -> list[str]:
        """``--set`` values that make a study train every method (of ``methods``, default all) at its chosen rate
        where it differs from the profile's preset (``run.method_presets.ia3.lr=0.1``); empty when the presets are
        the chosen rates."""
        return [f"run.method_presets.{m}.lr={_ladder_text(self.chosen[m])}" for m in self.mismatches()
                if methods is None or m in methods]

    def unconverged(self) -> list[str]:
        from .validity import exceeds

        return [m for m in self.doubled
                if (d := self.doubled_mean(m)) is None or exceeds(abs(d), CONVERGENCE_TOLERANCE)]

    @property
    def ok(self) -> bool:
        """Every run trained and every method converged at its chosen rate (a chosen rate other than the preset is
        not a failure: the study trains with it, see :meth:`overrides`)."""
        return not self.failed and not self.unconverged()

    def lines(self) -> list[str]:
        out = [f"learning-rate calibration '{self.profile}' (validation split carved from train; columns "
               f"{', '.join(self.columns)}; mean score per rate +- its standard error over the items; * = chosen "
               f"(one-standard-error rule: nearest the preset within one SE of the best), ! = collapsed outputs)"]
        for method, curve in self.curves.items():
            cells = [f"{lr:g}: {self.mean(method, lr):.3f}"
                     f"{f' +-{e:.3f}' if (e := self.se.get(method, {}).get(lr)) else ''}"
                     f"{'*' if lr == self.chosen.get(method) else ''}"
                     f"{'!' if self.is_collapsed(method, lr) else ''}" for lr in sorted(curve)]
            out.append(f"  {method:8s} " + "  ".join(cells))
        for method, points in self.collapsed.items():
            for lr, cols in sorted(points.items()):
                out.append(f"  ! {method} at {lr:g} collapsed (not chosen): " + ", ".join(
                    f"{c} answers {top}" for c, top in cols.items()))
        for method, d in self.doubled.items():
            shown = ", ".join(f"{c} {v:+.3f}" for c, v in d.items()) or "not measured"
            at = self.doubled_at.get(method, self.presets.get(method, float("nan")))
            out.append(f"  {method:8s} twice the epochs at {at:g}: {shown}")
        for method, r in self.reselected.items():
            tried = f"{r['tried']:g}, in the band, moved {r['doubled_tried']:+.3f}"
            out.append(f"  RESELECTED {method}: {r['from']:g} moved {r['doubled_from']:+.3f} with twice the epochs; "
                       + (f"{tried}: chosen instead" if r["to"] is not None else f"{tried} too: kept {r['from']:g}"))
        for method, text in zip(self.mismatches(), self.overrides()):
            out.append(f"  CALIBRATED {method}: chose {self.chosen[method]:g}, not the profile's preset "
                       f"{self.presets.get(method, float('nan')):g}; the study trains with --set {text} "
                       f"(params/defaults.yaml's presets: the choice on the machine that set them)")
        for method in self.unconverged():
            out.append(f"  NOT CONVERGED {method}: twice the epochs moves the mean score by more than "
                       f"{CONVERGENCE_TOLERANCE}")
        for rid, reason in self.failed.items():
            out.append(f"  failed run {rid}: {reason}")
        out.append("calibration: " + ("OK" if self.ok else "FAILED"))
        return out

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["curves"] = {m: {f"{lr:g}": s for lr, s in c.items()} for m, c in self.curves.items()}
        data["collapsed"] = {m: {f"{lr:g}": cols for lr, cols in c.items()} for m, c in self.collapsed.items()}
        data["se"] = {m: {f"{lr:g}": v for lr, v in c.items()} for m, c in self.se.items()}
        return data


def _val_rows(run_dir: Path, column: str) -> list[dict]:
    """The run's final validation predictions on ``column`` (predictions.jsonl rows; [] if none)."""
    path = run_dir / "predictions.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines())
            if r.get("split") == "val" and r.get("dataset") == column and r.get("epoch") is None]


def _collapse(rows: list[dict]) -> str | None:
    """``"'yes' 200/200"`` when the most frequent answer of ``rows`` (lowercased, whitespace collapsed) takes a
    larger share of them than validity's collapse criterion (e) allows: max(0.6, the gold's own top share + 0.1);
    else None. Such a point is flagged in the table and never chosen."""
    from collections import Counter

    from .validity import TOP_SHARE_FLOOR, TOP_SHARE_MARGIN

    if not rows:
        return None
    (top, n), = Counter(" ".join(str(r["prediction"]).lower().split()) for r in rows).most_common(1)
    gold = Counter(str((r.get("references") or [""])[0]).lower() for r in rows).most_common(1)[0][1] / len(rows)
    return f"{top!r} {n}/{len(rows)}" if n / len(rows) > max(TOP_SHARE_FLOOR, gold + TOP_SHARE_MARGIN) else None


def _item_variance(rows: list[dict]) -> tuple[float, int] | None:
    """(sample variance of the item scores, number of items) of ``rows``; None with fewer than 2 scores."""
    from statistics import variance

    scores = [float(r["score"]) for r in rows if r.get("score") is not None]
    return (variance(scores), len(scores)) if len(scores) >= 2 else None


def _score(run_dir: Path, column: str) -> float | None:
    """The run's main validation score on its own dataset (None if not done)."""
    from .runs import is_done, read_json

    if not is_done(run_dir):
        return None
    rows = read_json(run_dir / "metrics.json")["results"]
    vals = [r["value"] for r in rows if r["split"] == "val" and r["dataset"] == column and "." not in r["metric"]
            and r.get("epoch") is None]
    return vals[0] if vals else None


def has_calibration(profile: str, params_file: Path = CALIBRATION_FILE) -> bool:
    """Whether ``profile`` calibrates its learning rates (the embedded profiles do; real-model ones do not)."""
    from .study import profile_block

    return bool(profile_block(params_file, profile).get("_calibration"))


def calibrate(profile: str, cache: str | None = None, runs: str | None = None, train: bool = True,
              progress: bool = False, stream=None, params_file: Path = CALIBRATION_FILE,
              workers: int | None = None, overrides: Any = None, pool=None,
              on_final: Callable[[Calibration, list[str]], None] | None = None) -> Calibration:
    """Run (or reuse) the calibration sweep of ``profile``, extend grids whose best rate is on an edge, and check the
    profile's presets and convergence. Writes ``<runs>/calibration-<profile>.json``.

    Args:
        workers: local processes for the static grid (default :func:`mllm_study.sweep.default_workers`); the base
            model is pre-trained first, in this process.
        overrides: ``--set`` values applied last (``mllm-study study --set``), e.g. another base-model recipe.
        pool: a :class:`mllm_study.workers.WorkerPool` to train on (a study's, which lives on into its runs);
            default: a pool per phase of ``workers`` processes.
        on_final: called as ``on_final(calibration, methods)`` once those methods' rates are final, before the
            last phase (the convergence retry of the others) trains, so that a study can queue their runs behind it.
    """
    from .runs import is_done, run_id, resolve_spec, write_json_atomic
    from .study import profile_block, rq_params
    from .sweep import default_workers, expand_sweep, run_sweep, run_sweeps
    from .validity import exceeds

    stream = stream or sys.stderr
    params = rq_params(params_file, profile, cache, runs, overrides=overrides)
    options = profile_block(params_file, profile).get("_calibration") or {}
    if not options:
        raise ConfigError(f"{params_file}: no _profiles.{profile}._calibration block: profile {profile!r} has no "
                          f"learning-rate calibration (the real-model profiles keep the paper's rates)")
    columns, points = list(options["columns"]), int(options.get("points", 5))
    if train:
        if params.run.model == "tiny-llava":  # once, here, before any worker starts
            from .models import ensure_world, pretrain_tiny_llava

            pretrain_tiny_llava(params, ensure_world(params, progress), progress)
        summary = run_sweeps([params], workers or default_workers(), progress=progress, stream=stream,
                             pool=pool)[0]
    result = Calibration(profile=profile, columns=columns)
    if train:
        result.failed.update(summary.failed)
    runs_dir = Path(params.paths.runs)
    planned = expand_sweep(params)

    def run_at(method: str, lr: float, column: str, epochs: float | None = None) -> Params:
        template = next(p for p in planned if p.run.method == method)
        run = dataclasses.replace(template.run, lr=lr, dataset=column,
                                  epochs=template.run.epochs if epochs is None else epochs)
        return dataclasses.replace(template, run=run, sweep={})

    def measure(p: Params, curve_point: bool = True) -> float | None:
        rid = run_id(resolve_spec(p, progress=False))
        score = _score(runs_dir / rid, p.run.dataset)
        if score is None and train:
            sub = run_sweep(dataclasses.replace(p, sweep={}), progress=progress, stream=stream)
            result.failed.update(sub.failed)
            score = _score(runs_dir / rid, p.run.dataset)
        if curve_point and score is not None:
            rows = _val_rows(runs_dir / rid, p.run.dataset)  # read once for both figures
            if top := _collapse(rows):
                result.collapsed.setdefault(p.run.method, {}).setdefault(p.run.lr, {})[p.run.dataset] = top
            if var_n := _item_variance(rows):
                variances.setdefault((p.run.method, p.run.lr), {})[p.run.dataset] = var_n[0] / var_n[1]
        return score

    variances: dict[tuple[str, float], dict[str, float]] = {}  # (method, lr) -> column -> variance of its mean

    def standard_error(method: str, lr: float) -> float:
        """SE of the mean over the columns: sqrt(sum of the columns' variances of their means) / columns."""
        v = variances.get((method, lr), {})
        return math.sqrt(sum(v.values())) / len(v) if v else 0.0

    methods = list(dict.fromkeys(p.run.method for p in planned))
    base_budget: dict[str, float] = {}  # method -> epochs of its curve points
    for method in methods:
        preset = params.run.method_presets.get(method, {}).get("lr")
        if preset is None:
            raise ConfigError(f"profile {profile!r}: run.method_presets.{method}.lr is not set")
        result.presets[method] = float(preset)
        base_epochs = next(p.run.epochs for p in planned if p.run.method == method and p.run.lr == preset)
        grid = lr_grid(float(preset), points)
        curve: dict[float, dict[str, float]] = {}

        for _ in range(MAX_EXTENSIONS + 1):
            for lr in grid:
                if lr in curve:
                    continue
                curve[lr] = {c: s for c in columns if (s := measure(run_at(method, lr, c, base_epochs))) is not None}
            scored = [lr for lr in grid if curve[lr]]
            if not scored:
                break
            result.curves[method] = curve
            result.se[method] = {lr: standard_error(method, lr) for lr in scored}
            best = result.best(method, scored, float(preset))
            if best == grid[0] or best == grid[-1]:
                new = _rate(rung(best) + (-1 if best == grid[0] else 1))
                result.extended.setdefault(method, []).append(new)
                grid = sorted({*grid, new})
                continue
            break
        result.curves[method] = dict(sorted(curve.items()))
        result.se[method] = {lr: standard_error(method, lr) for lr in sorted(curve) if curve[lr]}
        if any(curve.values()):
            result.chosen[method] = result.best(method, [lr for lr in curve if curve[lr]], float(preset))
        result.doubled_at[method] = result.chosen.get(method, float(preset))
        base_budget[method] = base_epochs
    def doubled_at(rates: dict[str, float]) -> dict[str, dict[str, float]]:
        """Per method, twice the epochs at ``rates[method]`` minus its curve point, per column (the missing runs
        trained over the workers first)."""
        checks = {(m, c): run_at(m, lr, c, 2 * base_budget[m]) for m, lr in rates.items() for c in columns}
        missing = [p for p in checks.values() if not is_done(runs_dir / run_id(resolve_spec(p, progress=False)))]
        if missing and train:
            for sub in run_sweeps(missing, workers or default_workers(), progress=progress, stream=stream,
                                  pool=pool):
                result.failed.update(sub.failed)
        out = {}
        for m, lr in rates.items():
            out[m] = {}
            for c in columns:
                once = result.curves.get(m, {}).get(lr, {}).get(c)
                twice = measure(checks[(m, c)], curve_point=False)
                if once is not None and twice is not None:
                    out[m][c] = twice - once
        return out

    # convergence: each method at its chosen rate with twice the epochs
    result.doubled = doubled_at({m: result.doubled_at[m] for m in methods})
    # a chosen rate that did not converge: the band's next rate on the helpful side, checked the same way
    retry = {m: lr for m in methods if (lr := result.convergence_alternative(m)) is not None}
    if on_final is not None and train:
        on_final(result, [m for m in methods if m not in retry])
    for method, doubled in doubled_at(retry).items():
        if not doubled:  # not trained (train=False): nothing measured, nothing to report
            continue
        entry = {"from": result.chosen[method], "doubled_from": result.doubled_mean(method), "tried": retry[method],
                 "doubled_tried": sum(doubled.values()) / len(doubled), "to": None}
        if not exceeds(abs(entry["doubled_tried"]), CONVERGENCE_TOLERANCE):
            entry["to"] = result.chosen[method] = result.doubled_at[method] = retry[method]
            result.doubled[method] = doubled
        result.reselected[method] = entry
    write_json_atomic(runs_dir / f"calibration-{profile}.json", result.to_dict())
    return result


def read_calibration(runs_dir: str | Path, profile: str) -> dict | None:
    """The last calibration written for ``profile`` (None when it never ran)."""
    path = Path(runs_dir) / f"calibration-{profile}.json"
    return json.loads(path.read_text()) if path.exists() else None


def stored_overrides(runs_dir: str | Path, profile: str) -> list[str]:
    """:meth:`Calibration.overrides` of the calibration last written in ``runs_dir`` for ``profile`` (what a study
    trained with; ``mllm-study report`` renders from it without calibrating again); [] when none was written."""
    data = read_calibration(runs_dir, profile)
    if not data:
        return []
    cal = Calibration(profile=profile, columns=list(data.get("columns", [])),
                      chosen={m: float(v) for m, v in data.get("chosen", {}).items()},
                      presets={m: float(v) for m, v in data.get("presets", {}).items()})
    return cal.overrides()
