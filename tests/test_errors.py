"""The exception hierarchy (mllm_study/errors.py) and how the command line reports it.

Bad input is a :class:`~mllm_study.errors.StudyError` (one line on stderr, exit code 2); anything else escaping a
command is a bug and keeps its traceback.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mllm_study import cli, errors
from mllm_study.errors import ConfigError, DataError, ModelError, RunError, StudyError, TrainingDiverged

PACKAGE = Path(__file__).resolve().parents[1] / "mllm_study"


@pytest.mark.parametrize("cls", [ConfigError, DataError, RunError, ModelError])
def test_each_error_is_a_study_error_and_a_value_error(cls):
    assert issubclass(cls, StudyError) and issubclass(cls, ValueError)
    with pytest.raises(StudyError, match="what and where"):
        raise cls("what and where")


def test_training_diverged_is_a_run_error_and_a_runtime_error():
    exc = TrainingDiverged(7, float("nan"))
    assert isinstance(exc, RunError) and isinstance(exc, RuntimeError) and isinstance(exc, StudyError)
    assert (exc.step, str(exc)) == (7, "loss became nan at step 7")


def test_old_import_locations_are_the_same_classes():
    from mllm_study.config import ConfigError as config_error
    from mllm_study.data import DataError as data_error
    from mllm_study.evaluate import PredictionFileError
    from mllm_study.train import TrainingDiverged as diverged

    assert (config_error, data_error, diverged) == (ConfigError, DataError, TrainingDiverged)
    assert PredictionFileError is errors.PredictionFileError and issubclass(PredictionFileError, DataError)


def test_errors_is_a_leaf_module():
    tree = ast.parse((PACKAGE / "errors.py").read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imports)


def test_no_bare_value_error_is_raised_for_bad_input():
    """Every ``raise ValueError(`` in the package is an internal invariant marked ``# internal``; bad input raises a
    StudyError subclass (ConfigError, DataError, RunError, ModelError)."""
    bare: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*raise ValueError\b", line) and "# internal" not in line:
                bare.setdefault(rel, []).append(f"{rel}:{n}: {line.strip()}")
    assert not bare, "raise a StudyError subclass (or mark an internal invariant '# internal'):\n" + "\n".join(
        line for lines in bare.values() for line in lines)


@pytest.mark.parametrize("args, message", [
    (["--method", "nosuchmethod"], "unknown method 'nosuchmethod'"),
    (["--method-params", "{r: [8"], "--method-params is not valid YAML"),
])
def test_a_study_error_is_one_line_with_exit_code_2(tmp_path, capsys, args, message):
    code = cli.main(["run", "--profile", "smoke", "--quiet", "--set", f"paths.cache={tmp_path / 'cache'}",
                     "--set", f"paths.runs={tmp_path / 'runs'}", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"mllm-study run: error: {message}") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "cache").exists()  # rejected before anything is built


def test_an_empty_runs_folder_is_a_run_error(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    code = cli.main(["validate", "--profile", "smoke", "--set", f"paths.cache={tmp_path / 'cache'}",
                     "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mllm-study validate: error: no runs in ") and err.count("\n") == 1, err


@pytest.mark.parametrize("cls", [ConfigError, DataError, RunError, ModelError])
def test_every_study_error_is_reported_as_one_line(monkeypatch, capsys, cls):
    def handler(args):
        raise cls("bad input, named")

    monkeypatch.setattr(cli, "_cmd_validate", handler)
    assert cli.main(["validate", "--profile", "smoke"]) == 2
    assert capsys.readouterr().err == "mllm-study validate: error: bad input, named\n"


@pytest.mark.parametrize("exc", [ValueError("a bug"), KeyError("a bug"), TypeError("a bug")])
def test_a_plain_exception_is_a_bug_and_keeps_its_traceback(monkeypatch, capsys, exc):
    def handler(args):
        raise exc

    monkeypatch.setattr(cli, "_cmd_validate", handler)
    with pytest.raises(type(exc), match="a bug"):
        cli.main(["validate", "--profile", "smoke"])
    assert "error:" not in capsys.readouterr().err
