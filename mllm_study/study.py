"""The study driver: research-question params files -> runs (trained once, reused) -> notebooks -> HTML reports.

Usage: ``table, report = ensure_runs("params/rq1_main.yaml", "quick")`` (what a notebook calls) or
``run_study("quick")`` (what ``mllm-study study --profile quick`` calls)

An RQ params file (``params/rqN_<slug>.yaml``) is a diff on ``defaults.yaml`` whose top-level ``sweep:`` is the
paper's design (the real-scale profiles use it). Profiles that scale the design down (smoke, quick, full on the
embedded world) have their own block under ``_profiles: {<profile>: {run: {...}, sweep: {...}}}``; this module
applies the selected block: its sections are overrides on top of the file, its ``sweep`` replaces the file's.
A profile file may map dataset names to folders (``_datasets: {vqav2: data/vqav2, ...}``) for real data.
See ``params/README.md``. Identical run specs have identical run ids, so RQs share runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import ConfigError, ModelError
from .config import RUN_FACTORS, PARAMS_DIR, Params, load_params, parse_overrides, project_path, rooted_paths

__all__ = ["ROOT", "NOTEBOOKS_DIR", "list_notebooks", "profile_block", "rq_params", "sweep_params", "report_options", "design_table",
           "plan_runs", "ensure_runs", "load_rq_tables", "base_model_config", "run_study", "StudySummary"]

ROOT = PARAMS_DIR.parent
NOTEBOOKS_DIR = ROOT / "notebooks"
SUMMARY_NOTEBOOK = "rq8_summary"  # reads every other RQ's runs; has no params file of its own


def list_notebooks(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[str]:
    """Stems of the research-question notebooks, in RQ order (``rq1_main``, ..., ``rq8_summary``)."""
    def order(stem: str) -> tuple[int, str]:
        digits = "".join(c for c in stem[2:].split("_")[0] if c.isdigit())
        return (int(digits) if digits else 99, stem)

    return sorted((p.stem for p in Path(notebooks_dir).glob("rq*.ipynb")), key=order)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def profile_block(params_file: str | Path, profile: str) -> dict:
    """The ``_profiles.<profile>`` block of an RQ params file ({} when the profile uses the file's own design)."""
    params_file = project_path(params_file)
    blocks = _read_yaml(params_file).get("_profiles") or {}
    if not isinstance(blocks, dict):
        raise ConfigError(f"{params_file}: '_profiles' must map profile names to blocks")
    block = blocks.get(profile) or {}
    if not isinstance(block, dict):
        raise ConfigError(f"{params_file}: '_profiles.{profile}' must be a mapping (run:, sweep:, ...)")
    return block


def _dataset_map(profile: str, params_dir: Path = PARAMS_DIR) -> dict[str, str]:
    path = params_dir / f"{profile}.yaml"
    mapping = _read_yaml(path).get("_datasets") if path.exists() else None
    return {str(k): str(v) for k, v in (mapping or {}).items()}


def _map_names(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, str):
        return mapping.get(value, value)
    if isinstance(value, list):
        return [_map_names(v, mapping) for v in value]
    return value


def _map_sweep(sweep: dict, mapping: dict[str, str]) -> dict:
    def grid(g: dict) -> dict:
        return {k: ([_map_names(v, mapping) for v in vals] if k in ("dataset", "eval_datasets") else vals)
                for k, vals in g.items()}

    out = dict(sweep)
    if "grid" in out:
        out["grid"] = grid(out["grid"])
    if "grids" in out:
        out["grids"] = [grid(g) for g in out["grids"]]
    return out


def sweep_params(path: str | Path, profile: str | None, overrides: dict[str, Any]) -> Params:
    """Params of ``mllm-study sweep PATH [--profile P]``: with a profile, a research-question file's
    ``_profiles.<P>`` design applies exactly as under ``mllm-study study`` (:func:`rq_params`), so both commands plan
    the same runs; without one, the file as it is. Relative paths are taken from the project root."""
    if profile:
        return rq_params(path, profile, overrides=overrides)
    return rooted_paths(load_params(path, None, overrides))


def rq_params(params_file: str | Path, profile: str, cache: str | None = None, runs: str | None = None,
              params_dir: Path = PARAMS_DIR, overrides: dict[str, Any] | None = None) -> Params:
    """Resolve an RQ params file under a profile: defaults <- profile <- file <- ``_profiles.<profile>`` <- paths.

    Args:
        params_file: ``params/rqN_<slug>.yaml``.
        profile: smoke, quick, full or a real-scale profile (``paper-llava-1.5-7b``, ...).
        cache, runs: override ``paths.cache`` / ``paths.runs`` (e.g. a test's temporary folder).
        overrides: ``{"section.key": value}`` applied last (``--set`` on the command line).

    Returns:
        The :class:`Params` whose ``sweep`` declares this RQ's runs under that profile.
    """
    params_file, cache, runs = project_path(params_file), project_path(cache), project_path(runs)
    block, extra = profile_block(params_file, profile), parse_overrides(overrides)
    overrides = {}
    for section, values in block.items():
        if section == "sweep" or section.startswith("_"):
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{params_file}: _profiles.{profile}.{section} must be a mapping")
        overrides.update({f"{section}.{k}": v for k, v in values.items()})
    if cache is not None:
        overrides["paths.cache"] = str(cache)
    if runs is not None:
        overrides["paths.runs"] = str(runs)
    overrides.update(extra or {})
    params = load_params(params_file, profile, overrides, params_dir=params_dir)
    rooted_paths(params)
    if "sweep" in block:
        params.sweep = dict(block["sweep"] or {})
    mapping = _dataset_map(profile, params_dir)
    if mapping:
        params.run = dataclasses.replace(params.run, dataset=_map_names(params.run.dataset, mapping),
                                         eval_datasets=_map_names(list(params.run.eval_datasets), mapping))
        params.sweep = _map_sweep(params.sweep, mapping)
    return params


def _override_strings(overrides: Any) -> list[str]:
    """``--set`` values as ``section.key=value`` strings (what a notebook parameter can carry), checked."""
    if not overrides:
        return []
    if isinstance(overrides, dict):
        return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    items = [overrides] if isinstance(overrides, str) else [str(o) for o in overrides]
    parse_overrides(items)  # a malformed one is an error here, before anything runs
    return items


def report_options(params_file: str | Path, profile: str) -> dict:
    """The ``_report`` options of an RQ file (analysis settings, e.g. ``n_ctx`` for FLOPs), profile block last."""
    top = _read_yaml(project_path(params_file)).get("_report") or {}
    return {**top, **(profile_block(params_file, profile).get("_report") or {})}


# The design table's rows: the run's factors (config.RUN_FACTORS) and how it is evaluated.
DESIGN_FACTORS = (*RUN_FACTORS, "test_size", "eval_every_epoch", "eval_datasets")


def design_table(params_file: str | Path, profile: str, overrides: Any = None):
    """The runs an RQ declares under ``profile`` (and ``--set`` overrides), as factor -> levels (for the notebook's
    design section)."""
    import pandas as pd

    from .identity import TRAINING_ONLY
    from .sweep import expand_sweep

    specs = expand_sweep(rq_params(params_file, profile, overrides=overrides))
    runs = [p.run for p in specs]
    # the base model zero-shot (method none) trains nothing: its defaults (connector frozen, the profile's epochs,
    # no per-epoch evaluation) are not levels the study plans, so training factors list only the trained runs
    trained = [r for r in runs if r.method != "none"] or runs
    rows = []
    for key in DESIGN_FACTORS:
        if key == "lr":  # the rate each method trains with (its calibrated preset when the file says null)
            rates = dict.fromkeys(f"{p.run.method} {p.resolved_lr():.1e}" for p in specs if p.run.method != "none")
            rows.append({"factor": key, "levels": len(rates), "values": ", ".join(rates) or "-"})
            continue
        of = trained if key in TRAINING_ONLY else runs
        levels = list(dict.fromkeys(json.dumps(getattr(r, key), sort_keys=True) for r in of))
        unset = "all" if key == "layers" else "default"
        shown = ", ".join((unset if v == "null" else v.replace('"', "")) for v in levels)
        rows.append({"factor": key, "levels": len(levels), "values": shown})
    rows.append({"factor": "runs", "levels": len(runs), "values": f"{len(runs)} run specs"})
    return pd.DataFrame(rows)


def _source_digest() -> str:
    """Hash of the package's source files (a code change invalidates cached plans and reports)."""
    return _digest([p.read_bytes() for p in sorted(Path(__file__).resolve().parent.rglob("*.py"))])


def _plan_path(params: Params) -> Path:
    key = _digest([json.dumps(params.to_dict(), sort_keys=True, default=str),
                   json.dumps(params.sweep, sort_keys=True, default=str), _source_digest()])
    return Path(params.paths.runs) / ".plans" / f"{key}.json"


def plan_runs(params: Params, cached: bool = False) -> list[str]:
    """Run ids of the params' sweep (generates the world if needed; trains nothing).

    Every plan is recorded under ``<runs>/.plans/<hash of params and package sources>.json``; with ``cached`` a
    recorded plan is reused, which spares a report the import of torch and peft (the run ids hash the resolved
    method defaults and the data files). Caveat: a dataset folder edited in place keeps its cached plan.
    """
    from .runs import write_json_atomic

    path = _plan_path(params)
    if cached and path.exists():
        try:
            return list(json.loads(path.read_text())["run_ids"])
        except (OSError, ValueError, KeyError):
            pass
    from .sweep import plan_sweep

    # identical specs written differently (lr: null vs the preset's value) share one id: list it once
    ids = list(dict.fromkeys(rid for rid, _ in plan_sweep(params, progress=False)))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"run_ids": ids})
    return ids


def ensure_runs(params_file: str | Path, profile: str, cache: str | None = None, runs: str | None = None,
                train: bool = True, progress: bool = False, stream=None, overrides: Any = None):
    """Run (or reuse) every run an RQ declares under ``profile`` and return its tidy results table.

    Args:
        params_file: the RQ's params file.
        profile: the profile whose scaled design applies.
        cache, runs: override the cache and runs folders.
        train: run missing runs (``run_sweep``: skip finished, claim, record failures); False only collects.
        progress: progress bars while training.
        stream: where per-run status lines go (default: stdout, so a notebook shows them as plain output).
        overrides: ``--set`` values (``["run.seed=1", ...]`` or a mapping), applied last, as under ``study --set``.

    Returns:
        ``(table, report)``: the tidy table of :func:`mllm_study.results.collect_results` restricted to this RQ's
        runs, and its :class:`~mllm_study.results.CollectReport`. ``table.attrs`` holds ``runs_dir``, ``run_ids``,
        ``params_file``, ``profile`` and ``failed`` (run id -> reason).
    """
    from .results import collect_results
    from .sweep import run_sweep

    params = rq_params(params_file, profile, cache, runs, overrides=overrides)
    ids = plan_runs(params, cached=not train)
    failed: dict[str, str] = {}
    if train:
        out = stream or sys.stdout
        if progress:
            summary = run_sweep(params, progress=True, stream=out)
        else:  # status lines only: the libraries' own progress bars and prints are swallowed
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                summary = run_sweep(params, progress=False, stream=out)
        failed = summary.failed
    table, report = collect_results(params.paths.runs, ids)
    if not train:
        from .runs import is_done

        missing = [rid for rid in ids if not is_done(Path(params.paths.runs) / rid)]
        if missing:
            sets = "".join(f" --set {o}" for o in _override_strings(overrides))
            command = f"mllm-study sweep {_shown(params_file)} --profile {profile}{sets} --workers 2"
            text = (f"{len(missing)} of {len(ids)} runs of {_shown(params_file)} ({profile}) are missing in "
                    f"{_shown(params.paths.runs)}, e.g. {', '.join(missing[:3])}; make them with `{command}` "
                    f"(or `mllm-study study --profile {profile}{sets}`, or train=True here)")
            if len(missing) == len(ids):
                raise FileNotFoundError(text)
            print(text, file=stream or sys.stdout)
    table.attrs.update(runs_dir=str(params.paths.runs), run_ids=ids, params_file=str(params_file), profile=profile,
                       failed=failed, sources=list(params.sources))
    return table, report


def _shown(path: str | Path) -> str:
    """``path`` relative to the project root when it is inside it (what a reader can type), else as is."""
    try:
        return str(project_path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def load_rq_tables(profile: str, cache: str | None = None, runs: str | None = None, train: bool = False,
                   params_dir: Path = PARAMS_DIR, overrides: Any = None) -> dict[str, tuple[Any, Any]]:
    """``{rq stem: (table, report)}`` for every ``params/rq*.yaml`` (what the summary notebook reads)."""
    out = {}
    for path in sorted(Path(params_dir).glob("rq*.yaml")):
        out[path.stem] = ensure_runs(path, profile, cache, runs, train=train, overrides=overrides)
    return out


def base_model_config(params: Params) -> str:
    """What :mod:`mllm_study.accounting` should build for the run's model: a config.json path or a config name."""
    if params.run.model == "tiny-llava":
        from .models import ensure_world, tiny_llava_dir

        return str(tiny_llava_dir(params, ensure_world(params, progress=False)) / "config.json")
    local = Path(params.run.model) / "config.json"
    if local.exists():
        return str(local)
    from .accounting import list_model_configs

    name = Path(params.run.model).name.lower().removesuffix("-hf").removesuffix("-instruct")
    known = {c.lower(): c for c in list_model_configs()}
    if name in known:
        return known[name]
    raise ModelError(f"no architecture config for {params.run.model!r}: pass a local checkpoint folder or add "
                     f"its config.json to mllm_study/configs ({', '.join(known.values())})")


# ---- the driver ----------------------------------------------------------------------------------------------------
@dataclass
class StudySummary:
    """What ``run_study`` did: per notebook its status, report path and seconds; the run counts."""

    profile: str
    reports: dict[str, dict] = field(default_factory=dict)  # stem -> {status, html, seconds, cached, error}
    runs_total: int = 0
    runs_trained: int = 0
    runs_failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    index: str | None = None
    stages: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds (world, pre-training, ...)
    calibration: list[str] = field(default_factory=list)  # the calibration's table
    calibrated: list[str] = field(default_factory=list)  # --set values of the rates it chose other than the presets

    @property
    def ok(self) -> bool:
        return not self.runs_failed and all(r["status"] == "ok" for r in self.reports.values())

    def lines(self) -> list[str]:
        out = [f"study '{self.profile}': {self.runs_total} runs ({self.runs_trained} trained now, "
               f"{len(self.runs_failed)} failed), {len(self.reports)} reports in {self.seconds:.0f} s"]
        for stem, r in self.reports.items():
            note = " (unchanged, not re-rendered)" if r.get("cached") else f" ({r['seconds']:.0f} s)"
            out.append(f"  {stem:22s} {r['status']:6s} {r['html']}{note}")
            if r.get("error"):
                out.append(f"      {r['error']}")
        for rid, reason in self.runs_failed.items():
            out.append(f"  failed run {rid}: {reason}")
        if self.stages:
            out.append("time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.stages.items()))
        if self.index:
            out.append(f"index: {self.index}")
        return out


def _digest(parts: Iterable[bytes | str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _inputs_key(notebook: Path, parameters: dict, files: list[Path], run_ids: list[str], runs_dir: Path) -> str:
    """Hash of everything a report depends on: notebook, parameters, params files, analysis code, finished runs."""
    from .runs import is_done

    done = [rid for rid in sorted(set(run_ids)) if is_done(Path(runs_dir) / rid)]
    return _digest([notebook.read_bytes(), json.dumps(parameters, sort_keys=True), *[f.read_bytes() for f in files],
                    _source_digest(), *done])


def run_study(profile: str, notebooks: list[str] | None = None, cache: str | None = None, runs: str | None = None,
              reports: str | None = None, train: bool = True, force: bool = False, progress: bool = True,
              stream=None, overrides: Any = None) -> StudySummary:
    """Train (or reuse) every run of the selected RQs, then execute their notebooks and render the HTML reports.

    Args:
        profile: smoke, quick, full or a real-scale profile.
        notebooks: stems to render (default: all ``notebooks/rq*.ipynb``); the summary reads all RQs' runs.
        cache, runs, reports: folders (default: the profile's ``paths``); passed to notebooks as absolute paths.
        train: train missing runs first (False: only re-render from what exists, ``mllm-study report``).
        force: re-render reports whose inputs did not change.
        progress: progress bars and per-notebook lines on ``stream`` (default stderr).
        overrides: ``--set`` values (``["run.seed=1", ...]``), applied last to every research question's params,
            the calibration and the notebooks (their ``overrides`` parameter), so reports show the runs trained.

    Returns:
        A :class:`StudySummary`; ``reports/index.html`` links every rendered report.
    """
    from . import report as rep
    from .sweep import default_workers
    from .workers import WorkerPool

    stream = stream or sys.stderr
    start = time.perf_counter()
    stems = notebooks or list_notebooks()
    unknown = sorted(set(stems) - set(list_notebooks()))
    if unknown:
        raise ConfigError(f"unknown notebook(s) {unknown}; available: {', '.join(list_notebooks())}")
    sets = _override_strings(overrides)
    base = load_params(profile=profile, overrides=parse_overrides(sets))
    # from the project root unless absolute (the CLI passes its folders absolute): the same files from any directory
    cache_dir = project_path(cache or base.paths.cache).resolve()
    runs_dir = project_path(runs or base.paths.runs).resolve()
    reports_dir = project_path(reports or base.paths.reports).resolve()
    summary = StudySummary(profile=profile)
    rq_files = {p.stem: p for p in sorted(PARAMS_DIR.glob("rq*.yaml"))}
    needed = rq_files if SUMMARY_NOTEBOOK in stems else {s: rq_files[s] for s in stems if s in rq_files}
    rq = {stem: rq_params(path, profile, str(cache_dir), str(runs_dir), overrides=sets) for stem, path in needed.items()}
    if sets:
        print(f"== overrides: {' '.join(sets)} (reports in {reports_dir} are replaced; --reports keeps them apart)",
              file=stream, flush=True)
    workers = default_workers()
    # one pool of workers for the calibration and the runs (mllm_study.workers), spawned now: the workers import
    # torch while the base model pre-trains on the other core; they take their first run once it is saved
    pool = WorkerPool(workers) if train and workers > 1 else None
    try:
        plans, sets = _train_study(summary, profile, rq, needed, base, sets, cache_dir, runs_dir, train, workers,
                                   pool, progress, stream)
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    if pool is not None:
        pool.close()
    summary.runs_total = len({rid for ids in plans.values() for rid in ids})
    report_start = time.perf_counter()

    # 3. notebooks -> reports/<stem>/<profile>.html (skipped when nothing they depend on changed)
    pending: list[tuple[str, tuple]] = []
    for k, stem in enumerate(stems, 1):
        nb = NOTEBOOKS_DIR / f"{stem}.ipynb"
        params_file = rq_files.get(stem)
        parameters = {"profile": profile, "params_file": str(params_file) if params_file else "",
                      "cache": str(cache_dir), "runs": str(runs_dir), "train": False, "overrides": sets}
        html = reports_dir / stem / f"{profile}.html"
        files = [PARAMS_DIR / "defaults.yaml", PARAMS_DIR / f"{profile}.yaml",
                 *([params_file] if params_file else list(rq_files.values()))]
        ids = plans.get(stem) or [rid for ids in plans.values() for rid in ids]
        key = _inputs_key(nb, parameters, [f for f in files if f.exists()], ids, runs_dir)
        if not force and rep.report_is_current(html, key):
            print(f"[{k}/{len(stems)}] {stem}: unchanged, {_shown(html)}", file=stream, flush=True)
            summary.reports[stem] = {"status": "ok", "html": str(html), "seconds": 0.0, "cached": True}
            continue
        pending.append((stem, (nb, parameters, html, ROOT, key)))
    for stem, result in _execute_notebooks(pending, workers):  # one kernel per worker (each loads the runs)
        html = reports_dir / stem / f"{profile}.html"
        done = len(summary.reports) + 1
        print(f"[{done}/{len(stems)}] {stem} {result.status} in {result.seconds:.0f} s -> {_shown(html)}"
              + (f": {result.error}" if result.error else ""), file=stream, flush=True)
        summary.reports[stem] = {"status": result.status, "html": str(html), "seconds": result.seconds,
                                 "cached": False, "error": result.error}
    summary.reports = {stem: summary.reports[stem] for stem in stems if stem in summary.reports}
    summary.index = str(rep.write_index(reports_dir))
    summary.stages["reports"] = time.perf_counter() - report_start
    summary.seconds = time.perf_counter() - start
    return summary


def _train_study(summary: StudySummary, profile: str, rq: dict[str, Params], needed: dict[str, Path], base: Params,
                 sets: list[str], cache_dir: Path, runs_dir: Path, train: bool, workers: int, pool,
                 progress: bool, stream) -> tuple[dict[str, list[str]], list[str]]:
    """Stages 0-2 of :func:`run_study` (world and base model, calibration, runs); the run ids per RQ and the
    ``--set`` values the study trained with (the calibrated rates first)."""
    from .calibration import calibrate, has_calibration, stored_overrides
    from .sweep import Progress, plan_sweep, run_sweeps

    def queue_runs(calibration, methods: list[str]) -> None:
        """The runs of ``methods`` (their rates are final) and of the base model queue behind the calibration's
        last phase, so that no worker waits for it."""
        early = [*calibration.overrides(methods), *sets]
        wanted = {*methods, "none"}
        runs = {rid: p for path in needed.values()
                for rid, p in plan_sweep(rq_params(path, profile, str(cache_dir), str(runs_dir), overrides=early))
                if p.run.method in wanted}
        tracker = Progress.begin(runs_dir, list(runs))
        pool.submit_many([(rid, dataclasses.replace(p, sweep={})) for rid, p in runs.items()], priority=1,
                         tracker=tracker)
        print(f"== {len(runs)} runs of {', '.join(sorted(wanted))} start now: their rates are final (a convergence "
              f"retry of the calibration goes first)", file=stream, flush=True)

    if train:
        # 0. world and base model, once, in this process (the workers wait for their first run)
        first = next(iter(rq.values()), base)
        if first.run.model == "tiny-llava":
            from .models import ensure_world, pretrain_tiny_llava

            world = _timed(summary, "world", lambda: ensure_world(first, progress), stream)
            _timed(summary, "pre-training", lambda: pretrain_tiny_llava(first, world, progress), stream)
        # 1. learning-rate calibration of the embedded profiles (its runs are cached like any other)
        if has_calibration(profile):
            cal = _timed(summary, "calibration", lambda: calibrate(profile, str(cache_dir), str(runs_dir),
                                                                   stream=stream, workers=workers,
                                                                   overrides=sets, pool=pool,
                                                                   on_final=queue_runs if pool else None), stream)
            summary.calibration = cal.lines()
            summary.runs_failed.update(cal.failed)
            print("\n".join(summary.calibration), file=stream, flush=True)
            summary.calibrated = cal.overrides()
    elif has_calibration(profile):  # re-rendering: the rates the study trained with (its calibration file)
        summary.calibrated = stored_overrides(runs_dir, profile)
    if summary.calibrated:  # every RQ and notebook uses the calibrated rates; the user's own --set still wins
        sets = [*summary.calibrated, *sets]
        rq = {stem: rq_params(path, profile, str(cache_dir), str(runs_dir), overrides=sets)
              for stem, path in needed.items()}
        print(f"== calibrated rates, not the presets of params/defaults.yaml: --set "
              f"{' --set '.join(summary.calibrated)}", file=stream, flush=True)
    # 2. runs: every RQ's sweep (the summary needs all of them), each run once, over the local workers (the pool
    # trains a run id once: the runs queued during the calibration are waited for, not trained again)
    plans = {stem: plan_runs(params, cached=not train) for stem, params in rq.items()}
    if train:
        total = len({rid for ids in plans.values() for rid in ids})
        print(f"== runs: {total} over {len(rq)} research questions, {workers} worker(s)", file=stream, flush=True)
        tracker = Progress.begin(runs_dir, [rid for ids in plans.values() for rid in ids])
        results = _timed(summary, "runs", lambda: run_sweeps(list(rq.values()), workers, progress=progress,
                                                             stream=stream, tracker=tracker, pool=pool,
                                                             priority=1), stream)
        for stem, res in zip(rq, results):
            summary.runs_trained += len(res.ran)
            summary.runs_failed.update(res.failed)
            print(f"   {stem}: {res.line()}", file=stream, flush=True)
    return plans, sets


def _execute_named(item: tuple[str, tuple]):
    """``(stem, NotebookResult)`` of one pending notebook (picklable for the worker pool)."""
    from .render import execute_notebook

    stem, (nb, parameters, html, cwd, key) = item
    return stem, execute_notebook(nb, parameters, html, cwd=cwd, key=key)


def _execute_notebooks(pending: list[tuple[str, tuple]], workers: int):
    """``(stem, NotebookResult)`` as each notebook finishes; up to ``workers`` kernels at once (spawned processes,
    like the sweep's workers), so a 2-core machine renders two reports at a time."""
    if workers <= 1 or len(pending) <= 1:
        yield from map(_execute_named, pending)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(min(workers, len(pending))) as pool:
        yield from pool.imap_unordered(_execute_named, pending)


def _timed(summary: StudySummary, stage: str, fn, stream):
    """Run one stage of the study, recording its wall time in ``summary.stages``."""
    start = time.perf_counter()
    print(f"== {stage}", file=stream, flush=True)
    out = fn()
    summary.stages[stage] = time.perf_counter() - start
    return out

