# offline_embft — `make help` lists the targets. Stages are file targets: a second `make all` redoes only what is stale.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CLI := $(BIN)/offline-embft
# On a machine without an NVIDIA GPU, install this CPU torch first (a plain `torch` requirement pulls a CUDA build).
TORCH_CPU ?= torch==2.13.0
CONFIG ?= configs/default.yaml
PYTEST_ARGS ?=

.PHONY: help install test check format
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## Create .venv and install the toolkit with test tools (CPU torch first when no GPU is present)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q "$(TORCH_CPU)"; fi
	$(BIN)/pip install -q -e '.[dev]'

test: ## Run the test suite (offline, CPU)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

check: ## Lint with ruff
	$(BIN)/ruff check offline_embft tests scripts
	$(BIN)/ruff format --check offline_embft tests scripts

format: ## Format with ruff
	$(BIN)/ruff check --fix offline_embft tests scripts
	$(BIN)/ruff format offline_embft tests scripts
