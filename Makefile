# One venv in .venv; torch's CPU wheel goes in first so pip never pulls the CUDA build.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lock test test-unit test-integration lint demo bench clean

# constraints.txt pins the whole tested set, so a fresh machine months from now installs what CI tested.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[ros,dev]"
	touch $(STAMP)

install: $(STAMP)

# Re-pin constraints.txt from the current venv (after adding or upgrading a dependency).
lock: install
	$(PY) -m pip freeze --exclude-editable | sed 's/+cpu$$//' | grep -v '^-e ' > constraints.txt.new
	{ head -2 constraints.txt; cat constraints.txt.new; } > constraints.tmp && mv constraints.tmp constraints.txt && rm constraints.txt.new

lint: install
	$(VENV)/bin/ruff check .

test-unit: install
	$(PY) -m pytest -m "not integration" tests

test-integration: install
	$(PY) -m pytest -m integration tests

# The README's test command: lint, then fast unit tests, then integration tests.
test: lint test-unit test-integration

# The README's main job on the embedded default (sim robot, local store).
demo: install
	$(VENV)/bin/rlstack demo

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
