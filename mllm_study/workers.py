"""Local worker processes that live across a study's phases: one pool for the calibration and the runs.

Usage::

    with WorkerPool(2) as pool:            # spawned at once: the workers import torch while the main process works
        futures = [pool.submit(p, rid) for rid, p in plan_sweep(params)]
        summaries = [f.result() for f in futures]

Each task is one run (a sweep-less :class:`~mllm_study.config.Params`), executed in a worker by
:func:`mllm_study.sweep.run_sweep` (skip when done, claim, retries, re-scoring) and answered with its
:class:`~mllm_study.sweep.SweepSummary`. Pending tasks wait in the main process, ordered by priority (lower first),
then by :func:`~mllm_study.sweep.run_cost` (longest first), then by submission; a worker gets its next task only when
it is free, so a task submitted later at a higher priority overtakes every pending one. A run id submitted twice
shares one task.

Why: with a pool per phase, each of the calibration's three phases and the runs began with about 10 s in which
both workers started (imports, world, encodings) and ended with one worker waiting for the other's last run; the
study's runs could not start before the calibration's last phase, one run on one core (README, "Time").
"""

from __future__ import annotations

import heapq
import itertools
import multiprocessing as mp
import queue
import sys
import threading
from concurrent.futures import Future
from typing import Any

from .errors import ConfigError

__all__ = ["WorkerPool", "WorkerDied"]


class WorkerDied(RuntimeError):
    """A worker process ended while it ran a task (killed, out of memory, a crash in native code)."""


def _serve(tasks, results) -> None:
    """A worker: one torch thread, then tasks until the ``None`` sentinel."""
    from .process import configure_process

    configure_process(quiet=True, threads=1)  # one line per run from the workers, no "Loading weights" bars
    from . import runs as _runs  # noqa: F401  (torch, transformers and peft: imported before the first task comes)
    from .sweep import run_sweep

    while (item := tasks.get()) is not None:
        tid, params, tracker = item
        results.put(("start", tid, mp.current_process().pid))
        try:
            summary = run_sweep(params, progress=False, stream=sys.stderr, tracker=tracker)
        except KeyboardInterrupt:
            results.put(("error", tid, "KeyboardInterrupt"))
            return
        except BaseException as exc:  # run_sweep records a run's own failure; this is anything around it
            results.put(("error", tid, f"{type(exc).__name__}: {exc}"))
            continue
        results.put(("done", tid, summary))


class WorkerPool:
    """``workers`` spawned processes, a priority queue of runs in the main process and one result thread."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ConfigError(f"a worker pool needs at least 1 worker (got {workers})")
        self._ctx = mp.get_context("spawn")
        self._tasks = self._ctx.Queue()
        self._results = self._ctx.Queue()
        self._lock = threading.Lock()
        self._pending: list[tuple[int, float, int, str]] = []  # heap of (priority, -cost, seq, rid)
        self._items: dict[str, tuple[Any, Any]] = {}  # rid -> (params, tracker) until dispatched
        self._futures: dict[str, Future] = {}
        self._running: dict[str, int | None] = {}  # rid -> pid of its worker (None: queued, not yet started)
        self._seq = itertools.count()
        self._closing = False
        self._procs = [self._start() for _ in range(workers)]
        self._thread = threading.Thread(target=self._collect, name="worker-results", daemon=True)
        self._thread.start()

    def _start(self):
        proc = self._ctx.Process(target=_serve, args=(self._tasks, self._results), daemon=True)
        proc.start()
        return proc

    @property
    def workers(self) -> int:
        return len(self._procs)

    def submit(self, params, rid: str, priority: int = 0, tracker=None) -> Future:
        """Queue run ``rid`` (``params`` without a sweep); the future gives its SweepSummary. A run id already
        submitted returns the same future (a pending one takes the higher of the two priorities, and ``tracker``
        if given)."""
        return self.submit_many([(rid, params)], priority, tracker)[0]

    def submit_many(self, runs: list[tuple[str, Any]], priority: int = 0, tracker=None) -> list[Future]:
        """:meth:`submit` for several ``(run id, params)`` at once: all are queued before any is handed out, so
        the longest goes first even to idle workers."""
        from .sweep import run_cost

        out = []
        with self._lock:
            if self._closing:
                raise RuntimeError("the worker pool is closed")
            for rid, params in runs:
                if rid in self._futures:
                    if rid in self._items and tracker is not None:  # still pending: it reports to the newer tracker
                        self._items[rid] = (self._items[rid][0], tracker)
                    self._raise_priority(rid, priority)
                    out.append(self._futures[rid])
                    continue
                future: Future = Future()
                self._futures[rid] = future
                self._items[rid] = (params, tracker)
                heapq.heappush(self._pending, (priority, -run_cost(params), next(self._seq), rid))
                out.append(future)
            self._dispatch()
        return out

    def worker_of(self, rid: str) -> int | None:
        """The process id of the worker running ``rid`` (None: pending, done, or not yet started)."""
        with self._lock:
            return self._running.get(rid)

    def _raise_priority(self, rid: str, priority: int) -> None:
        for k, (prio, cost, seq, other) in enumerate(self._pending):
            if other == rid and priority < prio:
                self._pending[k] = (priority, cost, seq, rid)
                heapq.heapify(self._pending)
                return

    def _dispatch(self) -> None:
        """Hand out pending tasks while a worker is free (under the lock)."""
        while self._pending and len(self._running) < len(self._procs):
            *_, rid = heapq.heappop(self._pending)
            params, tracker = self._items.pop(rid)
            self._running[rid] = None
            self._tasks.put((rid, params, tracker))

    def _finish(self, rid: str, summary=None, error: BaseException | None = None) -> None:
        with self._lock:
            self._running.pop(rid, None)
            future = self._futures[rid]
            self._dispatch()
        if future.done():  # already failed (its worker died, or the pool was stopped)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(summary)

    def _collect(self) -> None:
        while True:
            try:
                kind, rid, value = self._results.get(timeout=0.5)
            except queue.Empty:
                if self._closing and not self._running:
                    return
                self._check_workers()
                continue
            except (EOFError, OSError):  # the queue's pipe closed: the pool is being torn down
                return
            if kind == "start":
                with self._lock:
                    if rid in self._running:
                        self._running[rid] = value
            elif kind == "done":
                self._finish(rid, value)
            else:
                self._finish(rid, error=RuntimeError(f"{rid}: {value}"))

    def _check_workers(self) -> None:
        """A dead worker fails the run it held and is replaced, so the other runs go on."""
        for k, proc in enumerate(self._procs):
            if proc.is_alive() or self._closing:
                continue
            with self._lock:
                held = [rid for rid, pid in self._running.items() if pid == proc.pid]
            for rid in held:
                self._finish(rid, error=WorkerDied(f"{rid}: worker process {proc.pid} ended with exit code "
                                                   f"{proc.exitcode} while running it"))
            self._procs[k] = self._start()

    def close(self) -> None:
        """Let the workers finish their runs, then stop them (pending runs are cancelled)."""
        with self._lock:
            self._closing = True
            for *_, rid in self._pending:
                self._futures[rid].cancel()
            self._pending.clear()
        for _ in self._procs:
            self._tasks.put(None)
        for proc in self._procs:
            proc.join()
        self._thread.join(timeout=5)

    def terminate(self) -> None:
        """Stop the workers now (on an error or Ctrl-C)."""
        with self._lock:
            self._closing = True
            self._pending.clear()
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(timeout=10)
        for rid in list(self._running):
            self._finish(rid, error=RuntimeError(f"{rid}: the worker pool was stopped"))

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()
