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


def test_the_documents_the_code_cites_exist():
    """Every ``*.md`` file named in the package, the notebooks, the params files and the benchmarks exists (paths
    from the project root: a docstring that cites a document the repository lacks sends a reader nowhere)."""
    import re

    root = Path(__file__).resolve().parents[1]
    sources = [*root.glob("mllm_study/**/*.py"), *root.glob("notebooks/*.ipynb"), *root.glob("params/*.yaml"),
               *root.glob("benchmarks/*.py")]
    cited = {(m, p.relative_to(root).as_posix()) for p in sources
             for m in re.findall(r"(?<![\w/.-])([\w./-]+\.md)\b", p.read_text(encoding="utf-8"))}
    assert len({m for m, _ in cited}) >= 4  # the scan sees the citations
    missing = sorted((m, where) for m, where in cited if not (root / m).is_file())
    assert not missing, f"cited documents that do not exist (document, where): {missing[:10]}"
