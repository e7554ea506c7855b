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


# ------------------------------------------------------------------------------------------- direction of imports
#: Layers of the package's top-level modules (a module imports modules of its own layer or below, at module level or
#: inside functions): cli -> study -> sweep -> runs -> (train, evaluate, methods, data, models, ...) -> (metrics,
#: world, config, ...) -> leaves. A new module must be placed here.
LAYERS = {
    "__main__": 7, "cli": 6,
    "study": 5, "calibration": 5,
    "sweep": 4, "workers": 4,
    "runs": 3, "records": 3, "results": 3,
    "train": 2, "evaluate": 2, "methods": 2, "data": 2, "models": 2, "identity": 2, "claims": 2, "accounting": 2,
    "fixtures": 2, "encodings": 2, "converters": 2,
    "metrics": 1, "world": 1, "config": 1, "captions": 1, "recipe": 1, "method_info": 1,
    "__init__": 0, "errors": 0, "files": 0, "process": 0, "notebook": 0,
}
#: The report side (statistics, tables, plots, validity, rendering): it may import each other and the non-training
#: layers, never the training side.
REPORT_SIDE = {"report", "plots", "stats", "findings", "contrasts", "datasize", "evidence", "validity", "render"}
TRAINING_SIDE = {"cli", "study", "calibration", "sweep", "workers", "runs", "train", "evaluate", "methods", "models"}
#: Imports against the direction that remain (a ratchet: a new one fails, a removed one must leave this list).
#: None remain: config names a conversation file's dataset folder (``conversation_folder``) and the run's data
#: resolution (runs.resolve_dataset) builds it through the converter.
KNOWN_AGAINST: set[tuple[str, str]] = set()


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """The package's top-level modules that ``source`` (of dotted ``module``) imports, anywhere in the file."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                if node.module:
                    targets = [".".join([*base, node.module])]
                else:
                    targets = [".".join([*base, a.name]) for a in node.names]
            else:
                targets = [node.module or ""]
        else:
            continue
        for t in targets:
            parts = t.split(".")
            if parts[0] == PACKAGE_NAME and len(parts) > 1:
                out.add(parts[1])
    own = module.split(".")[1] if "." in module else "__init__"
    return out - {own}


def against_direction(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """``(importer, imported)`` pairs of ``graph`` that go against :data:`LAYERS` and the report/training split."""
    bad = set()
    for a, targets in graph.items():
        for b in targets:
            if a in REPORT_SIDE:
                if b in TRAINING_SIDE:
                    bad.add((a, b))
            elif b in REPORT_SIDE:
                if a not in TRAINING_SIDE or LAYERS.get(a, 0) < 3:  # only runs and above may render evidence
                    bad.add((a, b))
            elif LAYERS[b] > LAYERS[a]:
                bad.add((a, b))
    return bad


def package_graph() -> dict[str, set[str]]:
    """Top-level module -> the top-level modules it imports (``from . import __version__``: the package itself)."""
    files = sorted(PACKAGE.rglob("*.py"))
    tops = {module_name(p).split(".")[1] if "." in module_name(p) else "__init__" for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        name = module_name(path)
        top = name.split(".")[1] if "." in name else "__init__"
        found = imported_modules(path.read_text(encoding="utf-8"), name, is_package=path.name == "__init__.py")
        graph.setdefault(top, set()).update(t if t in tops else "__init__" for t in found)
    graph = {a: targets - {a} for a, targets in graph.items()}
    return graph


def test_imported_modules_and_the_direction_check_find_what_they_look_for():
    assert imported_modules("from .runs import x\n", "mllm_study.sweep") == {"runs"}
    assert imported_modules("def f():\n    from ..data import x\n", "mllm_study.world.audit") == {"data"}
    assert imported_modules("from . import stats\n", "mllm_study.report") == {"stats"}
    assert imported_modules("from .tasks import y\n", "mllm_study.world.writer") == set()  # its own package
    assert imported_modules("import mllm_study.cli\nimport numpy\n", "mllm_study.sweep") == {"cli"}
    assert imported_modules("from .registry import x\n", "mllm_study.methods", is_package=True) == set()
    assert against_direction({"sweep": {"cli"}}) == {("sweep", "cli")}  # a worker re-entering through the CLI
    assert against_direction({"validity": {"runs"}, "report": {"stats"}}) == {("validity", "runs")}
    assert against_direction({"config": {"metrics"}, "runs": {"train", "validity"}}) == set()
    assert against_direction({"data": {"validity"}}) == {("data", "validity")}


def test_imports_go_one_way():
    """cli -> study -> sweep -> runs -> training parts -> base; the report side never imports the training side;
    only ``__main__`` imports the CLI (pool workers and SLURM tasks call :func:`mllm_study.sweep.sweep_task`)."""
    graph = package_graph()
    unplaced = sorted(set(graph) - set(LAYERS) - REPORT_SIDE)
    assert not unplaced, f"modules without a layer in tests/test_imports.py: {unplaced}"
    assert [a for a, targets in graph.items() if "cli" in targets] == ["__main__"]
    bad = against_direction(graph)
    assert bad - KNOWN_AGAINST == set(), f"imports against the direction: {sorted(bad - KNOWN_AGAINST)}"
    assert KNOWN_AGAINST - bad == set(), f"fixed, remove from KNOWN_AGAINST: {sorted(KNOWN_AGAINST - bad)}"
