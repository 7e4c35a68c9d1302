# ecstream — two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
export KERAS_BACKEND := torch

.PHONY: demo test bench lint mmseqs clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# MMseqs2 comes from Debian's apt when missing (needs root or sudo).
mmseqs:
	@command -v mmseqs >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq mmseqs2; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq mmseqs2; \
	  else echo "MMseqs2 is missing: install it (apt-get install mmseqs2, conda install -c bioconda mmseqs2)"; fi; }

demo: $(VENV)/.installed mmseqs
	$(VENV)/bin/ecstream demo

test: $(VENV)/.installed mmseqs
	$(PY) -m pytest -q

bench: $(VENV)/.installed mmseqs
	$(PY) benchmarks/run.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) demo-output bench-output .pytest_cache .hypothesis
