# newsbt: `make run` and `make test` install into .venv when needed, then run.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned, so pip never pulls a multi-GB CUDA build by accident. GPU users: e.g.
#   make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
ARGS ?=

.PHONY: install run test bench clean-cache

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH_SPEC)
	$(PIP) -e ".[test]"
	$(PY) -c "import torch, transformers, gensim, backtrader, quantstats, hydra, duckdb, ray, engine"
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m engine.run strategy=sentiment $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

bench: install
	$(PY) bench/sentiment.py

clean-cache:
	rm -rf data/cache
