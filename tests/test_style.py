"""Style: ruff (configured in pyproject.toml's [tool.ruff]) finds nothing in the package, the tests and the benchmarks.

``make style`` runs the same check; ruff is installed by ``make install`` beside pytest.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = pytest.importorskip("ruff", reason="ruff is not installed (make install adds it)")
    cmd = [ruff.find_ruff_bin(), "check", "--no-cache", "--output-format", "concise", "mllm_study", "tests",
           "benchmarks"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
