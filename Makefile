# The one task runner. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
# Precompiled imports: torch & co. start in seconds, not tens of seconds.
export UV_COMPILE_BYTECODE := 1

.PHONY: help setup browsers demo historical test test-fast lint lint-infra compile-pipeline run-local clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

# uv where $(UV) says, from pip --user or else from its own venv: a distribution's Python refuses pip --user
# (PEP 668), and so does an activated venv, whose plain pip install put uv where make did not look.
UV_VENV := $(HOME)/.local/share/chromify/uv-venv
$(UV):
	@mkdir -p $(dir $(UV))
	@($(PYTHON) -m pip install --user --quiet uv 2>/dev/null && [ -x $(UV) ]) || \
	  (echo "installing uv into its own venv, $(UV_VENV)" && $(PYTHON) -m venv $(UV_VENV) && \
	   $(UV_VENV)/bin/pip install --quiet uv && ln -sf $(UV_VENV)/bin/uv $(UV) && \
	   ln -sf $(UV_VENV)/bin/uvx $(dir $(UV))uvx) || \
	  (echo "make: could not install uv with $(PYTHON) (pip --user and its venv module both failed): install uv" \
	        "(https://docs.astral.sh/uv/, or apt-get install python3-venv) and run make again" >&2; exit 1)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	@touch $@

setup: $(VENV)/.synced ## Create the environment from uv.lock (bootstraps uv if missing)

demo: setup ## Run the whole pipeline with `dvc repro` on the bundled sample photos
	@git rev-parse --verify -q HEAD >/dev/null 2>&1 || (git init -q && git add -A && \
	  git -c user.name=chromify -c user.email=chromify@localhost commit -qm 'chromify: initial commit')
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@echo
	@echo "metrics:          reports/metrics.json  (table: reports/metrics.md)"
	@echo "gate decision:    reports/gate.json"
	@echo "gallery:          reports/gallery.html"
	@echo "training curves:  reports/train_curves.png"
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -c "import json; r = json.load(open('reports/register.json')); \
	  print('registered model:', r['path'] if r['registered'] else 'none this run (' + r['message'] + ')' \
	        if r.get('already_registered') else 'none this run (gate: ' + '; '.join(r['reasons']) + ')')"
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/chromify models list
	@$(MAKE) --no-print-directory historical

HISTORICAL ?= ../shared/data/historical
historical: setup ## Colorize the historical photos (when present) with the champion into reports/historical.html
	@if [ ! -d "$(HISTORICAL)" ]; then echo "no $(HISTORICAL): skipped reports/historical.html"; \
	elif ! $(BIN)/chromify models show champion >/dev/null 2>&1; then \
	  echo "no champion registered yet: skipped reports/historical.html"; \
	else rm -rf reports/historical && \
	  $(BIN)/chromify colorize "$(HISTORICAL)" -o reports/historical --html reports/historical.html && \
	  echo "historical photos: reports/historical.html"; fi

browsers: ## Install Debian's chromium + chromium-driver for the web page test (skipped where that is impossible)
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "could not install chromium: the browser test will be skipped"; \
	else echo "no chromium and no root apt-get: the browser test will be skipped"; fi

test: setup browsers ## Run the test suite
	PATH="$(CURDIR)/$(BIN):$(dir $(UV)):$$PATH" $(BIN)/python -m pytest -q --durations=15

test-fast: setup ## The suite without the end-to-end runs
	PATH="$(CURDIR)/$(BIN):$(dir $(UV)):$$PATH" $(BIN)/python -m pytest -q -m "not slow"

lint: setup ## ruff over the code
	$(BIN)/ruff check src components pipelines tests benchmarks

lint-infra: setup ## checkov over infra/ (fetches checkov into its own environment)
	PATH="$(dir $(UV)):$$PATH" CHROMIFY_CHECKOV=1 $(BIN)/python -m pytest -q tests/test_infra.py

compile-pipeline: setup ## Write pipeline.yaml (the KFP v2 IR)
	$(BIN)/chromify pipeline compile -o pipeline.yaml

run-local: setup ## Run the KFP DAG locally with kfp.local
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/chromify pipeline run-local

.PHONY: docs
# required: Mermaid is fetched once with npm (cached in docs/.cache/); optional builds without npm, the diagrams
# then shown as their source. `make docs CHROMIFY_DOCS_VENDOR=optional` (or the variable in the environment).
CHROMIFY_DOCS_VENDOR ?= required
docs: setup ## Build the documentation site into site/ (strict, offline-viewable: open site/index.html)
	CHROMIFY_DOCS_VENDOR=$(CHROMIFY_DOCS_VENDOR) NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -f docs/mkdocs.yml

clean: ## Remove generated data, models (every registered version too), reports and dvc.lock; keeps the environment
	rm -rf data models reports local_outputs pipeline.yaml dvc.lock
