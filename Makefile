# One-command setup: `make test` and `make experiment` create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
STAMP  := $(VENV)/.installed
PROFILE ?= quick
NAME   ?= $(PROFILE)

.PHONY: setup test test-slow experiment bench gpu-check lint clean

setup: $(STAMP)

# torch==2.13.0 first (the CPU wheel on disk); constraints.txt keeps it when the project installs.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[lab,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

experiment: $(STAMP)
	$(VENV)/bin/ntl experiment --profile $(PROFILE) --name $(NAME)

bench: $(STAMP)
	$(VENV)/bin/ntl bench

# The prepared GPU check (docs/benchmarks.md): no venv and no network, the machine's own python
# with torch, transformers and triton (liger-kernel, cut-cross-entropy if installed); the table
# goes to $$OUT or runs/gpu_check/. GPU_CHECK_ARGS=--dry-run runs it on CPU in seconds.
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONPATH=src$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) -m ntl.lab.bench.gpu_check $(GPU_CHECK_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) build dist src/*.egg-info
