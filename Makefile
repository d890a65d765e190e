# Two commands for users: `make run` (main job) and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RECIPE ?= vita_synthetic
CONFIG ?= configs/vita_synthetic.py
WORKDIR ?= runs/$(RECIPE)
MODE ?= train_and_eval
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run train data test lint bench clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.runtime-installed: requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.runtime-installed $@

# The synthetic recipe: detector stage, then VITA (RECIPE=m2f_vis_synthetic: Mask2Former-VIS).
run: $(VENV)/.runtime-installed
	$(PY) -m vis_jax.recipe --recipe $(RECIPE) --workdir $(WORKDIR) $(ARGS)

# One vis_jax.main run of any config: make train CONFIG=configs/x.py WORKDIR=runs/x MODE=train
train: $(VENV)/.runtime-installed
	$(PY) -m vis_jax.main --config $(CONFIG) --workdir $(WORKDIR) --mode $(MODE) $(ARGS)

# The input pipeline end to end: data_report.json and a contact sheet in WORKDIR.
data: $(VENV)/.runtime-installed
	$(PY) -m vis_jax.main --config $(CONFIG) --workdir $(WORKDIR) --mode data $(ARGS)

test: $(VENV)/.dev-installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.dev-installed
	$(PY) -m benchmarks.input_pipeline

clean-venv:
	rm -rf $(VENV)
