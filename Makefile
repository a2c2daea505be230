# Two commands on a fresh machine: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -e '.[dev]'  # --no-compile: Python compiles what it imports, on first use
	touch $(STAMP)

demo: $(STAMP)
	$(PY) run_search.py --space all_models
	$(PY) ensemble.py --top-k 4

test: $(STAMP)   # the full suite, what CI runs: two processes, the Ray-heavy groups apart (tests/conftest.py)
	$(VENV)/bin/pytest -q -p no:cacheprovider -n 2 --dist loadgroup

test-fast: $(STAMP)   # the fast tier, for iteration: no test that starts Ray or a search
	$(VENV)/bin/pytest -q -p no:cacheprovider -n 2 -m "not slow"

bench: $(STAMP)   # bench/search_efficiency.py (~30 min) and bench/model_accuracy.py run on their own
	$(PY) bench/bench_train.py
	$(PY) bench/bench_ensemble.py
	$(PY) bench/trial_overhead.py

clean:
	rm -rf runs
