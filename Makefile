# Set-up and entry points. `make demo` and `make test` work on a fresh machine with only
# Python 3.11 and access to the package index.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXPRLOCK_HOME ?= $(CURDIR)/.exprlock
export EXPRLOCK_HOME

.PHONY: install demo test

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	$(VENV)/bin/exprlock assets fetch
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/exprlock generate --config configs/demo.yaml --out runs/demo

test: install
	$(PY) -m pytest
