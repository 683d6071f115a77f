# `make run`: the pipeline on the embedded default. `make test`: lint + tests. Each installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Two pytest-xdist workers, one per core: the long end-to-end modules run side by side once the smoke run
# they share is done, and the short ones fill in around them (see README, `make test`).
TEST_WORKERS ?= 2

.PHONY: run test lint install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	test -d .dvc || $(BIN)/dvc init -q $$(git rev-parse --git-dir >/dev/null 2>&1 || echo --no-scm)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m tailsynth.warm $(BIN)/dvc repro
	cat metrics/summary.md

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/generation.py

clean:
	rm -rf data/prepared data/synthetic models
