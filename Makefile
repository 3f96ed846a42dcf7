# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs what is missing.
ROOT ?= ./.demo
WORLD ?= ./.demo-world
SIZE ?= mini
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test perf clean

$(STAMP): pyproject.toml constraints-cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo --root $(ROOT) --world $(WORLD) --size $(SIZE)

test: $(STAMP)
	$(PY) -m pytest -q

perf: $(STAMP)
	$(PY) tests/perf/ingest_memory.py
	$(PY) tests/perf/embed.py
	$(PY) tests/perf/dpp.py

clean:
	rm -rf .demo .demo-world .pytest_cache
