# newsbt: `make run` and `make test` install into .venv when needed, then run.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned, so pip never pulls a multi-GB CUDA build by accident. GPU users: e.g.
#   make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# --no-compile: pip would byte-compile all ~19,800 installed .py files, one after another (about a third of the
# install's CPU time); the import check below compiles only the modules newsbt loads (5,269), and writes their
# .pyc even where PYTHONDONTWRITEBYTECODE is set, so later runs start as fast as after a compiling install.
PIP := $(PY) -m pip install --quiet --disable-pip-version-check --no-compile
# What a run and the tests load (a module left out only compiles when first imported).
WARM_IMPORTS := torch, transformers, gensim, backtrader, quantstats, hydra, duckdb, ray, engine, engine.run, \
	engine.grid, signals.transformer, signals.finetune, signals.topics, signals.regimes, \
	signals.events, signals.lexicon, reports.tearsheet, reports.index, reports.sweep, gensim.models.ldamodel, \
	sklearn.cluster, transformers.models.bert.modeling_bert, peft, pytest, selenium.webdriver
ARGS ?=

# The 40-run grid of the README: 4 thresholds x 5 ridge penalties x 2 training lengths, regression on djia.
SWEEP ?= strategy=regression strategy.threshold=0,0.0005,0.001,0.002 strategy.alpha=1,10,100,1000,10000 walk_forward.train_sessions=252,504

.PHONY: install run test sweep bench clean-cache

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH_SPEC)
	$(PIP) -e ".[test]"
	PYTHONDONTWRITEBYTECODE= $(PY) -c "import $(WARM_IMPORTS)"
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m engine.run strategy=cluster $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

sweep: install
	$(PY) -m engine.run -m $(SWEEP) $(ARGS)

bench: install
	$(PY) bench/backtest.py
	$(PY) bench/grid.py
	$(PY) bench/sentiment.py
	$(PY) -m bench.extraction
	$(PY) bench/scale.py

clean-cache:
	rm -rf data/cache
