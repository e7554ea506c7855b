"""Sweeps: the cross product a params file declares, run with skip/retry, shards, atomic claims and a summary.

Usage: ``summary = run_sweep(load_params("params/rq1_main.yaml"), shard=(0, 1))``

A params file declares its design in a ``sweep`` section: ``grid`` (run keys -> lists of values, crossed) and/or
``grids`` (a list of such grids, whose cross products are concatenated; e.g. LoRA ranks and adapter sizes).
Every worker claims a run through :mod:`.claims` (an exclusive, complete claim file; a dead owner's claim on the
same host is taken over atomically), so two workers never train the same run. Finished runs are
skipped; failed and half-written ones are retried.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .claims import claim_holder, claim_run, holder_alive, release_run
from .config import ConfigError, Params, RunConfig, check_value

__all__ = ["expand_sweep", "plan_sweep", "run_sweep", "run_sweeps", "default_workers", "SweepSummary", "claim_run",
           "release_run", "sweep_status", "missing_datasets", "parse_shard", "submit_sweep", "sweep_task", "run_cost",
           "install_sigterm", "pool_map", "submit_runs", "collect_runs",
           "Progress"]


def _grid_items(grid: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(grid, dict):
        raise ConfigError(f"{where} must be a mapping of run keys to lists of values, got {type(grid).__name__}")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    for key, values in grid.items():
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown run key {key!r}.{hint}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{key} must be a non-empty list of values, got {values!r}")
    # every value converted and checked exactly like a params file's or the command line's (epochs: [5] -> 5.0,
    # lr: [1.0e9] -> 1e9; seed: [42.5] is an error), so a grid names the same runs as `mllm-study run`
    typed = {key: [check_value("run", key, v, f"{where}.{key}[{i}]") for i, v in enumerate(values)]
             for key, values in grid.items()}
    keys = list(typed)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(typed[k] for k in keys))]


def expand_sweep(params: Params) -> list[Params]:
    """Every run the params' ``sweep`` section declares (just ``params`` itself when there is none)."""
    sweep = params.sweep or {}
    unknown = set(sweep) - {"grid", "grids"}
    if unknown:
        raise ConfigError(f"sweep: unknown key(s) {sorted(unknown)}; use 'grid' (one cross product) or 'grids'")
    combos: list[dict[str, Any]] = []
    if "grid" in sweep:
        combos += _grid_items(sweep["grid"], "sweep.grid")
    for i, grid in enumerate(sweep.get("grids") or []):
        combos += _grid_items(grid, f"sweep.grids[{i}]")
    if not combos:
        return [params]
    out, seen = [], set()
    base = dataclasses.asdict(params.run)
    for combo in combos:
        try:
            run = RunConfig(**{**base, **combo})
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"sweep combination {combo}: {exc}") from None
        key = json.dumps(dataclasses.asdict(run), sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(dataclasses.replace(params, run=run))
    return out


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text}: need 0 <= i < n")
    return i, n


def plan_sweep(params: Params, shard: tuple[int, int] = (0, 1), progress: bool = False) -> list[tuple[str, Params]]:
    """(run_id, params) of this shard's runs, in a stable order (by run id, so shards are disjoint and balanced)."""
    from .runs import resolve_spec, run_id

    unique: dict[str, Params] = {}
    for p in expand_sweep(params):  # different settings can resolve to the same run (e.g. lr: null vs its preset)
        unique.setdefault(run_id(resolve_spec(p, progress)), p)
    planned = sorted(unique.items(), key=lambda x: x[0])
    return [item for k, item in enumerate(planned) if k % shard[1] == shard[0]]


def missing_datasets(params: Params) -> list[tuple[str, str]]:
    """(dataset folder, the ``mllm-study data convert`` command that makes it) for every dataset a sweep names
    (trained on or evaluated on) that is neither a synthetic-world family nor a folder with dataset.json."""
    from .converters.base import CONVERTERS
    from .world import FAMILIES

    world = set(FAMILIES) | {"pope", "align"}
    seen: dict[str, str] = {}
    for p in expand_sweep(params):
        for name in [p.run.dataset, *p.run.eval_datasets]:
            if name in world or name in seen or (Path(name) / "dataset.json").exists():
                continue
            stem = Path(name).name
            converter = stem if stem in CONVERTERS else next((c for c in CONVERTERS if c.startswith(stem)), stem)
            seen[name] = f"mllm-study data convert {converter} --src <{converter} release> --out {name}"
    return sorted(seen.items())


def sweep_status(runs_dir: Path, ids: list[str]) -> dict[str, list[str]]:
    """Run ids by state: done, failed, running (claimed by a worker that is alive), remaining (a damaged or
    unreadable run directory counts as remaining: the next sweep re-runs it)."""
    from .runs import is_done, read_json

    out: dict[str, list[str]] = {"done": [], "failed": [], "running": [], "remaining": []}
    for rid in ids:
        d = Path(runs_dir) / rid
        if is_done(d):
            out["done"].append(rid)
            continue
        if holder_alive(claim_holder(runs_dir, rid)):
            out["running"].append(rid)
            continue
        try:
            failed = read_json(d / "status.json").get("status") == "failed"
        except (OSError, ValueError, AttributeError):
            failed = False
        out["failed" if failed else "remaining"].append(rid)
    return out


@dataclass
class SweepSummary:
    """What a sweep invocation did."""

    total: int
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already done
    failed: dict[str, str] = field(default_factory=dict)  # run id -> reason
    busy: list[str] = field(default_factory=list)  # claimed by another worker
    damaged: dict[str, str] = field(default_factory=dict)  # run id -> what was wrong (re-run)
    rescored: dict[str, list[str]] = field(default_factory=dict)  # run id -> metrics re-scored (no retraining)
    seconds: float = 0.0

    def line(self) -> str:
        extra = "".join(f", {len(v)} {name}" for name, v in (("damaged (re-run)", self.damaged),
                                                              ("re-scored", self.rescored)) if v)
        return (f"{self.total} runs: {len(self.ran)} ran, {len(self.skipped)} already done, {len(self.failed)} failed, "
                f"{len(self.busy)} held by other workers{extra} ({self.seconds:.0f} s)")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


@dataclass
class Progress:
    """Progress over a whole set of runs (a sweep, or every RQ of a study, shared by its workers): one line per
    finished run with done/total (counted from the run store, so every worker's runs count), the run's time and
    score, the elapsed time and an ETA from the runs finished since the start.

    Picklable: the workers of :func:`run_sweeps` each get a copy; the counts come from the runs folder.
    """

    runs_dir: str
    ids: list[str]
    start: float = field(default_factory=time.time)  # wall clock (shared across processes)
    done_at_start: int = 0

    @classmethod
    def begin(cls, runs_dir: str | Path, ids: list[str]) -> Progress:
        ids = list(dict.fromkeys(ids))
        return cls(str(runs_dir), ids, time.time(), cls._done(Path(runs_dir), ids))

    @staticmethod
    def _done(runs_dir: Path, ids: list[str]) -> int:
        """Runs that ended: finished, or failed in this study (a failed run counts as attempted; it re-runs next
        time)."""
        from .runs import is_done, read_json

        def failed(rid: str) -> bool:
            try:
                return read_json(runs_dir / rid / "status.json").get("status") == "failed"
            except (OSError, ValueError):
                return False

        return sum(is_done(runs_dir / rid) or failed(rid) for rid in ids)

    def line(self, rid: str, seconds: float, failed: str | None = None) -> str:
        """``[ended/total] <rid> 12.3 s, accuracy 0.615 | elapsed 3:12, ETA 5:40`` (or ``failed: ...``)."""
        from .runs import read_json

        done = self._done(Path(self.runs_dir), self.ids)
        elapsed = time.time() - self.start
        new = done - self.done_at_start
        eta = f"ETA {_clock(elapsed / new * (len(self.ids) - done))}" if new > 0 and done < len(self.ids) else \
            ("ETA 0:00" if done >= len(self.ids) else "ETA -")
        if failed:
            what = f"failed: {failed}"
        else:
            try:
                m = read_json(Path(self.runs_dir) / rid / "metrics.json")
                what = f"{m['dataset']} {m['metric']} {float(m['value']):.3f}"
            except (OSError, ValueError, KeyError, TypeError):
                what = "done"
        return f"[{done}/{len(self.ids)}] {rid} {seconds:.1f} s, {what} | elapsed {_clock(elapsed)}, {eta}"


def run_cost(params: Params) -> float:
    """A run's relative cost, for the order in which workers take runs (longest first, so that the last ones to
    finish are short): training samples x epochs, plus 0.6 per evaluated item, once per epoch with
    ``eval_every_epoch``. Only the order it gives matters.

    Measured on the quick study (2 workers, 2026-12-08): a trained sample costs 2.5-3 ms, an evaluated item 1.8 ms
    (RQ6's six columns) to 3 ms (captions). With a quarter per item and the evaluation counted once, RQ6's 12-epoch
    runs (7,200 samples, 8,400 items: 29-38 s) ranked below RQ1's LoRA runs (9,600 samples: 24 s) and were the
    study's last three runs, the last one alone on a core.
    """
    run = params.run
    evaluated = (1 + len(run.eval_datasets)) * (run.test_size or 200)
    if run.eval_every_epoch and run.method != "none":
        evaluated *= math.ceil(run.epochs)
    trained = 0 if run.method == "none" else (run.train_size or 1000) * run.epochs
    return trained + 0.6 * evaluated


def run_sweep(params: Params, shard: tuple[int, int] = (0, 1), progress: bool = True, retries: int = 0,
              stream=None, tracker: Progress | None = None, longest_first: bool = False) -> SweepSummary:
    """Run this shard of the sweep: skip finished runs, claim the others one by one, keep going after failures.

    Args:
        params: a params set whose ``sweep`` section declares the runs.
        shard: (i, n): this worker's share of the runs.
        progress: progress bars inside runs, and one status line per run.
        retries: extra attempts for a run that fails (a failed run is always retried on the next invocation).
        stream: where status lines go (default stderr).
        tracker: counts done/total over a larger set of runs (a study's); default: this shard's runs.
        longest_first: take the runs by :func:`run_cost`, longest first (workers sharing a sweep), instead of by id.

    Returns:
        A :class:`SweepSummary`. Ctrl-C stops after recording the current run as failed (it re-runs next time).
    """
    from .runs import clean_stale_temporaries, execute_run, is_done

    stream = stream or sys.stderr
    start = time.perf_counter()
    plan = plan_sweep(params, shard, progress=False)
    if longest_first:
        plan.sort(key=lambda item: -run_cost(item[1]))  # stable: equal costs keep the id order
    runs_dir = Path(params.paths.runs)
    clean_stale_temporaries(runs_dir)
    install_sigterm()
    tracker = tracker or Progress.begin(runs_dir, [rid for rid, _ in plan])
    summary = SweepSummary(total=len(plan))
    for k, (rid, run_params) in enumerate(plan, 1):
        if is_done(runs_dir / rid):
            if _rescore(runs_dir / rid, run_params, summary, stream):
                continue
            summary.skipped.append(rid)
            continue
        damage = _damage(runs_dir / rid)
        if damage:
            summary.damaged[rid] = damage
            print(f"[{k}/{len(plan)}] {rid}: damaged ({damage}); re-running it", file=stream, flush=True)
        if not claim_run(runs_dir, rid):
            summary.busy.append(rid)
            continue
        try:
            if is_done(runs_dir / rid):  # finished by another worker between our check and our claim
                summary.skipped.append(rid)
                continue
            run_start = time.perf_counter()
            for attempt in range(retries + 1):
                try:
                    execute_run(run_params, progress=progress)
                    summary.ran.append(rid)
                    print(tracker.line(rid, time.perf_counter() - run_start), file=stream, flush=True)
                    break
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # recorded in the run's status.json; the sweep goes on
                    if attempt == retries:
                        summary.failed[rid] = f"{type(exc).__name__}: {exc}"
                        print(tracker.line(rid, time.perf_counter() - run_start, summary.failed[rid]), file=stream,
                              flush=True)
        finally:
            release_run(runs_dir, rid)
    summary.seconds = time.perf_counter() - start
    return summary


def _damage(run_dir: Path) -> str | None:
    """What is wrong with a run directory whose status says done (None: intact, or not claiming to be done)."""
    from .records import run_damage
    from .runs import read_json

    if not (run_dir / "status.json").exists():
        return None
    try:
        status = read_json(run_dir / "status.json")
    except (OSError, ValueError) as exc:
        return str(exc)
    if not isinstance(status, dict) or status.get("status") != "done":
        return None
    return run_damage(run_dir, status)


def _rescore(run_dir: Path, params: Params, summary: SweepSummary, stream) -> bool:
    """Re-score a finished run whose metric versions changed (under its claim); True when it was re-scored."""
    from .records import rescore_run, stale_metrics
    from .runs import read_json

    if not stale_metrics(read_json(run_dir / "metrics.json")):
        return False
    if not claim_run(run_dir.parent, run_dir.name):
        summary.busy.append(run_dir.name)
        return True
    try:
        stale = rescore_run(run_dir, params)
    finally:
        release_run(run_dir.parent, run_dir.name)
    if stale:
        summary.rescored[run_dir.name] = stale
        print(f"  {run_dir.name}: re-scored {', '.join(stale)} (metric changed; predictions reused)", file=stream,
              flush=True)
    return bool(stale)


def default_workers() -> int:
    """Local worker processes for a study: ``MLLM_STUDY_WORKERS``, else one per core up to two (one torch thread
    each: on two cores that beats one run on two threads, see benchmarks/README.md)."""
    env = os.environ.get("MLLM_STUDY_WORKERS")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ConfigError(f"MLLM_STUDY_WORKERS must be a positive integer, got {env!r}")
        return int(env)
    return max(1, min(2, os.cpu_count() or 1))


def _worker_sweeps(params_list: list[Params], tracker: Progress | None = None,
                   order: list[int] | None = None) -> list[SweepSummary]:
    """One local worker: every sweep (in ``order``; the summaries in the given order), each one's runs longest
    first, one torch thread; claims keep the workers on different runs."""
    from .process import configure_process

    configure_process(quiet=True, threads=1)  # no "Loading weights" bars from the workers: one line per run
    order = list(range(len(params_list))) if order is None else order
    done = {i: run_sweep(params_list[i], progress=False, stream=sys.stderr, tracker=tracker, longest_first=True)
            for i in order}
    return [done[i] for i in range(len(params_list))]


def pool_map(fn, items: list) -> list:
    """``fn`` over ``items`` in one spawned process each, results in order. Closed and joined, not terminated, once
    the work is done: terminating SIGTERMs workers still in their exit handlers, which print KeyboardInterrupt
    tracebacks (:func:`install_sigterm`); on an error or Ctrl-C the pool is terminated."""
    import multiprocessing as mp

    pool = mp.get_context("spawn").Pool(len(items))
    try:
        out = pool.map(fn, items)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return out


def submit_runs(pool, plans: list[list[tuple[str, Params]]], priority: int = 0,
                tracker: Progress | None = None) -> list[list[tuple[str, Any]]]:
    """Queue every run of the sweeps' plans (:func:`plan_sweep`) on a :class:`mllm_study.workers.WorkerPool` (one
    task per run id, shared by the sweeps that hold it); per sweep its ``(run id, future)`` pairs."""
    futures = pool.submit_many([(rid, dataclasses.replace(p, sweep={})) for plan in plans for rid, p in plan],
                               priority, tracker)
    it = iter(futures)
    return [[(rid, next(it)) for rid, _ in plan] for plan in plans]


def collect_runs(submitted: list[list[tuple[str, Any]]], start: float) -> list[SweepSummary]:
    """Wait for the futures of :func:`submit_runs`; one merged :class:`SweepSummary` per sweep (a task that
    failed outside its run, e.g. a worker killed, counts as a failed run). A run two sweeps share counts as ran
    in the first and as already done in the others, as when the sweeps run one after the other."""
    out, counted = [], set()
    for plan in submitted:
        summary = SweepSummary(total=len(plan))
        for rid, future in plan:
            try:
                one: SweepSummary = future.result()
            except Exception as exc:  # noqa: BLE001  (WorkerDied, the pool stopped: the run did not end)
                summary.failed[rid] = str(exc)
                continue
            summary.ran += [r for r in one.ran if r not in counted]
            summary.skipped += one.skipped + [r for r in one.ran if r in counted]
            counted.update(one.ran)
            summary.failed.update(one.failed)
            summary.busy += one.busy
            summary.damaged.update(one.damaged)
            summary.rescored.update(one.rescored)
        summary.seconds = time.perf_counter() - start
        out.append(summary)
    return out


def run_sweeps(params_list: list[Params], workers: int = 1, progress: bool = True, stream=None,
               tracker: Progress | None = None, pool=None, priority: int = 0) -> list[SweepSummary]:
    """Run several sweeps with ``workers`` local processes that share the runs through claims (dynamic balance:
    a worker skips a run another one holds and takes the next). One :class:`SweepSummary` per sweep, merged.
    ``tracker`` (default: over every run of the sweeps) gives the one line per finished run its done/total and ETA.

    With ``pool`` (a :class:`mllm_study.workers.WorkerPool`, e.g. a study's) the runs go to its workers instead, at
    ``priority`` (lower first), longest first over all the sweeps; ``workers`` is then ignored.

    The base model must already be pre-trained (else every worker would pre-train it).
    """
    start = time.perf_counter()
    plans = [plan_sweep(p) for p in params_list] if tracker is None or pool is not None else []
    if tracker is None and params_list:
        tracker = Progress.begin(params_list[0].paths.runs, [rid for plan in plans for rid, _ in plan])
    if pool is not None:
        return collect_runs(submit_runs(pool, plans, priority, tracker), start)
    if workers <= 1:
        return [run_sweep(p, progress=progress, stream=stream, tracker=tracker) for p in params_list]
    import functools

    # the sweep holding the longest run first, each sweep's runs longest first: the tail, where one worker waits for
    # the other's last run, is made of short runs (measured on the quick study's run times: 634 -> 616 s, the bound
    # being 616 s)
    longest = [max((run_cost(p) for p in expand_sweep(params)), default=0.0) for params in params_list]
    order = sorted(range(len(params_list)), key=lambda i: -longest[i])
    parts = pool_map(functools.partial(_worker_sweeps, tracker=tracker, order=order), [params_list] * workers)
    merged = []
    for i in range(len(params_list)):
        runs = [p[i] for p in parts]
        ran = list(dict.fromkeys(rid for r in runs for rid in r.ran))
        summary = SweepSummary(total=runs[0].total, ran=ran,
                               skipped=[rid for rid in runs[0].skipped if rid not in ran],
                               failed={rid: why for r in runs for rid, why in r.failed.items() if rid not in ran},
                               damaged={rid: why for r in runs for rid, why in r.damaged.items()},
                               rescored={rid: m for r in runs for rid, m in r.rescored.items()})
        summary.seconds = time.perf_counter() - start
        merged.append(summary)
    return merged


def sweep_task(params: Params, shard: tuple[int, int], retries: int = 0) -> int:
    """One worker's shard of a sweep, in its own process: what local pool workers (``mllm-study sweep --workers``)
    and SLURM array tasks (:func:`submit_sweep`) call, with the params the submitting command resolved.

    Returns:
        0 when every run of the shard finished, 1 when one failed (recorded in its run folder; the next invocation
        retries it). Any other error is raised (a failed job, with its traceback in the task's log).
    """
    from .process import configure_process

    configure_process(quiet=True)
    summary = run_sweep(params, shard, progress=False, retries=retries)
    print(summary.line(), flush=True)
    return 1 if summary.failed else 0


def submit_sweep(params: Params, n_tasks: int, folder: str | Path, retries: int = 0, local: bool = False,
                 **executor_params: Any) -> list:
    """Submit a sweep as a SLURM job array through submitit: task k runs :func:`sweep_task` on shard ``k/n_tasks``.

    With ``n_tasks`` = number of runs, each task trains exactly one run. ``params`` travel pickled (their paths are
    absolute: the cluster's nodes must see the same file system). ``local=True`` uses submitit's LocalExecutor
    (subprocesses on this machine; for tests and for trying the set-up without a cluster). ``executor_params`` go to
    ``update_parameters`` (e.g. slurm_partition, gpus_per_node, timeout_min, slurm_array_parallelism,
    cpus_per_task).
    """
    import functools

    import submitit

    folder = Path(folder)
    executor = submitit.LocalExecutor(folder=folder) if local else submitit.AutoExecutor(folder=folder,
                                                                                          cluster="slurm")
    if local:
        executor_params = {k: v for k, v in executor_params.items() if not k.startswith("slurm_")}
    executor.update_parameters(**executor_params)
    return executor.map_array(functools.partial(sweep_task, params, retries=retries),
                              [(k, n_tasks) for k in range(n_tasks)])


def install_sigterm() -> None:
    """Turn SIGTERM (SLURM pre-emption, kill) into KeyboardInterrupt so the current run is recorded and released."""
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        pass
