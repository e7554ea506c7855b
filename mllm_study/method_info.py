"""What the report side knows about each PEFT method, declared once in the method's own file, without torch.

Usage: ``method_info("lora").display  # -> "LoRA"``; ``method_order()``; ``study_methods()``; ``size_knob("adapter")``

A method is one file ``mllm_study/methods/<name>.py`` whose ``@register_method("<name>", ...)`` call declares, next
to how to apply it, what tables and figures need: its display name, display order, colour, size knob (and the knob's
label in tables), the paper's learning rate, its default placement and whether it is one of the study's PEFT
methods. Those arguments must be literals (strings, numbers, booleans, None), because the report side -- which must
not import torch or peft -- reads them straight from the method files' source (:func:`scanned_methods`, with
:mod:`ast`), while the training side gets the same record from :func:`mllm_study.methods.register_method`, which
declares it here (:func:`declare_method`) when the method module is imported. A method registered at run time
(a user's own module, a test) is declared the same way and so appears everywhere the built-in ones do.
``tests/test_methods.py`` checks that the two readings agree for every built-in method.

This module is a leaf of the package (it imports only :mod:`.errors`): plots, report, findings, validity and
accounting read method metadata from here, and never from :mod:`mllm_study.methods`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError

__all__ = ["MethodInfo", "INFO_FIELDS", "METHODS_DIR", "PASSTHROUGH_PREFIX", "PASSTHROUGH_LR", "declare_method",
           "undeclare_method", "method_infos", "method_info", "method_order", "study_methods", "size_knob",
           "size_label", "paper_lr", "scanned_methods", "LiveSequence"]

METHODS_DIR = Path(__file__).resolve().parent / "methods"
PASSTHROUGH_PREFIX = "peft:"  # any other peft tuner (methods/passthrough.py): not declared, named on demand
PASSTHROUGH_LR = 2e-4  # a passthrough tuner's learning rate (the paper did not run these tuners)


@dataclass(frozen=True)
class MethodInfo:
    """One method's metadata (every field but ``name`` is an optional keyword argument of ``register_method``)."""

    name: str
    display: str | None = None  # in tables and legends ("LoRA"); None = the name
    order: int = 1000  # display order, ascending (the base model first); ties by name
    color: str | None = None  # a matplotlib colour ("#1f77b4"); None = the next free colour of the palette
    size_knob: str | None = None  # the method parameter that sets its size ("r"); None = no size knob
    size_label: str | None = None  # the knob's label in tables ("r" -> "r=16"); None = the knob's name
    lr: float = 2e-4  # the paper's learning rate (profiles set their own in run.method_presets)
    default_placement: str | None = "both"  # the placement a run uses when none is given; None = no placement
    study: bool = False  # one of the study's PEFT methods (findings, validity, the paper's accounting table)
    description: str = ""

    def __post_init__(self) -> None:
        if self.display is None:
            object.__setattr__(self, "display", self.name)
        if self.size_knob is not None and self.size_label is None:
            object.__setattr__(self, "size_label", self.size_knob)


#: The keyword arguments of ``register_method`` that are method metadata (the rest is how to apply, save, load).
INFO_FIELDS = tuple(f.name for f in dataclasses.fields(MethodInfo) if f.name != "name")

_DECLARED: dict[str, MethodInfo] = {}  # declared at run time (register_method); wins over the scanned source


def declare_method(info: MethodInfo) -> MethodInfo:
    """Make ``info`` the metadata of method ``info.name`` (``register_method`` calls this)."""
    global _INFOS
    _DECLARED[info.name] = info
    _INFOS = None
    return info


def undeclare_method(name: str) -> None:
    """Forget a run-time declaration (``mllm_study.methods.unregister_method``; tests clean up with it)."""
    global _INFOS
    _DECLARED.pop(name, None)
    _INFOS = None


def _literal(node: ast.expr, where: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        raise ConfigError(f"{where}: method metadata must be a literal (the report side reads it from the source "
                          f"without importing torch), got {ast.unparse(node)!r}") from None


def _is_register_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return name == "register_method" and bool(node.args) and isinstance(node.args[0], ast.Constant) \
        and isinstance(node.args[0].value, str)


def scan_source(source: str, filename: str = "<string>") -> list[MethodInfo]:
    """The :class:`MethodInfo` of every ``register_method("<name>", ...)`` call in a method file's ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if _is_register_call(node):
            name = node.args[0].value
            kwargs = {k.arg: _literal(k.value, f"{filename}:{node.lineno} {k.arg}=") for k in node.keywords
                      if k.arg in INFO_FIELDS}
            found.append(MethodInfo(name=name, **kwargs))
    return found


@lru_cache(maxsize=None)
def _scan_dir(directory: str) -> dict[str, MethodInfo]:
    out: dict[str, MethodInfo] = {}
    for path in sorted(Path(directory).glob("*.py")):
        for info in scan_source(path.read_text(encoding="utf-8"), f"methods/{path.name}"):
            out[info.name] = info
    return out


def scanned_methods(directory: str | Path = METHODS_DIR) -> dict[str, MethodInfo]:
    """Name -> metadata of every method registered in the method files of ``directory`` (read, not imported; once
    per process and folder)."""
    return dict(_scan_dir(str(directory)))


_INFOS: dict[str, MethodInfo] | None = None  # method_infos(), until the next declaration


def method_infos() -> dict[str, MethodInfo]:
    """Every known method's metadata, in display order: the method files' and any declared at run time."""
    global _INFOS
    if _INFOS is None:
        infos = {**scanned_methods(), **_DECLARED}
        _INFOS = {i.name: i for i in sorted(infos.values(), key=lambda i: (i.order, i.name))}
    return dict(_INFOS)


def method_info(name: str) -> MethodInfo:
    """The metadata of method ``name``; ConfigError listing the known ones (``peft:<tuner>`` methods have none)."""
    infos = method_infos()
    if name not in infos:
        close = difflib.get_close_matches(str(name), list(infos), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown method {name!r}.{hint} Known methods: {', '.join(sorted(infos))}, "
                          f"or {PASSTHROUGH_PREFIX}<tuner> for any other peft tuner (e.g. peft:loha, peft:vera)")
    return infos[name]


def method_order() -> list[str]:
    """Method names in display order (the base model ``none`` first, then the study's methods, then the rest)."""
    return list(method_infos())


def study_methods() -> list[str]:
    """The study's PEFT methods (``study=True``), in display order: those the findings and validity compare."""
    return [n for n, i in method_infos().items() if i.study]


def size_knob(name: str) -> str | None:
    """The parameter that sets method ``name``'s size (None: no knob, or not a declared method)."""
    info = method_infos().get(name)
    return info.size_knob if info else None


def size_label(method: str | None, params: dict) -> str:
    """The size knob as text ("r=16", "bottleneck=32", "tokens=10"; "-" without one).

    The method's own knob; for a method without metadata (``peft:<tuner>``) the first declared knob among
    ``params`` (in method order), so ``peft:loha`` with ``r`` reads ``r=8``."""
    infos = method_infos()
    if method in infos:
        info = infos[method]
        knobs = [(info.size_knob, info.size_label)] if info.size_knob else []
    else:
        knobs = list(dict.fromkeys((i.size_knob, i.size_label) for i in infos.values() if i.size_knob))
    for key, label in knobs:
        if key in params:
            return f"{label}={params[key]}"
    return "-"


def paper_lr(name: str) -> float:
    """The paper's learning rate of method ``name`` (``peft:<tuner>``: :data:`PASSTHROUGH_LR`)."""
    if str(name).startswith(PASSTHROUGH_PREFIX):
        return PASSTHROUGH_LR
    return float(method_info(name).lr)


class LiveSequence(Sequence):
    """A read-only sequence recomputed on every access (``METHOD_ORDER``, ``PEFT_METHODS``): module constants that
    follow the methods registered so far instead of freezing them at import."""

    def __init__(self, compute: Callable[[], Sequence], doc: str = ""):
        self._compute = compute
        self.__doc__ = doc or compute.__doc__

    def __getitem__(self, index):
        return list(self._compute())[index]

    def __len__(self) -> int:
        return len(self._compute())

    def __iter__(self):
        return iter(list(self._compute()))

    def __eq__(self, other) -> bool:
        return isinstance(other, (list, tuple, LiveSequence)) and list(self) == list(other)

    __hash__ = None  # not hashable: the contents change

    def __repr__(self) -> str:
        return repr(list(self))
