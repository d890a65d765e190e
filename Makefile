# Two commands for users: `make run` (main job) and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/vita_synthetic.py
WORKDIR ?= runs/vita_synthetic
MODE ?= data
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test lint bench clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.runtime-installed: requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.runtime-installed $@

run: $(VENV)/.runtime-installed
	$(PY) -m vis_jax.main --config $(CONFIG) --workdir $(WORKDIR) --mode $(MODE) $(ARGS)

test: $(VENV)/.dev-installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.dev-installed
	$(PY) -m benchmarks.input_pipeline

clean-venv:
	rm -rf $(VENV)
