# `make demo`: MiniLM quantized four ways, packaged for the CPU, measured (.pt2 files in demo-out/).
# `make test`: create .venv if missing, install qcompiler with its dev extra
# under constraints.txt (torch pinned to the CPU build), lint (ruff), type-check passes/ and lowering/ (mypy), run the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.qcompiler-installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qcompiler demo -o demo-out

test: $(STAMP)
	$(PY) -m ruff check qcompiler tests benchmarks examples
	$(PY) -m mypy
	$(PY) -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info demo-out
