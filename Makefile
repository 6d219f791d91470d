# make demo  - create .venv, install everything, run the walk-through
# make test  - the whole suite (SQLite, PostgreSQL at 127.0.0.1:5432, the real server)
# make check - lint and types; make bench - the benchmarks in bench/

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ratingloop demo

test: $(STAMP)
	$(PY) -m pytest

check: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src

bench: $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/signals.py
	$(PY) bench/pandalm.py
	$(PY) bench/content.py
	$(PY) bench/reward.py
	$(PY) bench/train.py
	$(PY) bench/loop.py --seeds 3 --naive-max-steps 16

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
