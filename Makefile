# greyanom: the two set-up commands are `make demo` and `make test`.
# Each creates or reuses .venv, installs what it needs (torch pinned to the local CPU
# wheel through constraints.txt, so no CUDA packages are downloaded) and runs.

PYTHON_BOOT ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.greyanom-installed
EXTRAS      := all,test,docs,bench,mlflow
DEMO_OUT    ?= greyanom-demo
PYTEST_ARGS ?=

.PHONY: help install demo test docs bench clean

help:
	@echo "make demo   - run the main job on built-in data (writes $(DEMO_OUT)/)"
	@echo "make test   - run the test suite"
	@echo "make docs   - build the Sphinx site (warnings are errors)"
	@echo "make bench  - print the benchmark tables (slow)"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/greyanom demo --output $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

docs: $(STAMP)
	$(MAKE) -C docs html PYTHON=$(abspath $(PY))

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf docs/_build docs/auto_examples docs/generated $(DEMO_OUT) .pytest_cache
