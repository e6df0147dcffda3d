# One virtual environment for the whole monorepo; every target installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: example test install-core install-all docs bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

install-core: $(VENV)/bin/python
	$(PIP) -e ./blockbuster-core

install-all: $(VENV)/bin/python
	$(PIP) -r requirements-test.txt
	$(PIP) -e "./blockbuster-core[distributed,formats]" -e ./blockbuster-torch -e "./blockbuster-stardist[cpu]" \
		-e ./blockbuster-cellpose

## example: segment a synthetic 4096x4096 nuclei image with the built-in watershed
example: install-core
	$(PY) examples/make_example_image.py examples/data/nuclei.zarr
	$(VENV)/bin/blockbuster run examples/nuclei.toml --progress

## test: install every package and run the whole suite, then build the docs strictly
test: install-all
	$(PY) -m pytest
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site

docs: install-all
	$(VENV)/bin/mkdocs serve

bench: install-all
	$(PY) bench/bench_core.py

clean:
	rm -rf $(VENV) build site examples/data
