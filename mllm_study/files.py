"""JSON and file helpers shared by the run side (runs, sweeps) and the report side (validity, records): a leaf
module, so reading a run folder never imports the training code.

Usage: ``write_json_atomic(path, data)``, ``read_json(path)``, ``file_digest(path)``
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import DataError

__all__ = ["write_json_atomic", "read_json", "file_digest"]


def write_json_atomic(path: Path, data: Any, sort_keys: bool = True) -> None:
    """Write JSON through a temporary file and an atomic rename (``sort_keys=False``: mappings keep their order)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=sort_keys))
    tmp.replace(path)


def read_json(path: Path) -> Any:
    """Parse a JSON file; a malformed one is a :class:`~mllm_study.errors.DataError` that names the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (16 hex digits), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
