# One virtual environment for the whole monorepo; every target installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
# Cellpose 4 needs its own environment (another torch, torchvision): see docs/cellpose.md
CP4_VENV := .venv-cp4
CP4_PY   := $(CP4_VENV)/bin/python

.PHONY: example test test-cellpose4 install-core install-all install-cellpose4 docs bench \
	bench-env bench-env-patchworks clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(CP4_PY):
	$(PYTHON) -m venv $(CP4_VENV)

install-core: $(VENV)/bin/python
	$(PIP) -e ./blockbuster-core

## one pip call: the resolver runs once over the test requirements and every package
install-all: $(VENV)/bin/python
	$(PIP) -r requirements-test.txt -e "./blockbuster-core[distributed,formats,remote,geo]" -e ./blockbuster-torch -e "./blockbuster-stardist[cpu]" \
		-e ./blockbuster-cellpose -e "./blockbuster-bioio[ome-tiff,ome-zarr]" \
		-e ./blockbuster-bioimageio -e "./blockbuster-napari[test]"

## example: segment a synthetic 4096x4096 nuclei image with the built-in watershed
example: install-core
	$(PY) examples/make_example_image.py examples/data/nuclei.zarr
	$(VENV)/bin/blockbuster run examples/nuclei.toml --progress

## test: install every package, lint, run the whole suite, build the docs strictly, then run
## the cellpose backend's tests again against Cellpose 4 in its own environment
test: install-all
	$(PY) -m ruff check .
	$(PY) -m pytest
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site
	$(MAKE) test-cellpose4

install-cellpose4: $(CP4_PY)
	$(CP4_PY) -m pip install --quiet --disable-pip-version-check -r requirements-cellpose4.txt \
		-e ./blockbuster-core -e "./blockbuster-cellpose[test]"

## test-cellpose4: the cellpose backend against Cellpose 4 (.venv-cp4, ~6 GB, ~5 min fresh)
test-cellpose4: install-cellpose4
	$(CP4_PY) -m pytest -c pyproject.toml blockbuster-cellpose/tests/test_cellpose4.py \
		blockbuster-cellpose/tests/test_cellpose_unit.py

docs: install-all
	$(VENV)/bin/mkdocs serve

bench: install-all
	$(PY) bench/bench_core.py

## bench-env: the zarr-2 environment of the cellpose-distributed peer of bench/peers.py
bench-env:
	$(PYTHON) -m venv bench/.venv-cellpose-distributed
	bench/.venv-cellpose-distributed/bin/python -m pip install --quiet \
		-r bench/requirements-cellpose-distributed.txt

## bench-env-patchworks: patchworks 3.3.0 (GPL, measured only) and blockbuster-core's segmenters
## for the patchworks peer of bench/peers.py
bench-env-patchworks:
	$(PYTHON) -m venv bench/.venv-patchworks
	bench/.venv-patchworks/bin/python -m pip install --quiet patchworks==3.3.0 -e ./blockbuster-core

clean:
	rm -rf $(VENV) $(CP4_VENV) bench/.venv-cellpose-distributed bench/.venv-patchworks build site \
		examples/data
