# mllm-study: set-up and the two commands of the README.
#   make study   install everything, then run the main job (quick profile)
#   make test    install what the tests need, then run the test suite (what CI runs, through .ci/run)
#   make test-fast  the suite without the tests marked slow (the inner loop; see CONTRIBUTING.md)
#   make style   ruff over the package, the tests and the benchmarks (the suite checks it too: tests/test_style.py)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install study test test-fast style clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch is pinned first in requirements.txt (CPU wheel here); the package itself installs editable, without
# re-resolving dependencies, so nothing pulls another torch build. pip installs without byte-compiling (64 of its
# 103 s here, on one core); compileall then does it on every core. Its exit status is ignored: like pip, it meets a
# few files written for newer Pythons (torch/testing/_internal/py312_intrinsics.py) that it cannot compile.
$(STAMP): requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --no-compile -r requirements.txt
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1 || true
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip install --quiet "pytest>=8" pytest-timeout ruff==0.17.6
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mllm-study)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

study: install
	$(BIN)/mllm-study study --profile quick

test: install
	$(BIN)/python -m pytest -q --timeout 900

test-fast: install
	$(BIN)/python -m pytest -q --timeout 900 -m "not slow"

style: install
	$(BIN)/ruff check mllm_study tests benchmarks

clean:
	rm -rf .cache runs reports/*/ .pytest_cache
