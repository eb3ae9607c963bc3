# deepclust: every target sets itself up (virtual environment, package, data) and is idempotent.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo demo-kmeans test lint typecheck importlint format clean help

setup: $(STAMP) ## create .venv and install the package with its test extras (pinned by constraints.txt)

# torch's CUDA build (which also runs on CPU) takes most of the 6 GiB: say so before pip runs out of disk.
SETUP_NEEDS_KIB ?= 6291456
# pip always gets the constraints: a bare torch>=2.11 could otherwise pull a newer (multi-GiB) CUDA build.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	@if ! $(PY) -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then \
		free_kib=$$(df -Pk $(VENV) | awk 'NR == 2 {print $$4}'); \
		if [ "$$free_kib" -lt $(SETUP_NEEDS_KIB) ]; then \
			echo "error: the set-up needs about $$(($(SETUP_NEEDS_KIB) / 1048576)) GiB of free disk for $(VENV) (torch and its CUDA libraries); $$((free_kib / 1024)) MiB are free there" >&2; \
			exit 2; \
		fi; \
	fi
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,faiss]'
	@touch $(STAMP)

# Debian's dataset-fashion-mnist package, installed only when missing and apt-get is usable (root).
data: ## install Fashion-MNIST (Debian's dataset-fashion-mnist) when it is missing
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] || [ -n "$$DEEPCLUST_DATA" ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null)) \
		|| echo "warning: could not install dataset-fashion-mnist; see 'deepclust datasets'"; \
	else echo "note: Fashion-MNIST not found and apt-get unusable; see 'deepclust datasets'"; fi

# The main job: Contrastive Clustering on all 70,000 Fashion-MNIST images, 10 minutes of CPU training.
# A second `make demo` resumes the same run (a finished run just re-evaluates): no work is lost.
DEMO_RUN := runs/demo-cc
demo: setup data ## train Contrastive Clustering on Fashion-MNIST for 10 CPU minutes (a second run resumes)
	@if [ -f $(DEMO_RUN)/checkpoints/last.pt ]; then \
		$(VENV)/bin/deepclust train --resume $(DEMO_RUN); \
	else \
		$(VENV)/bin/deepclust train --method cc --dataset fashion-mnist --time-budget 10 --out $(DEMO_RUN); \
	fi

# The k-means baseline on raw pixels (about a minute); a second run prints the first one's metrics again.
KMEANS_RUN := runs/demo-kmeans
demo-kmeans: setup data ## the k-means baseline on raw Fashion-MNIST pixels (about a minute)
	@if [ -f $(KMEANS_RUN)/metrics.json ]; then \
		$(VENV)/bin/deepclust evaluate $(KMEANS_RUN); \
	else \
		$(VENV)/bin/deepclust train --method kmeans --dataset fashion-mnist --out $(KMEANS_RUN); \
	fi

lint: setup ## ruff check and ruff format --check
	$(VENV)/bin/ruff check deepclust tests benchmarks
	$(VENV)/bin/ruff format --check deepclust tests benchmarks

format: setup ## ruff check --fix and ruff format
	$(VENV)/bin/ruff check --fix deepclust tests benchmarks
	$(VENV)/bin/ruff format deepclust tests benchmarks

typecheck: setup ## mypy on the package (settings in pyproject.toml [tool.mypy])
	$(VENV)/bin/mypy

importlint: setup ## import-linter's layering contracts (pyproject.toml [tool.importlinter])
	$(VENV)/bin/lint-imports

test: setup data lint typecheck importlint ## lint, type-check, check the import contracts, then pytest
	$(PY) -m pytest -q

# runs/ holds users' results: never deleted here
clean: ## remove the virtual environment and the tools' caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .import_linter_cache

help: ## list the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-12s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
