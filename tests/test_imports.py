"""No cross-module private imports: no module of the package imports an underscore name from another of its modules.

A name another module needs is public API of the module that owns it (no underscore, in its ``__all__``, documented);
tests and benchmarks may still reach into a module's privates. The scan covers relative (``from .runs import x``,
``from ..data import x``) and absolute (``from mllm_study.runs import x``) imports, at module level and inside
functions; dunder names (``__version__``) are not private.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_NAME = "mllm_study"
PACKAGE = Path(__file__).resolve().parents[1] / PACKAGE_NAME


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """The dotted name of the package file ``path`` (a package's ``__init__.py`` is the package itself)."""
    parts = [PACKAGE_NAME, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_imports(source: str, module: str, filename: str = "<string>", is_package: bool = False) -> list[str]:
    """``file:line`` for every import of an underscore name from another module of the package in ``source``.

    ``module`` is the dotted name of the module ``source`` belongs to (``is_package``: it is an ``__init__.py``),
    which relative imports resolve against.
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[:len(package) - (node.level - 1)] if node.level - 1 <= len(package) else []
            target = ".".join([*base, *([node.module] if node.module else [])])
        else:
            target = node.module or ""
        if not (target == PACKAGE_NAME or target.startswith(PACKAGE_NAME + ".")) or target == module:
            continue
        for alias in node.names:
            if _is_private(alias.name):
                found.append(f"{filename}:{node.lineno}: from {target} import {alias.name}")
    return found


def test_private_imports_are_found():
    """The scan is not vacuous: it finds what it looks for, in every form, and only that."""
    assert private_imports("from .runs import _rows\n", "mllm_study.records", "records.py") == [
        "records.py:1: from mllm_study.runs import _rows"]
    assert private_imports("from .runs import rows, read_json\n", "mllm_study.records") == []
    assert private_imports("from .runs import __version__\n", "mllm_study.records") == []  # dunder: not private
    inside = "def f():\n    from ..data import x, _y as y\n    return x, y\n"
    assert private_imports(inside, "mllm_study.world.audit") == ["<string>:2: from mllm_study.data import _y"]
    assert private_imports("from .tasks import _GENERATORS\n", "mllm_study.world.audit") == [
        "<string>:1: from mllm_study.world.tasks import _GENERATORS"]
    assert private_imports("from .registry import _check\n", "mllm_study.methods", is_package=True) == [
        "<string>:1: from mllm_study.methods.registry import _check"]
    assert private_imports("from mllm_study.train import _peak\n", "mllm_study.runs") == [
        "<string>:1: from mllm_study.train import _peak"]
    assert private_imports("from . import _x\n", "mllm_study.runs") == ["<string>:1: from mllm_study import _x"]
    assert private_imports("from numpy import _core\n", "mllm_study.runs") == []  # another package's business
    assert private_imports("import mllm_study.runs as _runs\n", "mllm_study.study") == []  # a private alias is fine
    assert private_imports("from . import adapter as _adapter\n", "mllm_study.methods", is_package=True) == []


def test_module_names():
    assert module_name(PACKAGE / "runs.py") == "mllm_study.runs"
    assert module_name(PACKAGE / "world" / "tasks.py") == "mllm_study.world.tasks"
    assert module_name(PACKAGE / "world" / "__init__.py") == "mllm_study.world"


def test_no_cross_module_private_imports():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20 and PACKAGE / "data.py" in files  # the scan sees the package
    found = []
    for path in files:
        found += private_imports(path.read_text(encoding="utf-8"), module_name(path),
                                 path.relative_to(PACKAGE.parent).as_posix(), is_package=path.name == "__init__.py")
    assert not found, ("private names imported from another module of the package (make them public API of their "
                       "module, or move them to the module that uses them):\n" + "\n".join(found))
