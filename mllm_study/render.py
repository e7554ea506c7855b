"""Notebooks -> HTML reports: papermill execution, nbconvert rendering, metadata and ``reports/index.html``.

Usage: ``execute_notebook("notebooks/rq1_main.ipynb", {"profile": "smoke"}, "reports/rq1_main/smoke.html")``

A report ``reports/<stem>/<profile>.html`` sits beside the executed notebook (``<profile>.ipynb``) and a metadata
file (``<profile>.json``: parameters, status, code version, date, seconds and the key of its inputs, which lets
``mllm-study study`` skip reports whose inputs did not change).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["NotebookResult", "code_version", "render_html", "report_is_current", "execute_notebook", "write_index"]


@dataclass
class NotebookResult:
    status: str  # ok | failed
    html: Path
    seconds: float
    error: str | None = None


def code_version(root: Path | None = None) -> str:
    """Package version plus the git commit read from ``.git`` (no git process; "+dirty" is not detected)."""
    from . import __version__

    root = Path(root or Path(__file__).resolve().parent.parent)
    head = root / ".git" / "HEAD"
    commit = None
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            name = ref[5:]
            path = root / ".git" / name
            if path.exists():
                commit = path.read_text().strip()
            elif (root / ".git" / "packed-refs").exists():
                for line in (root / ".git" / "packed-refs").read_text().splitlines():
                    if line.endswith(" " + name):
                        commit = line.split()[0]
        else:
            commit = ref
    except OSError:
        pass
    return f"{__version__}+g{commit[:10]}" if commit else __version__


def render_html(executed: Path, out_html: Path, hide_code: bool = True) -> Path:
    """Executed notebook -> standalone HTML (figures inlined as base64 PNG); code cells hidden by default."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(executed), as_version=4)
    nb.cells = [c for c in nb.cells if not {"parameters", "injected-parameters"} & set(c.metadata.get("tags", []))]
    exporter = HTMLExporter(template_name="lab", exclude_input=hide_code, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    start = body.find("<body")
    if start >= 0:  # every report links back to the index (reports/<rq>/<profile>.html -> reports/index.html)
        end = body.find(">", start) + 1
        body = (body[:end] + '\n<nav style="font-family:sans-serif;margin:1em 2em"><a href="../index.html">'
                "&larr; all reports (index)</a></nav>\n" + body[end:])
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(body)
    return out_html


def _meta_path(html: Path) -> Path:
    return html.with_suffix(".json")


def report_is_current(html: str | Path, key: str) -> bool:
    """True when ``html`` exists and was rendered successfully from inputs with this key."""
    html = Path(html)
    try:
        meta = json.loads(_meta_path(html).read_text())
    except (OSError, ValueError):
        return False
    return html.exists() and meta.get("key") == key and meta.get("status") == "ok"


@contextlib.contextmanager
def _kernel_stderr():
    """Collect what the kernel process writes to stderr (it inherits file descriptor 2) instead of the terminal:
    ipykernel's start-up warnings would otherwise interleave with the study's progress lines."""
    buffer = io.StringIO()
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2 (embedded interpreters): leave stderr alone
        yield buffer
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stderr.flush()
        os.dup2(tmp.fileno(), 2)
        try:
            yield buffer
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            buffer.write(tmp.read().decode(errors="replace"))


def execute_notebook(notebook: str | Path, parameters: dict, out_html: str | Path, cwd: str | Path | None = None,
                     kernel_name: str = "python3", hide_code: bool = True, key: str | None = None,
                     timeout: int = 1800) -> NotebookResult:
    """Run a notebook with papermill, keep the executed copy beside the HTML, render the HTML, record metadata.

    Args:
        notebook: the ``.ipynb`` (committed without outputs, with a cell tagged ``parameters``).
        parameters: injected after the parameters cell.
        out_html: ``reports/<stem>/<profile>.html``; the executed notebook is ``<profile>.ipynb`` beside it and
            ``<profile>.json`` records parameters, code version, date, duration, status and the inputs key.
        cwd: the kernel's working directory (the repository root, so relative paths in params resolve).

    Returns:
        :class:`NotebookResult`; a failing cell gives status "failed" with its error (the HTML still shows it).
    """
    import papermill as pm

    notebook, out_html = Path(notebook), Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    executed = out_html.with_suffix(".ipynb")
    start = time.perf_counter()
    status, error = "ok", None
    with _kernel_stderr() as kernel_log:
        try:
            pm.execute_notebook(str(notebook), str(executed), parameters=parameters, kernel_name=kernel_name,
                                language="python", cwd=str(cwd) if cwd else None, progress_bar=False,
                                log_output=False, execution_timeout=timeout)
        except Exception as exc:  # papermill writes the partially executed notebook with the error before raising
            status = "failed"
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    if status == "failed":  # a kernel that died says why on its stderr
        tail = [x for x in kernel_log.getvalue().splitlines() if x.strip() and "without encryption" not in x][-3:]
        error += "".join(f"\n  kernel: {x}" for x in tail)
    if executed.exists():
        render_html(executed, out_html, hide_code)
    seconds = time.perf_counter() - start
    meta = {"notebook": str(notebook), "parameters": parameters, "status": status, "error": error,
            "code_version": code_version(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1), "key": key, "html": out_html.name}
    _meta_path(out_html).write_text(json.dumps(meta, indent=1))
    return NotebookResult(status, out_html, seconds, error)


def _short(key: str, value) -> str:
    """Parameters as a reader wants them: paths inside the repository relative to it, "" as "-"."""
    if key == "params_file" and not value:
        return "every params/rq*.yaml"
    root = Path(__file__).resolve().parent.parent
    try:
        return str(Path(value).resolve().relative_to(root)) if key in ("params_file", "cache", "runs") else str(value)
    except ValueError:
        return str(value)


def write_index(reports_dir: str | Path) -> Path:
    """``reports/index.html``: every rendered report with its parameters, code version, date and status."""
    import html as _html

    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for meta_path in sorted(reports_dir.glob("*/*.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            continue
        if "parameters" not in meta:
            continue
        html_path = meta_path.with_suffix(".html")
        rel = html_path.relative_to(reports_dir).as_posix()
        params = meta["parameters"]
        shown = ", ".join(f"{k}={_short(k, v)}" for k, v in params.items()
                          if k != "train" and not (k == "overrides" and not v))
        status = meta.get("status", "?")
        link = f'<a href="{_html.escape(rel)}">{_html.escape(meta_path.parent.name)}</a>' \
            if html_path.exists() else _html.escape(meta_path.parent.name)
        rows.append(f"<tr><td>{link}</td><td>{_html.escape(meta_path.stem)}</td><td>{_html.escape(shown)}</td>"
                    f"<td>{_html.escape(str(meta.get('code_version', '')))}</td>"
                    f"<td>{_html.escape(str(meta.get('date', '')))}</td><td>{meta.get('seconds', '')}</td>"
                    f"<td class='{status}'>{_html.escape(status)}"
                    + (f"<br><small>{_html.escape(str(meta.get('error'))[-400:])}</small>" if status != "ok"
                       and meta.get("error") else "") + "</td></tr>")
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>mllm-study reports</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.failed{{color:#b00;font-weight:bold}}
.ok{{color:#070}}</style></head><body>
<h1>mllm-study reports</h1>
<p>Parameter-efficient fine-tuning of multimodal LLMs, reproducing Zhou et al. 2024 (arXiv 2406.05130).
One report per research question and profile; index written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC,
code {_html.escape(code_version())}.</p>
<table><tr><th>report</th><th>profile</th><th>parameters</th><th>code version</th><th>rendered (UTC)</th>
<th>seconds</th><th>status</th></tr>
{chr(10).join(rows) if rows else '<tr><td colspan="7">no reports yet: run mllm-study study</td></tr>'}
</table></body></html>
"""
    out = reports_dir / "index.html"
    out.write_text(page)
    return out
