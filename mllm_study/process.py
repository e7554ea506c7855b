"""Settings every process of the package applies before it works: the console script, local sweep workers and
SLURM array tasks alike (they call library entries such as :func:`mllm_study.sweep.sweep_task`, never the CLI).

Usage: ``configure_process(quiet=True)``
"""

from __future__ import annotations

import os
import sys

__all__ = ["configure_process", "set_threads", "on_terminal"]


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


def on_terminal() -> bool:
    """Whether standard error is a terminal (progress bars are only drawn there)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def configure_process(quiet: bool = False, threads: int | None = None) -> None:
    """Hub access as the environment says (``HF_HUB_OFFLINE`` default 0), no tokenizer thread pool (the workers are
    processes), torch threads (:func:`set_threads`), and with ``quiet`` or off a terminal no transformers progress
    bars (their carriage returns garble logs)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    set_threads(threads)
    if quiet or not on_terminal():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
