# lvtl: two commands on a fresh clone — `make demo` and `make test` — set everything up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A CPU build of torch; an unpinned torch pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: install test test-all demo lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/lvtl demo --out demo-run

lint: $(STAMP)
	$(VENV)/bin/ruff check lvtl tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/repair.py
	$(PY) benchmarks/thickness.py
	$(PY) benchmarks/thickness_phantom.py
	$(PY) benchmarks/flare.py

clean:
	rm -rf $(VENV) demo-run .pytest_cache build *.egg-info
