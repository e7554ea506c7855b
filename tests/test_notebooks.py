"""Every research-question notebook executes on the smoke profile and renders an HTML report with its figures.

The notebooks share one runs folder (a session temporary directory) and the suite's smoke cache; the fixture trains
every RQ's smoke runs once (shared specs once), then each notebook executes and only reads them, like
``mllm-study study``. Papermill runs the venv's ``python3`` kernel (``make install`` registers it with
``ipykernel install --sys-prefix``) with the repository root as working directory.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mllm_study import report, study

pytestmark = pytest.mark.slow  # notebooks rendered by papermill, smoke study runs (make test-fast skips)

ROOT = study.ROOT
NOTEBOOKS = study.list_notebooks()


@pytest.fixture(scope="session")
def kernel():
    """The ``python3`` kernel of this interpreter's environment (registered if missing)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
        ok = Path(spec.argv[0]).resolve() == Path(sys.executable).resolve() or spec.argv[0] == "python"
    except NoSuchKernel:
        ok = False
    if not ok:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
                       check=True, capture_output=True)
    return "python3"


@pytest.fixture(scope="session")
def shared(tmp_path_factory, smoke_params, smoke_model_dir):
    """Cache (with the pre-trained smoke model), one runs folder and one reports folder for all notebooks.

    Every RQ's smoke runs are trained here, in this process, as ``mllm-study study`` does before it executes the
    notebooks (one base-model load instead of one per kernel); the notebooks then only read them.
    """
    root = tmp_path_factory.mktemp("notebooks")
    out = {"cache": str(Path(smoke_params.paths.cache).resolve()), "runs": str(root / "runs"),
           "reports": root / "reports"}
    for path in sorted((ROOT / "params").glob("rq*.yaml")):
        table, collected = study.ensure_runs(path, "smoke", out["cache"], out["runs"], train=True, stream=io.StringIO())
        assert not table.attrs["failed"] and not collected.skipped, (path.stem, table.attrs["failed"], collected)
    return out


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_notebook_is_committed_clean(stem):
    nb = nbformat.read(str(ROOT / "notebooks" / f"{stem}.ipynb"), as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3" and nb.metadata["language_info"]["name"] == "python"
    assert "parameters" in nb.cells[0].metadata.get("tags", []), "first cell must be tagged 'parameters'"
    assert nb.cells[1].cell_type == "markdown" and nb.cells[1].source.startswith("# RQ")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip outputs"
    # papermill --help-notebook infers every parameter with its type (a comment it cannot parse drops the line)
    from papermill.translators import PythonTranslator

    inferred = {p.name: p.inferred_type_name for p in PythonTranslator.inspect(nb.cells[0])}
    assert inferred == {"profile": "str", "params_file": "str", "cache": "str", "runs": "str", "train": "bool",
                        "overrides": "list"}, inferred
    if stem != "rq8_summary":
        intro = nb.cells[1].source
        assert all(w in intro for w in ("Scientific factors", "Nuisance factors", "Fixed")), "repeat the design"


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_notebook_renders_on_smoke(stem, kernel, shared):
    params_file = ROOT / "params" / f"{stem}.yaml"
    # as JupyterLab runs it: the kernel's working directory is notebooks/, the params file given relative to the
    # project root (the notebook's own default form)
    parameters = {"profile": "smoke", "params_file": f"params/{stem}.yaml" if params_file.exists() else "",
                  "cache": shared["cache"], "runs": shared["runs"], "train": False}
    html = shared["reports"] / stem / "smoke.html"
    result = report.execute_notebook(ROOT / "notebooks" / f"{stem}.ipynb", parameters, html, cwd=ROOT / "notebooks",
                                     kernel_name=kernel)
    assert result.status == "ok", result.error
    page = html.read_text()
    assert re.search(r'<img[^>]+src="data:image/png;base64,', page), "the report has no inlined figure"
    assert 'href="../index.html"' in page, "every report links back to the index"
    assert "= &lt; 0.001" not in page and "= < 0.001" not in page, "p-values read 'p < 0.001'"
    assert "/tmp/" not in page.split("</nav>", 1)[-1].replace(shared["runs"], ""), "a local absolute path in the report"
    if stem != "rq8_summary":  # the evidence of every report that trains: used settings, loss curves, gallery
        assert "Settings the runs used" in page and "Items drawn with seed" in page
        assert page.count("data:image/png;base64,") >= 8 + 1, "gallery thumbnails and figures"
    if stem == "rq6_generalization":  # forgetting separated from format collapse: parse rate per epoch
        assert "Forgetting or format collapse" in page and "parse-rate change" in page
    if stem == "rq4_data_size":  # both designs and the log-linear test
        assert "equal steps" in page and "equal epochs" in page and "residual at largest" in page
    if stem == "rq3_budget":  # measured cost beside the estimates, from each run's metrics.json
        assert "Measured cost beside the estimates" in page and "peak memory MiB" in page
        assert re.search(r"Achieved rate over \d+ runs: median [0-9.]+ GFLOP/s", page)
    assert "Traceback" not in page and 'data-mime-type="application/vnd.jupyter.stderr"' not in page, \
        "error output in the report"
    executed = nbformat.read(str(html.with_suffix(".ipynb")), as_version=4)
    for cell in executed.cells:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"{stem}: {out.get('ename')}: {out.get('evalue')}"
            assert not (out.output_type == "stream" and out.name == "stderr"), f"{stem} wrote to stderr: {out.text}"
    meta = json.loads(html.with_suffix(".json").read_text())
    assert meta["status"] == "ok" and meta["parameters"]["profile"] == "smoke"


def test_study_driver_skips_unchanged_reports_and_writes_the_index(shared, kernel, monkeypatch):
    stems = ["rq4_data_size", "rq2_placement"]  # small; their runs exist (the fixture trained them)
    monkeypatch.setenv("MLLM_STUDY_WORKERS", "2")  # two kernels at once, as on a 2-core machine
    kwargs = dict(cache=shared["cache"], runs=shared["runs"], reports=str(shared["reports"] / "driver"),
                  progress=False)
    log = io.StringIO()
    first = study.run_study("smoke", notebooks=stems, stream=log, **kwargs)
    assert first.ok and not any(first.reports[s]["cached"] for s in stems), first.lines()
    assert list(first.reports) == stems  # in the order asked, whichever kernel finished first
    assert sorted(re.findall(r"\[\d/2\] (\w+) ok in \d+ s", log.getvalue())) == sorted(stems), log.getvalue()
    second = study.run_study("smoke", notebooks=stems, train=False, stream=io.StringIO(), **kwargs)
    assert second.ok and all(second.reports[s]["cached"] for s in stems) and second.runs_trained == 0
    index = Path(second.index).read_text()
    assert all(f'href="{s}/smoke.html"' in index for s in stems)


def test_study_set_reaches_the_runs_the_calibration_and_the_notebook(tmp_path, kernel, shared):
    """``mllm-study study --set run.seed=7``: every run it trains (calibration included) has seed 7, and the
    notebook reads those runs (its design table says seed 7) rather than the profile's own."""
    from mllm_study.runs import read_json

    stem, runs = "rq4_data_size", tmp_path / "runs"
    summary = study.run_study("smoke", notebooks=[stem], cache=shared["cache"], runs=str(runs),
                              reports=str(tmp_path / "reports"), progress=False, stream=io.StringIO(),
                              overrides=["run.seed=7"])
    assert summary.ok, summary.lines()
    seeds = {read_json(d / "spec.json")["run"]["seed"] for d in runs.iterdir() if (d / "spec.json").exists()}
    assert seeds == {7} and summary.runs_trained == 5 and summary.calibration  # 3 sizes, 2 equal-steps
    html = tmp_path / "reports" / stem / "smoke.html"
    meta = json.loads(html.with_suffix(".json").read_text())
    assert meta["parameters"]["overrides"] == ["run.seed=7"]
    executed = nbformat.read(str(html.with_suffix(".ipynb")), as_version=4)
    design = next(o for c in executed.cells for o in c.get("outputs", []) if "factor" in str(o.get("data", "")))
    assert re.search(r"<td[^>]*>seed</td>\s*<td[^>]*>1</td>\s*<td[^>]*>7</td>", design["data"]["text/html"])
    assert "overrides=[&#x27;run.seed=7&#x27;]" in (tmp_path / "reports" / "index.html").read_text()
    with pytest.raises(ValueError, match="section.key=value"):
        study.run_study("smoke", notebooks=[stem], runs=str(runs), overrides=["seed7"], progress=False,
                        stream=io.StringIO())


def test_a_notebook_names_a_parameter_it_does_not_know_and_missing_runs(tmp_path, kernel, shared):
    nb = ROOT / "notebooks" / "rq4_data_size.ipynb"
    bad = {"profile": "smoke", "params_file": "params/rq4_data_size.yaml", "cache": shared["cache"],
           "runs": shared["runs"], "trian": True}
    result = report.execute_notebook(nb, bad, tmp_path / "a" / "smoke.html", cwd=ROOT / "notebooks",
                                     kernel_name=kernel)
    assert result.status == "failed" and "unknown notebook parameter(s) 'trian' (did you mean 'train'?)" in result.error
    empty = {"profile": "smoke", "params_file": "params/rq4_data_size.yaml", "cache": shared["cache"],
             "runs": str(tmp_path / "no-runs"), "train": False}
    result = report.execute_notebook(nb, empty, tmp_path / "b" / "smoke.html", cwd=ROOT / "notebooks",
                                     kernel_name=kernel)
    assert result.status == "failed" and "runs of params/rq4_data_size.yaml (smoke) are missing" in result.error
    assert "mllm-study sweep params/rq4_data_size.yaml --profile smoke" in result.error
    trained = [d for d in (tmp_path / "no-runs").glob("*") if not d.name.startswith(".")]  # .plans: the plan cache
    assert not trained


def test_a_failing_notebook_is_reported_not_raised(tmp_path, kernel):
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                             new_code_cell("raise ValueError(f'boom {x}')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, str(path))
    result = report.execute_notebook(path, {"x": 2}, tmp_path / "bad" / "smoke.html", cwd=ROOT, kernel_name=kernel)
    assert result.status == "failed" and "boom 2" in result.error
    assert (tmp_path / "bad" / "smoke.html").exists()  # the HTML shows the error to the reader
    assert json.loads((tmp_path / "bad" / "smoke.json").read_text())["status"] == "failed"


GOLDEN_RESULTS = ROOT / "tests" / "golden" / "smoke_results.json"


def _results_digest(shared: dict) -> dict[str, float]:
    """The smoke study's results table (the runs every RQ plans) keyed by every factor (not run ids, which hash
    the code version)."""
    from mllm_study.results import collect_results

    ids = sorted({rid for path in sorted((ROOT / "params").glob("rq*.yaml")) for rid in
                  study.ensure_runs(path, "smoke", shared["cache"], shared["runs"], train=False)[0].attrs["run_ids"]})
    table, _ = collect_results(shared["runs"], ids)
    keys = ["method", "method_params", "placement", "connector", "train_dataset", "train_size", "seed", "lr",
            "epochs", "dataset", "split", "epoch", "metric"]
    return {" | ".join(str(r[k]) for k in keys): round(float(r["value"]), 9) for _, r in table.iterrows()}


def test_smoke_study_results_match_the_golden_table(shared):
    """Golden regression of the whole smoke study: every run x dataset x metric value of its results table.

    Training and evaluation on CPU are deterministic, so a code change that moves any score shows here. A change
    meant to move them regenerates the fixture with
    ``MLLM_STUDY_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_notebooks.py -k golden`` and says so in its
    commit message. Tolerance: absolute 1e-6 (scores are item means; float noise between CPUs is far below that).
    """
    got = _results_digest(shared)
    if os.environ.get("MLLM_STUDY_UPDATE_GOLDEN"):
        GOLDEN_RESULTS.parent.mkdir(exist_ok=True)
        GOLDEN_RESULTS.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"golden fixture rewritten: {GOLDEN_RESULTS}")
    golden = json.loads(GOLDEN_RESULTS.read_text())
    assert sorted(got) == sorted(golden), (f"rows differ: {sorted(set(got) ^ set(golden))[:5]}")
    moved = {k: (got[k], v) for k, v in golden.items() if abs(got[k] - v) > 1e-6}
    assert not moved, f"{len(moved)} scores moved, e.g. {list(moved.items())[:3]} (see this test's docstring)"
