# compodistill: one command per job. Every target sets up .venv/ itself (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# torch is pinned and installed first, so that nothing pulls another build of it.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
SYNC_TMP := .sync-check

.PHONY: install reproduce test check-sync nbtest docs docs-check readme pytest clean

$(STAMP): settings.ini setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

## The main job: the mechanism test on the grid world (configs/small/pipeline.yaml, 5 seeds), ending with the verdict.
reproduce: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/compodistill reproduce --scale small --seeds 0 1 2 3 4

## Everything CI checks, in order; ends with pytest's summary line.
test: install check-sync nbtest docs pytest

## Notebooks are clean and the package is exactly what they export (README.md included).
check-sync: install
	rm -rf $(SYNC_TMP) && mkdir -p $(SYNC_TMP) && cp -r nbs compodistill $(SYNC_TMP)/
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export
	@for d in nbs compodistill; do \
	  if ! diff -r -q -x __pycache__ -x .ipynb_checkpoints -x sidebar.yml $(SYNC_TMP)/$$d $$d; then \
	    echo "check-sync: nbdev_clean/nbdev_export changed $$d/ -- run them and commit notebooks and package together"; \
	    rm -rf $(SYNC_TMP); exit 1; fi; done
	rm -rf $(SYNC_TMP)
	@echo "check-sync: notebooks clean, package in sync"

## The notebooks' own tests (cells flagged slow/gpu are skipped), two notebooks at a time with one torch thread each.
nbtest: install
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/nbdev_test --n_workers 2 --timing

## The documentation site, into docs/: nbdev_docs where Quarto exists, else nbdev's processing + smalldocs, with maths
## rendered by KaTeX and its assets bundled (node and npm needed; npm packages cached in .docs-cache/).
docs: install
	if command -v quarto >/dev/null; then $(BIN)/nbdev_docs; \
	else HF_HUB_OFFLINE=1 $(BIN)/python tools/docs.py build; fi

## The built site in headless Chromium (apt-get install chromium): every page, its console, requests, maths and images.
docs-check: install
	$(BIN)/python tools/docs.py check

## README.md is nbs/index.ipynb rendered to Markdown (`make docs` fails if it is stale); this rewrites it.
readme: install
	HF_HUB_OFFLINE=1 $(BIN)/python tools/docs.py readme

pytest: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 COMPODISTILL_DOCS=docs $(BIN)/python -m pytest tests -q -p no:cacheprovider

clean:
	rm -rf _proc docs runs $(SYNC_TMP)
