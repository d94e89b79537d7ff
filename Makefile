# promptbias — the two commands of the Quick start, plus helpers.
#   make demo   set up .venv if missing, then run the whole offline demo DAG through Snakemake
#   make test   set up .venv if missing, then run the test suite
#   make mutants  check that the tests catch a curated list of planted bugs (not part of make test)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.promptbias-installed
CORES ?= all

.PHONY: setup test demo lint fmt bench mutants clean-demo

setup: $(STAMP)

# Re-install when the project's metadata changes. uv when available, else pip.
$(STAMP): pyproject.toml
	@if [ ! -x "$(PY)" ]; then \
	  if command -v uv >/dev/null 2>&1; then uv venv --python 3.11 $(VENV); else python3 -m venv $(VENV); fi; \
	fi
	@if command -v uv >/dev/null 2>&1; then \
	  VIRTUAL_ENV=$(abspath $(VENV)) uv pip install -e '.[dev]'; \
	else \
	  $(PY) -m pip install --quiet --upgrade pip && $(PY) -m pip install --quiet -e '.[dev]'; \
	fi
	@touch $@

test: $(STAMP)
	$(PY) -m pytest -m "not gpu" tests

# The target comes first: --configfile and --resources take several values and would swallow it.
demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/snakemake report_html --cores $(CORES) --configfile config/demo.yaml --resources gpu=0

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

fmt: $(STAMP)
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

# Plant curated one-line bugs one at a time and check the tests catch each (tests/mutants.py; ~10 min).
mutants: $(STAMP)
	$(PY) tests/mutants.py

bench: $(STAMP)
	$(PY) bench/run_all.py
