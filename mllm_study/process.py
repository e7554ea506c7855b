"""Settings every process of the package applies before it works: the console script, local sweep workers and
SLURM array tasks alike (they call library entries such as :func:`mllm_study.sweep.sweep_task`, never the CLI).

Usage: ``configure_process(quiet=True)``
"""

from __future__ import annotations

import os
import sys

__all__ = ["configure_process", "set_threads", "on_terminal", "keep_freed_memory"]

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_HEAP_LIMIT = 32 * 1024 * 1024  # glibc caps the mmap threshold at 32 MiB on 64-bit
_kept = False


def set_threads(n: int | None = None) -> None:
    """``n`` torch threads, else ``MLLM_STUDY_THREADS``, else 1 on machines with at most 2 cores (torch's own
    number on larger ones).

    Measured here (2 cores): the tiny model gains little from a second thread, and two threads collapse (10x slower
    steps) as soon as another process competes for the cores.
    """
    import torch

    n = n or os.environ.get("MLLM_STUDY_THREADS") or ("1" if (os.cpu_count() or 1) <= 2 else "")
    if n:
        torch.set_num_threads(int(n))


def keep_freed_memory() -> bool:
    """Keep freed memory in the process instead of returning it to the kernel (glibc only; idempotent).

    Every training step allocates and frees the same activations. By default glibc serves blocks over its mmap
    threshold (dynamic, from 128 KiB) with fresh ``mmap`` pages and trims the heap's top back to the kernel, so
    each step faults its activations in again. On this VM a 786 KB tensor written to fresh pages costs 12 times the
    same write to reused memory (380-420 vs 35 us), and a LoRA step of the quick profile took about 3,500 page faults
    (benchmarks/README.md, "Allocator"). Blocks up to 32 MiB now come from the heap and the heap is not trimmed
    below 1 GiB (``mallopt``; ``GLIBC_TUNABLES`` does the same from outside). The arithmetic is unchanged.
    ``MLLM_STUDY_KEEP_FREED_MEMORY=0`` leaves glibc's defaults (the benchmark's "before"). Returns whether the
    settings took (False off glibc or when switched off).
    """
    global _kept
    if _kept:
        return True
    if os.environ.get("MLLM_STUDY_KEEP_FREED_MEMORY", "1") == "0":
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _HEAP_LIMIT), (_M_TRIM_THRESHOLD, 1024 * 1024 * 1024), (_M_TOP_PAD, 64 * 1024 * 1024)))
    return _kept


def on_terminal() -> bool:
    """Whether standard error is a terminal (progress bars are only drawn there)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def configure_process(quiet: bool = False, threads: int | None = None) -> None:
    """Hub access as the environment says (``HF_HUB_OFFLINE`` default 0), no tokenizer thread pool (the workers are
    processes), torch threads (:func:`set_threads`), freed memory kept for reuse (:func:`keep_freed_memory`),
    and with ``quiet`` or off a terminal no transformers progress bars (their carriage returns garble logs)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    set_threads(threads)
    keep_freed_memory()
    if quiet or not on_terminal():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
