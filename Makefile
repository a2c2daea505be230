# Two commands on a fresh machine: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'  # pip compiles to .pyc: with PYTHONDONTWRITEBYTECODE set (as on CI) nothing else would, and every Ray worker would compile torch and ray again at import
	touch $(STAMP)

demo: $(STAMP)
	$(PY) run_search.py --space demo
	$(PY) ensemble.py --top-k 4
	$(VENV)/bin/dfsearch report  # the latest run: RUN_DIR/report.html, one self-contained page

test: $(STAMP)   # the full suite, what CI runs: two processes, the Ray-heavy groups apart (tests/conftest.py)
	bash tests/browser/install-chromium.sh   # Debian's chromium + chromedriver for tests/test_serve.py (no-op when present)
	$(VENV)/bin/pytest -q -p no:cacheprovider -n 2 --dist loadgroup --no-loadscope-reorder --durations=12

test-fast: $(STAMP)   # the fast tier, for iteration: no test that starts Ray or a search
	$(VENV)/bin/pytest -q -p no:cacheprovider -n 2 -m "not slow"

bench: $(STAMP)   # bench/search_efficiency.py (~30 min) and bench/model_accuracy.py run on their own
	$(PY) bench/bench_train.py
	$(PY) bench/bench_ensemble.py
	$(PY) bench/trial_overhead.py

clean:
	rm -rf runs
