"""Helpers for the research notebooks as users open them (JupyterLab) or batch-execute them (papermill).

Usage (the cell after a notebook's parameters): ``check_parameters(["profile", "params_file", "cache", "runs"])``
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import ConfigError

__all__ = ["injected_parameters", "check_parameters"]

#: papermill's injected cell starts with exactly this line (the notebooks' own parameters cell has more after it)
_INJECTED_HEADER = "# Parameters\n"


def injected_parameters(history: list[str] | None = None) -> list[str] | None:
    """Names papermill injected into this kernel (from IPython's input history), or None when none were."""
    if history is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return None
        shell = get_ipython()
        history = list(shell.user_ns.get("In", [])) if shell is not None else []
    for source in reversed(history):
        if source.startswith(_INJECTED_HEADER):
            return re.findall(r"^([A-Za-z_]\w*)\s*=", source, re.M)
    return None


def check_parameters(known: Iterable[str], history: list[str] | None = None) -> None:
    """Raise ValueError naming any injected parameter this notebook does not take (e.g. ``papermill -p trian
    False``: without this the typo would be ignored and the default used)."""
    known = list(known)
    unknown = [n for n in injected_parameters(history) or [] if n not in known]
    if unknown:
        import difflib

        hints = [f"{n!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(n, known, n=1)) else repr(n)
                 for n in unknown]
        raise ConfigError(f"unknown notebook parameter(s) {', '.join(hints)}; this notebook takes: {', '.join(known)}")
