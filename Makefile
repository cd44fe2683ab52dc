# nanoloom: `make help` lists the targets. Everything installs into the project venv (.venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DEMO_RUN ?= demo

.DEFAULT_GOAL := help
.PHONY: help install dev torch demo test test-fast test-all lint format train-debug sample serve prepare clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

# Without an NVIDIA GPU, take torch's CPU build (a few hundred MB, not several GB of CUDA libraries): the
# local-version wheel `+cpu` if a configured index or wheel folder has it, else the official CPU index.
# With a GPU (nvidia-smi present), pip installs the normal CUDA build through pyproject's dependency.
$(VENV)/.torch: | $(PY)
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "torch $$($(PY) -c 'import torch; print(torch.__version__)') already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		$(PIP) install "torch>=2.5"; \
	else \
		$(PIP) install "torch==$(TORCH_VERSION)+cpu" 2>/dev/null || \
		$(PIP) install --index-url $(TORCH_CPU_INDEX) "torch==$(TORCH_VERSION)"; \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.torch
	$(PIP) install -e ".[dev]"
	@touch $@ $(VENV)/.installed

torch: $(VENV)/.torch ## install torch (the CPU build on machines without an NVIDIA GPU)
install: $(VENV)/.installed ## install nanoloom and its runtime dependencies into .venv
dev: $(VENV)/.installed-dev ## install with the test and lint dependencies

demo: install ## train the CPU demo GPT (under 10 min), then complete a story and a Python function
	$(PY) -m data.prepare data=demo
	$(PY) -m train experiment=demo run_name=$(DEMO_RUN) resume=auto
	$(PY) -m sample checkpoint=runs/$(DEMO_RUN) task=story prompt="Once upon a time," seed=1
	$(PY) -m sample checkpoint=runs/$(DEMO_RUN) task=code seed=1 \
		prompt=$$'def fibonacci(n):\n    """Return the n-th Fibonacci number (0, 1, 1, 2, 3, 5, ...)."""\n'

# Tests run on every core (pytest-xdist, one torch thread per worker). Markers: e2e = end-to-end runs of 1-3 s,
# slow = the longest ones (3 s or more: trainings to a target, multi-process runs, installs).
test: dev ## the suite without the slowest end-to-end runs (about 1.5 min on 2 cores)
	$(PY) -m pytest -n auto -m "not slow"

test-fast: dev ## unit tests only: no end-to-end runs (under a minute)
	$(PY) -m pytest -n auto -m "not slow and not e2e"

test-all: dev ## everything, the slowest runs included: what CI runs (about 7 min on 2 cores)
	$(PY) -m pytest -n auto

lint: dev ## ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: dev ## apply ruff fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

train-debug: install ## a tiny training run to check a change end to end (seconds)
	$(PY) -m train debug=default

serve: install ## serve the demo checkpoint: OpenAI's API and a playground on http://127.0.0.1:8000/
	$(PY) -m sample.serve checkpoint=runs/$(DEMO_RUN)

prepare: install ## tokenize a corpus: make prepare DATA=shakespeare
	$(PY) -m data.prepare data=$(or $(DATA),demo)

clean: ## remove caches and build leftovers (keeps runs/ and .venv)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
